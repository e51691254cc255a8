"""The server's settings: one frozen value, built once by the CLI, no I/O after that."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dataerai import contract

#: ``--default-allocation``: each new project may store this much (1 TiB).
DEFAULT_ALLOCATION_BYTES: Final = 1 << 40

#: How long a signed part or content URL stays valid (``--url-ttl``), the server's own
#: and S3's presigned ones alike. Short enough that a leaked URL is soon useless; clients
#: ask for a fresh one per part, so length of the whole transfer does not matter.
DEFAULT_URL_TTL_SECONDS: Final = 3600
#: ``--url-ttl`` bounds: below a minute a URL may expire before a slow client has sent
#: its headers; S3 presigns (SigV4) for at most 7 days.
MIN_URL_TTL_SECONDS: Final = 60
MAX_URL_TTL_SECONDS: Final = 7 * 86_400

#: An open upload session is kept at least this long after its last accepted part.
DEFAULT_SESSION_TTL_SECONDS: Final = 14 * 24 * 3600

#: Limits of the part size, chosen to match S3 multipart so that an S3 storage
#: can take the same sessions unchanged (S3 also caps a multipart upload at 10,000 parts).
MIN_PART_SIZE: Final = contract.MIN_PART_SIZE
MAX_PART_SIZE: Final = contract.MAX_PART_SIZE
MAX_PART_COUNT: Final = contract.MAX_PARTS

#: Deduplication: a proof-of-possession challenge asks for the SHA-256 of this many
#: random byte ranges of this length (fewer and shorter for small contents) and can be
#: answered for this long.
DEDUP_RANGE_COUNT: Final = 4
DEDUP_RANGE_LENGTH: Final = 64 * 1024
DEDUP_CHALLENGE_TTL_SECONDS: Final = 600
#: A refused proof is answered no sooner than this after it arrived, so that reading the
#: held content's ranges (done only when one is held) does not show in the answer's timing.
DEDUP_REFUSAL_FLOOR_SECONDS: Final = 0.1

#: A JSON request body longer than this is refused with ``frame_too_large``.
MAX_JSON_BODY: Final = 1 << 20
#: The same for the two bodies that carry a multi-file content's manifest (``POST
#: /uploads`` with ``files``, its completion with ``file_sha256``): 100,000 files of
#: long paths must fit.
MAX_MANIFEST_JSON_BODY: Final = 64 << 20
#: A request line and headers longer than this in all are refused with ``frame_too_large``
#: (431) before they end (heads.py); a signed URL and a bearer token take a few hundred bytes.
MAX_REQUEST_HEAD_BYTES: Final = 64 << 10


def sqlite_url(data_dir: Path) -> str:
    """The default database: ``DATA_DIR/repository.sqlite3``."""
    return f"sqlite:///{(data_dir / 'repository.sqlite3').resolve()}"


@dataclass(frozen=True)
class Settings:
    """Everything ``run`` needs; ``database_url`` defaults to :func:`sqlite_url`.

    ``storage_url`` is None for the directory storage under ``data_dir/objects``, or
    ``s3://BUCKET/PREFIX`` (see ``storage/s3.py``).
    """

    data_dir: Path
    database_url: str
    storage_url: str | None = None
    default_allocation_bytes: int = DEFAULT_ALLOCATION_BYTES
    url_ttl_seconds: int = DEFAULT_URL_TTL_SECONDS
    session_ttl_seconds: int = DEFAULT_SESSION_TTL_SECONDS

    @property
    def objects_dir(self) -> Path:
        """Where the local storage keeps parts and contents."""
        return self.data_dir / "objects"

    @property
    def spool_dir(self) -> Path:
        """Where the S3 storage spools part bodies sent through the server."""
        return self.data_dir / "spool"
