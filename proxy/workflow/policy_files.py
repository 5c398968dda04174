"""The policy files in effect: grants, masks and approval policies read from the policy
directories, reloaded when a file changes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from proxy.audit.events import EventType
from proxy.authz.decide import GrantSet
from proxy.workflow.approvals import ApprovalPolicies, load_approval_policies
from proxy.authz.policy import check_mask_overlaps, check_overlaps, load_policy_dir


log = structlog.get_logger("jitproxy.server")


class PolicyFiles:
    """Grants, masks and approval policies from the policy directories, reloaded when a file
    changes (checked at most once a second, on the statement path: a stat per file). A broken
    edit keeps the last good policies."""

    def __init__(self, dirs: tuple[Path, ...], check_interval_s: float = 1.0,
                 on_reload: Callable[[str, dict[str, Any]], Any] | None = None) -> None:
        self.dirs = dirs
        self.on_reload = on_reload  # (event type, fields): policy.reloaded / policy.reload_failed
        self.check_interval_s = check_interval_s
        self._stamp: tuple[tuple[str, int, int], ...] = ()
        self._checked = 0.0
        self.snapshot = GrantSet(())
        self.reload()

    def _stat(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for d in self.dirs:
            for p in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                out.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def reload(self) -> None:
        stamp = self._stat()
        grants, masks, digests = [], [], []
        for d in self.dirs:
            loaded = load_policy_dir(d)
            grants.extend(loaded.grants)
            masks.extend(loaded.masks)
            digests.append(loaded.digest)
        check_overlaps(grants)
        check_mask_overlaps(masks)
        approvals = load_approval_policies(self.dirs)
        self.snapshot = GrantSet(grants, version="-".join(digests), masks=masks)
        self.approvals = approvals
        self._stamp = stamp

    def _files(self) -> list[str]:
        return [path for path, _, _ in self._stamp]

    def _tell(self, event: str, **fields: Any) -> None:
        if self.on_reload is not None:
            self.on_reload(event, fields)

    def approval_policies(self) -> ApprovalPolicies:
        self()  # picks up an edited file, like the grants
        return self.approvals

    def __call__(self) -> GrantSet:
        now = time.monotonic()
        if now - self._checked >= self.check_interval_s:
            self._checked = now
            self.check()
        return self.snapshot

    def check(self, force: bool = False) -> bool:
        """Reload when a file changed (or `force`, e.g. SIGHUP). False: the reload failed and
        the previous policies stay in effect."""
        if not force and self._stat() == self._stamp:
            return True
        before = self.snapshot.version
        try:
            self.reload()
        except Exception as e:  # noqa: BLE001 - keep serving with the last good policy
            self._stamp = self._stat()
            log.error("policy reload failed; keeping the previous grants", error=str(e))
            self._tell(EventType.POLICY_RELOAD_FAILED, version=before, error=str(e)[:1000], files=self._files())
            return False
        log.info("policies reloaded", grants=len(self.snapshot.grants), version=self.snapshot.version)
        self._tell(EventType.POLICY_RELOADED, previous_version=before, version=self.snapshot.version,
                   grants=len(self.snapshot.grants), masks=len(self.snapshot.masks), files=self._files())
        return True
