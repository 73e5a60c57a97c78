"""Secrets out of everything the sidecar shows: URLs fit to display, text scrubbed of the
secrets it knows, and errors cut to their first line.

One module, reviewed once: targets, the checks (the database's DSN, the store's metrics
URL), the router and the logs use it, and the secrets tests
(`tests/reliability/test_secrets.py`) are its net.
"""

from __future__ import annotations

import contextlib
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import psycopg

MASK = "***"
#: Query parameters shown with a URL (Redis's database number); every other one is left
#: out, since webhook URLs often carry an API key there and Redis URLs a password.
SHOWN_QUERY = frozenset({"db"})


def redact_url(url: str) -> str:
    """The URL without user, password or query parameters other than `SHOWN_QUERY`."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k in SHOWN_QUERY])
    # Not urlunsplit: it turns `unix:///path` into `unix:/path`.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def url_secrets(url: str) -> set[str]:
    """The password of a URL, from its user info or a `password=` query parameter, raw and
    percent-decoded (an error message may echo either)."""
    parts = urlsplit(url)
    raw = [parts.password or ""]
    raw += [v for k, v in parse_qsl(parts.query) if k == "password"]
    return {s for value in raw for s in (value, unquote(value)) if s}


def first_line(exc: BaseException) -> str:
    """An error as one line: its message's first line, or its type when it says nothing."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Redactor:
    """Masks known secrets in text (libpq and redis-py echo what they could not use)."""

    def __init__(self, *secrets: str) -> None:
        # Longest first: a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def message(self, exc: BaseException) -> str:
        """The first line of an error, redacted."""
        return self(first_line(exc))


# -- the database's DSN -------------------------------------------------------------------


class DsnRedactor(Redactor):
    """Masks the DSN and its password: libpq echoes a conninfo it cannot parse."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, *dsn_secrets(dsn))

    def message(self, exc: BaseException) -> str:
        """The first line of an error, without psycopg's prefixes, redacted."""
        text = first_line(exc)
        for prefix in ("connection failed: ", "connection is bad: "):
            text = text.removeprefix(prefix)
        return self(text)


def dsn_secrets(dsn: str) -> set[str]:
    """The password of a PostgreSQL DSN (URL or key=value), as libpq may echo it."""
    found: set[str] = set()
    with contextlib.suppress(ValueError):
        parts = urlsplit(dsn)
        if parts.password:
            found |= {parts.password, unquote(parts.password)}
    # A URL that urlsplit rejects may still be echoed whole or in part by libpq.
    for match in re.finditer(r"://[^/@:]*:([^@/]+)@", dsn):
        found |= {match.group(1), unquote(match.group(1))}
    for match in re.finditer(r"password\s*=\s*('(?:\\.|[^'])*'|\S+)", dsn):
        value = match.group(1)
        found |= {value, value.strip("'")}
    with contextlib.suppress(Exception):
        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
        if password:
            found.add(str(password))
    return found


def describe_dsn(dsn: str) -> str:
    """`user@host:port/dbname`, for details: never the password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except Exception:
        return "unparsable database URL"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    user = f"{params['user']}@" if params.get("user") else ""
    dbname = str(params.get("dbname") or "")
    return f"{user}{host}:{port}/{dbname}"
