"""Messages fit to show: what the daemon says about a failure, without its secrets.

A job's error and the reason it waits travel to every client and into the event
store, so they must never hold a signature or a token. Signed URLs carry theirs in
the query string (S3's ``X-Amz-Signature``, the repository's own ``sig=``), and a URL
may carry a password in its user part; both are cut here, at one place, with the
bearer tokens a message might quote.
"""

from __future__ import annotations

import re

#: A URL: a scheme, ``://``, then anything up to white space or a quote.
_URL = re.compile(r"""(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s"'<>`]*)""")
_BEARER = re.compile(r"(?i)\b(bearer|token)(\s*[:=]?\s*)[A-Za-z0-9._~+/=-]{8,}")
#: A repository token quoted bare (``dtk_`` and its random part; see the server's auth.py).
_TOKEN = re.compile(r"\bdtk_[A-Za-z0-9_-]+")
#: What stands in for a secret that was cut.
HIDDEN = "…"


def _url(match: re.Match[str]) -> str:
    rest = match.group("rest")
    # Punctuation that ends the sentence around the URL is not part of it.
    stripped = rest.rstrip(".,;:!)]")
    rest, after = stripped, rest[len(stripped):]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if cut >= 0:
        rest = rest[:cut] + "?" + HIDDEN
    authority, slash, path = rest.partition("/")
    if "@" in authority:  # user:password@host
        authority = authority.rsplit("@", 1)[1]
    return match.group("scheme") + authority + slash + path + after


def redact(message: str, *secrets: str | None) -> str:
    """``message`` with each URL's query string, fragment and user part cut, and
    ``secrets`` (the token in use, say), bearer tokens and repository tokens hidden."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, HIDDEN)
    message = _URL.sub(_url, message)
    message = _BEARER.sub(lambda m: m.group(1) + m.group(2) + HIDDEN, message)
    return _TOKEN.sub(HIDDEN, message)


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: where a request went, and nothing secret."""
    match = _URL.match(url)
    if match is None:
        return redact(url)
    authority = match.group("rest").split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return match.group("scheme") + authority.rsplit("@", 1)[-1]
