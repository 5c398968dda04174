"""Admission: which connections the proxy takes and how failed logins slow down.

Limits are counted here, in one place, so that one person, one address or a crowd of silent
sockets can never hold every slot: connections that have not finished logging in have slots of
their own (total and per address), logged-in sessions count per person, every connection per
address. Failed logins back off, then lock for a while, per source address and per person at an
address. Pure bookkeeping: the server asks and reports; nothing here does I/O."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from proxy.config import LimitsConfig
from proxy.protocol.errors import ER, ClientError


@dataclass(frozen=True)
class Refusal:
    """Why a connection or a login is refused: `code` for audit and metrics, `error` for the client."""

    code: str
    error: ClientError


class _Failures:
    """Failure times of one key within the window, and the lock they may have earned."""

    __slots__ = ("times", "locked_until")

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.locked_until = 0.0


class Admission:
    def __init__(self, limits: LimitsConfig, max_connections: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.max_connections = max_connections
        self._clock = clock
        self.connections = 0
        self.handshakes = 0
        self._per_address: dict[str, int] = {}
        self._handshakes_per_address: dict[str, int] = {}
        self._per_user: dict[str, int] = {}
        self._failures: dict[tuple[str, str], _Failures] = {}  # ("addr", ip) / ("user", "ip user")
        self.refused: dict[str, int] = {}  # by code, for metrics

    def configure(self, limits: LimitsConfig, max_connections: int) -> None:
        """New limits (a reload): they apply to the next connection; open ones stay."""
        self.limits = limits
        self.max_connections = max_connections

    # -- connections ----------------------------------------------------------------------

    def connect(self, address: str) -> Refusal | None:
        """A new connection from `address`: taken (counted as a handshake until `logged_in`
        or `disconnect`), or refused."""
        lim = self.limits
        if self.connections >= self.max_connections:
            return self._refuse("max_connections", ER.TOO_MANY_CONNECTIONS, "Too many connections (jitproxy)")
        if self._per_address.get(address, 0) >= lim.max_connections_per_address:
            return self._refuse("max_connections_per_address", ER.TOO_MANY_CONNECTIONS,
                                f"Too many connections from {address} (jitproxy: limits.max_connections_per_address)")
        if self.handshakes >= lim.max_handshakes:
            return self._refuse("max_handshakes", ER.TOO_MANY_CONNECTIONS,
                                "Too many connections logging in at once (jitproxy), retry")
        if self._handshakes_per_address.get(address, 0) >= lim.max_handshakes_per_address:
            return self._refuse("max_handshakes_per_address", ER.TOO_MANY_CONNECTIONS,
                                f"Too many connections logging in from {address} at once (jitproxy), retry")
        self.connections += 1
        self.handshakes += 1
        _bump(self._per_address, address, 1)
        _bump(self._handshakes_per_address, address, 1)
        return None

    def login(self, address: str, user: str) -> Refusal | None:
        """The person's token was accepted: the connection becomes a session of `user`
        (refused past max_connections_per_user; the caller then disconnects it)."""
        if self._per_user.get(user, 0) >= self.limits.max_connections_per_user:
            return self._refuse("max_connections_per_user", ER.TOO_MANY_USER_CONNECTIONS,
                                f"User '{user}' already has {self.limits.max_connections_per_user} connections "
                                "through jitproxy (limits.max_connections_per_user): close some first")
        _bump(self._per_user, user, 1)
        self.handshakes -= 1
        _bump(self._handshakes_per_address, address, -1)
        return None

    def disconnect(self, address: str, user: str | None) -> None:
        """A connection taken by `connect` has ended; `user` if `login` accepted it."""
        self.connections -= 1
        _bump(self._per_address, address, -1)
        if user is None:
            self.handshakes -= 1
            _bump(self._handshakes_per_address, address, -1)
        else:
            _bump(self._per_user, user, -1)

    # -- failed logins --------------------------------------------------------------------

    def locked(self, address: str, user: str) -> Refusal | None:
        """Before checking a token: is this address, or this person at this address, locked?"""
        now = self._clock()
        for key in (("addr", address), ("user", f"{address} {user}")):
            entry = self._failures.get(key)
            if entry is not None and entry.locked_until > now:
                left = int(entry.locked_until - now + 0.999)
                if key[0] == "addr":
                    return self._refuse("locked_address", ER.HOST_IS_BLOCKED,
                                        f"Host '{address}' is blocked for {left} s because of too many failed "
                                        "logins (jitproxy: limits.login_failures)")
                return self._refuse("locked_user", ER.ACCOUNT_LOCKED,
                                    f"Access denied for user '{user[:80]}': locked for {left} s after too many "
                                    "failed logins from this address (jitproxy: limits.login_failures)")
        return None

    def failed(self, address: str, user: str) -> tuple[float, bool]:
        """A failed login: (seconds to wait before answering it, whether a lock began now)."""
        now = self._clock()
        lim = self.limits.login_failures
        delay, locked_now = 0.0, False
        for key in (("addr", address), ("user", f"{address} {user}")):
            entry = self._failures.get(key)
            if entry is None:
                if len(self._failures) >= 100_000:  # bounded, whatever the attacker's addresses
                    self._prune(now, force=True)
                entry = self._failures[key] = _Failures()
            times = entry.times
            times.append(now)
            while times and now - times[0] > lim.window_s:
                times.popleft()
            n = len(times)
            if n >= lim.lockout_after and entry.locked_until <= now:
                entry.locked_until = now + lim.lockout_s
                times.clear()
                locked_now = True
            if n > lim.free:
                delay = max(delay, min(lim.backoff_max_s, lim.backoff_base_s * 2 ** (n - lim.free - 1)))
        return delay, locked_now

    def succeeded(self, address: str, user: str) -> None:
        """A good login clears the person's failures at that address (not the address's)."""
        self._failures.pop(("user", f"{address} {user}"), None)

    def prune(self) -> None:
        """Forget failures outside the window and locks that ended (the server's housekeeping)."""
        self._prune(self._clock())

    def _prune(self, now: float, force: bool = False) -> None:
        window = self.limits.login_failures.window_s
        for key, entry in list(self._failures.items()):
            recent = entry.times and now - entry.times[-1] <= window
            if entry.locked_until <= now and (force or not recent):
                del self._failures[key]

    def stats(self) -> dict[str, object]:
        now = self._clock()
        return {
            "connections": self.connections,
            "handshakes": self.handshakes,
            "locked": sum(1 for e in self._failures.values() if e.locked_until > now),
            "refused": dict(self.refused),
        }

    def _refuse(self, code: str, er: int, message: str) -> Refusal:
        self.refused[code] = self.refused.get(code, 0) + 1
        return Refusal(code, ClientError(er, message, keep_connection=False))


def _bump(counts: dict[str, int], key: str, delta: int) -> None:
    n = counts.get(key, 0) + delta
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
