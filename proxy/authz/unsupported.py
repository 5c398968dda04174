"""Statement classes that are denied whatever the grants, each with the reason the person sees.

The dispatcher (analyze.py) denies any keyword it has no handler for (as a parse error: no
statement starts with it); the classes listed here are statements MariaDB or MySQL would run,
refused with their reason. Statements of handled keywords that are refused (CREATE VIEW, SHOW
GRANTS, SET GLOBAL ...) are denied by their handlers.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot.tokens import Token

from proxy.authz.model import Analysis, DenyCode
from proxy.authz.outcome import Denied
from proxy.authz.lexer import leading_words

_ADMIN = "server administration is not available through jitproxy"
_REPLICATION = "replication is not available through jitproxy"
_MAINTENANCE = "table maintenance is not available through jitproxy"
_PLUGINS = "plugins and components run code inside the server"
_STORED_PROGRAMS = "compound statements belong in stored programs"

REASONS: dict[str, str] = {
    "GRANT": "privileges come from jitproxy grants, not from the shared database account",
    "REVOKE": "privileges come from jitproxy grants, not from the shared database account",
    "LOAD": (
        "LOAD DATA and LOAD XML read files: server-side files are a way out for data, and "
        "LOCAL INFILE is never enabled upstream"
    ),
    "HANDLER": (
        "use SELECT (HANDLER ... READ names a handler opened earlier in the session, and the "
        "server checks privileges only when it is opened, so a grant that ends would not stop it)"
    ),
    **dict.fromkeys(
        ["FLUSH", "RESET", "PURGE", "SHUTDOWN", "RESTART", "BACKUP", "CACHE", "BINLOG"], _ADMIN
    ),
    **dict.fromkeys(["CHANGE", "STOP"], _REPLICATION),
    "CLONE": "it copies a server's data to or from another server",
    "IMPORT": "it reads table files on the server",
    **dict.fromkeys(["OPTIMIZE", "REPAIR", "CHECK", "CHECKSUM"], _MAINTENANCE),
    **dict.fromkeys(["INSTALL", "UNINSTALL"], _PLUGINS),
    **dict.fromkeys(["SIGNAL", "RESIGNAL"], "SIGNAL and RESIGNAL belong in stored programs"),
    **dict.fromkeys(
        """
        DECLARE OPEN CLOSE FETCH IF CASE LOOP REPEAT WHILE LEAVE ITERATE RETURN FOR
        """.split(),
        _STORED_PROGRAMS,
    ),
}
# Keywords whose statement class names the next word too (LOAD DATA, CHANGE MASTER ...).
_TWO_WORD_CLASSES = frozenset({"LOAD", "CHANGE", "STOP", "CACHE", "INSTALL", "UNINSTALL"})


def denier(keyword: str) -> Callable[[str, list[Token], str | None], Analysis]:
    reason = REASONS[keyword]

    def handler(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
        what = leading_words(tokens, 2) if keyword in _TWO_WORD_CLASSES else keyword
        if what == "LOAD INDEX":
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported: {_ADMIN}", what)
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported: {reason}", what)

    return handler
