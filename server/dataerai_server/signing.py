"""Signed URLs: HMAC-SHA256 over what a URL allows, with the server's secret.

The secret is random, created on first start and kept in the database, so every
server process on one database mints and accepts the same URLs. A signature covers
the HTTP method, the path, the expiry and any extra fields given (for a part: its
SHA-256 and size), so none of them can be changed without breaking it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Final

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import ApiError
from .models import ServerSetting

SECRET_KEY: Final = "url_signing_secret"


def load_or_create_secret(session: Session) -> bytes:
    """The URL-signing secret from the database, created (32 random bytes) if missing.

    Safe when several processes start at once: whoever inserts first wins and the
    others read that value.
    """
    row = session.get(ServerSetting, SECRET_KEY)
    if row is None:
        try:
            with session.begin_nested():
                session.add(ServerSetting(key=SECRET_KEY, value=secrets.token_hex(32)))
        except IntegrityError:
            pass
        row = session.get(ServerSetting, SECRET_KEY)
        assert row is not None
    return bytes.fromhex(row.value)


class UrlSigner:
    """Mints and checks ``expires`` + ``signature`` query parameters.

    ``clock`` returns Unix seconds; tests may pass their own.
    """

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise ValueError("the signing secret is too short")
        self._secret = secret
        self._clock = clock

    def _mac(self, method: str, path: str, expires: int, fields: Mapping[str, str]) -> str:
        lines = [method.upper(), path, str(expires), *(f"{k}={fields[k]}" for k in sorted(fields))]
        return hmac.new(self._secret, "\n".join(lines).encode(), hashlib.sha256).hexdigest()

    def sign(self, method: str, path: str, ttl_seconds: int, fields: Mapping[str, str] | None = None) -> dict[str, str]:
        """The query parameters for a URL valid ``ttl_seconds`` from now: ``fields`` plus
        ``expires`` and ``signature``, in that order."""
        fields = dict(fields or {})
        expires = int(self._clock()) + ttl_seconds
        return {**fields, "expires": str(expires), "signature": self._mac(method, path, expires, fields)}

    def verify(self, method: str, path: str, query: Mapping[str, str], field_names: tuple[str, ...] = ()) -> int:
        """Check a signed request; return its expiry (Unix seconds).

        Raises ``permission_denied`` with ``reason`` ``bad_signature`` (missing, malformed
        or altered) or ``url_expired`` (intact but past its expiry).
        """
        expires_text = query.get("expires", "")
        signature = query.get("signature", "")
        fields = {name: query.get(name, "") for name in field_names}
        # ASCII only: `int()` fails on other scripts' digits, `compare_digest` on non-ASCII text.
        if not (expires_text.isascii() and expires_text.isdigit()) or not signature or not signature.isascii():
            raise ApiError(
                "permission_denied", "this URL is not signed; ask the API for a new one", reason="bad_signature"
            )
        expires = int(expires_text)
        expected = self._mac(method, path, expires, fields)
        if not hmac.compare_digest(expected, signature):
            raise ApiError(
                "permission_denied", "the URL's signature does not match; ask for a new one", reason="bad_signature"
            )
        if self._clock() > expires:
            raise ApiError("permission_denied", "this URL has expired; ask the API for a new one", reason="url_expired")
        return expires
