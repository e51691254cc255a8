"""The ``dataerai`` command line: a thin layer over the SDK's ``DataeraiClient``.

Every daemon operation goes through ``dataerai.DataeraiClient``; the only thing
the command line does on its own is ``auth login``'s check of a token against
the repository (``GET /api/v1/me``) and the credentials file it writes.
"""

from ._root import cli as cli
from ._root import main as main
