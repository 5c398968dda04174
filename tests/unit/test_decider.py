"""The session's decisions (proxy/protocol/deciding.py) when the database cannot say which names
are views: the statement is refused, never decided as if its views were tables."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from proxy.authz.analyze import analyze
from proxy.authz.decide import GrantSet
from proxy.authz.model import DenyCode, Grant, Principal, Privilege
from proxy.protocol.deciding import Decider


class _Context:
    def grants(self) -> GrantSet:
        return GrantSet([Grant("user:dev", "*", "*", frozenset(Privilege))], "t")

    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=timezone.utc)


class _Instance:
    name = "default"

    def __init__(self, answer: object) -> None:
        self._answer = answer

    async def expanded_views(self, analysis):  # noqa: ANN001, ANN201 - Instance.expanded_views
        if isinstance(self._answer, BaseException):
            raise self._answer
        return self._answer


@pytest.mark.parametrize("answer", [OSError("gone"), TimeoutError(), None], ids=["unreachable", "slow", "unknown"])
def test_views_that_cannot_be_read_refuse_the_statement(answer: object) -> None:
    decider = Decider(_Context(), _Instance(answer), "s1")  # type: ignore[arg-type]
    decider.principal = Principal("dev")  # holds everything: only the views are in doubt
    decision = asyncio.run(decider.with_schema(analyze("SELECT * FROM hr_test.v", None), object()))  # type: ignore[arg-type]
    assert not decision.allowed and decision.code is DenyCode.UNACCOUNTED_TABLE
    assert "views" in decision.reason
