"""The SDK's version; kept equal to ``client/pyproject.toml`` (a test checks)."""

__version__ = "0.1.0"
