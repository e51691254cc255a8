"""The Python SDK for the Dataerai transfer daemon: ``from dataerai import DataeraiClient``.

Blocking, standard library only. The client talks to the local daemon over a
Unix socket (``docs/protocol.md``) and starts it when it is not running. The
public names are re-exported here one per line, and
``tests/client/test_sdk_exports.py`` fails when this list and ``__all__`` drift.
"""

from ._client import DEFAULT_REQUEST_TIMEOUT_S as DEFAULT_REQUEST_TIMEOUT_S
from ._client import DEFAULT_START_TIMEOUT_S as DEFAULT_START_TIMEOUT_S
from ._client import DEFAULT_TRANSFER_TIMEOUT_S as DEFAULT_TRANSFER_TIMEOUT_S
from ._client import ClientState as ClientState
from ._client import DataEraiClient as DataEraiClient
from ._client import DataeraiClient as DataeraiClient
from ._client import EventStream as EventStream
from ._errors import DaemonConnectionError as DaemonConnectionError
from ._errors import DaemonError as DaemonError
from ._errors import DaemonTimeoutError as DaemonTimeoutError
from ._models import TERMINAL_JOB_STATES as TERMINAL_JOB_STATES
from ._models import WAITING_JOB_STATES as WAITING_JOB_STATES
from ._models import AssetMetadata as AssetMetadata
from ._models import AuthStatus as AuthStatus
from ._models import Collection as Collection
from ._models import ContentVersion as ContentVersion
from ._models import DownloadedFile as DownloadedFile
from ._models import DownloadResult as DownloadResult
from ._models import Event as Event
from ._models import FileInfo as FileInfo
from ._models import Job as Job
from ._models import JobError as JobError
from ._models import JobWaiting as JobWaiting
from ._models import ProgressEvent as ProgressEvent
from ._models import Project as Project
from ._models import Relationship as Relationship
from ._models import UploadResult as UploadResult
from ._models import Watch as Watch
from ._models import WatchFile as WatchFile
from ._models import WatchProblem as WatchProblem
from ._paths import default_socket_path as default_socket_path
from ._version import __version__ as __version__

# `dataerai.ConnectionError` is the disconnect error, so `except dataerai.ConnectionError`
# works as the docs show. It is left out of __all__ on purpose: `from dataerai import *`
# must not shadow the builtin ConnectionError (of which it is a subclass).
ConnectionError = DaemonConnectionError

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DEFAULT_START_TIMEOUT_S",
    "DEFAULT_TRANSFER_TIMEOUT_S",
    "TERMINAL_JOB_STATES",
    "WAITING_JOB_STATES",
    "AssetMetadata",
    "AuthStatus",
    "ClientState",
    "Collection",
    "ContentVersion",
    "DaemonConnectionError",
    "DaemonError",
    "DaemonTimeoutError",
    "DataEraiClient",
    "DataeraiClient",
    "DownloadResult",
    "DownloadedFile",
    "Event",
    "EventStream",
    "FileInfo",
    "Job",
    "JobError",
    "JobWaiting",
    "ProgressEvent",
    "Project",
    "Relationship",
    "UploadResult",
    "Watch",
    "WatchFile",
    "WatchProblem",
    "__version__",
    "default_socket_path",
]
