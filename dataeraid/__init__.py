"""The Dataerai transfer daemon and its command line."""

__version__ = "0.1.0"
