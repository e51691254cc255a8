"""Pin the SDK at this distribution's own version (hatch's metadata hook; server/ has the same file).

The daemon and the server import the SDK's contract (``dataerai.contract``, ``dataerai.protocol``):
the three are built from one commit and must be installed at one version. The version is
written once, in ``client/dataerai/_version.py``; this hook turns it into ``SDK==VERSION``
so that no pyproject repeats it. Each sdist carries its own copy of this file because an
sdist must build on its own (``tests/packaging/test_versions.py`` keeps the copies equal).
"""

from __future__ import annotations

from typing import Any

from hatchling.metadata.plugin.interface import MetadataHookInterface

SDK = "dataerai-transfer-sdk"


class PinTheSdk(MetadataHookInterface):
    """``dependencies`` = the hook's own ``dependencies`` setting and ``SDK==version``."""

    def update(self, metadata: dict[str, Any]) -> None:
        metadata["dependencies"] = [*self.config["dependencies"], f"{SDK}=={metadata['version']}"]
