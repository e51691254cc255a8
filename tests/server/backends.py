"""Fixtures for the storage backends and the databases the server runs on, shared by the
server and integration tests: a private SeaweedFS (``tools/seaweed.py``), one per test
process, and a fresh PostgreSQL database per test process where
``DATAERAI_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from seaweed import Seaweed

POSTGRES_ENV = "DATAERAI_TEST_POSTGRES_URL"
POSTGRES_HOW = (
    f"PostgreSQL tests need {POSTGRES_ENV}, e.g. "
    f"{POSTGRES_ENV}=postgresql+psycopg://root@127.0.0.1:5432/test (as .ci/run sets it)"
)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A running SeaweedFS with an S3 gateway and credentials; stopped at the end of the session."""
    store = Seaweed(tmp_path_factory.mktemp("weed"))
    store.start()
    yield store
    store.stop()


@pytest.fixture(scope="session")
def s3_bucket(seaweed: Seaweed) -> str:
    return seaweed.create_bucket(f"dataerai-{secrets.token_hex(4)}")


def postgres_base_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(POSTGRES_HOW)
    return url


@contextlib.contextmanager
def new_postgres_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped on the way out."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(postgres_base_url())
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """``postgres_database``: the URL of a new, empty database, dropped at the end of the session."""
    with new_postgres_database("dataerai_test") as url:
        yield url
