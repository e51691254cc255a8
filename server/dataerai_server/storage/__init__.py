"""Where upload parts and content bytes live, behind one contract (``base.Storage``).

``local.LocalStorage`` keeps them in a directory; an S3 storage will follow behind the
same contract, which is shaped after S3 multipart uploads for that reason.
"""

from .base import ChecksumMismatch as ChecksumMismatch
from .base import PresignedRequest as PresignedRequest
from .base import Storage as Storage
from .base import StorageError as StorageError
from .base import StoredContent as StoredContent
from .base import StoredPart as StoredPart
from .local import LocalStorage as LocalStorage
