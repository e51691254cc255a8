"""Where upload parts and content bytes live, behind one contract (``base.Storage``).

``local.LocalStorage`` keeps them in a directory; ``s3.S3Storage`` in an S3-compatible
bucket, as multipart uploads with presigned part URLs. The contract is shaped after S3
multipart uploads for that reason.
"""

from .base import ChecksumMismatch as ChecksumMismatch
from .base import PresignedRequest as PresignedRequest
from .base import Storage as Storage
from .base import StorageError as StorageError
from .base import StoredContent as StoredContent
from .base import StoredPart as StoredPart
from .local import LocalStorage as LocalStorage
from .s3 import S3Location as S3Location
from .s3 import S3Storage as S3Storage
