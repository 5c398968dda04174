"""The state store (see `proxy.store.base` for the interface) and `open_store`, which picks a
backend from a URL and brings its schema up to date.

    sqlite:///state/jitproxy.db      a file relative to the working directory
    sqlite:////var/lib/jitproxy.db   an absolute path (four slashes)
    postgresql://user:pw@host/db     PostgreSQL (also postgres://; any libpq URL or options)

Both backends are one implementation, `proxy.store.sql.SQLStore`, over a dialect each
(`proxy.store.sqlite`, `proxy.store.postgres`). They are imported on demand, so a SQLite
deployment never loads psycopg.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from proxy.store.base import (ANY_INSTANCE, AccessRequest, Approval, AuditQuery, Conflict, Decision, NewGrant,
                              NewRequest, NotFound, RequestStatus, Store, StoredGrant, StoreError)

__all__ = ["ANY_INSTANCE", "AccessRequest", "Approval", "AuditQuery", "Conflict", "Decision", "NewGrant", "NewRequest",
           "NotFound", "RequestStatus", "Store", "StoreError", "StoredGrant", "open_store"]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql", "postgres")


def open_store(url: str) -> Store:
    """The store at `url`, migrated to the current schema. ValueError for an unknown URL."""
    store = _backend_for(url)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


def _backend_for(url: str) -> Store:
    if url.startswith(_SQLITE_PREFIX):
        path = url.removeprefix(_SQLITE_PREFIX)
        if not path:
            raise ValueError("a sqlite store URL needs a path: sqlite:///PATH or sqlite:////ABS/PATH")
        from proxy.store.sqlite import SQLiteStore

        return SQLiteStore(path)
    # Only the scheme is ever echoed back: the rest of a URL may hold a password.
    scheme = urlsplit(url).scheme
    if scheme in _POSTGRES_SCHEMES:
        from proxy.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(
        f"unsupported store URL (scheme {scheme!r}): use sqlite:///PATH or postgresql://..."
    )
