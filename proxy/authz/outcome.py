"""How an analysis ends: an allowed `Analysis` built by `result`, or a `Denied` raised from any
depth and converted once, in `analyze`, into a DENIED `Analysis` by `denied`."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.authz.model import Analysis, Deny, DenyCode, Requirement, StatementKind
from proxy.authz.names import INFORMATION_SCHEMA


class Denied(Exception):
    """The statement is refused. `statement_class` is filled in by the dispatcher when empty."""

    def __init__(self, code: DenyCode, detail: str, statement_class: str = "") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.statement_class = statement_class


def denied(code: DenyCode, detail: str, statement_class: str = "UNKNOWN") -> Analysis:
    return Analysis(
        kind=StatementKind.DENIED,
        statement_class=statement_class or "UNKNOWN",
        deny=Deny(code, detail),
    )


def result(
    kind: StatementKind,
    statement_class: str,
    requirements: Iterable[Requirement] = (),
    **extra: object,
) -> Analysis:
    reqs = frozenset(requirements)
    for req in reqs:
        if req.target.db == INFORMATION_SCHEMA:
            # Reads of information_schema are metadata_tables; anything else is no grant's to give.
            raise Denied(
                DenyCode.METADATA,
                f"information_schema.{req.target.table} cannot be used that way "
                f"({req.privilege.value}): it is read-only and shows only granted objects",
            )
    return Analysis(kind=kind, statement_class=statement_class, requirements=reqs, **extra)


def parse_error_detail(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if errors and isinstance(errors[0], dict) and errors[0].get("line") is not None:
        return (
            "the statement could not be parsed "
            f"(line {errors[0].get('line')}, column {errors[0].get('col')})"
        )
    return "the statement could not be parsed"
