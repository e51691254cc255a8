"""The long-lived objects the routes use, opened once at start-up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from . import migrate
from .config import Settings
from .db import Database
from .signing import UrlSigner, load_or_create_secret
from .storage import LocalStorage, S3Storage, Storage
from .uploads import Uploads


@dataclass
class Services:
    settings: Settings
    db: Database
    storage: Storage
    signer: UrlSigner
    uploads: Uploads

    def close(self) -> None:
        self.db.dispose()


def open_storage(settings: Settings) -> Storage:
    """The storage ``settings.storage_url`` names: the data directory's by default. Blocking."""
    url = settings.storage_url
    if url is None:
        return LocalStorage.open(settings.objects_dir)
    if url.startswith("s3://"):
        return S3Storage.open(url, settings.spool_dir)
    raise ValueError(f"unknown storage URL {url!r}: give s3://BUCKET/PREFIX, or nothing for the data directory")


async def open_services(settings: Settings, *, clock: Callable[[], float] = time.time) -> Services:
    """Migrate the database to the newest schema, load (or create) the signing secret,
    open the storage. Blocking work runs in threads.

    ``clock`` (Unix seconds) is what signed URLs are minted and checked against; tests
    pass a fake one to expire URLs without waiting.
    """
    db = Database(settings.database_url)
    try:
        await anyio.to_thread.run_sync(migrate.upgrade, db.write_engine)
        secret = await db.write(load_or_create_secret)
        storage = await anyio.to_thread.run_sync(open_storage, settings)
    except BaseException:
        db.dispose()
        raise
    return Services(
        settings=settings,
        db=db,
        storage=storage,
        signer=UrlSigner(secret, clock=clock),
        uploads=Uploads(db, storage, settings),
    )
