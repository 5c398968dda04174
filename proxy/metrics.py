"""Prometheus metrics (GET /metrics on the admin API), built with prometheus-client.

The statement path only bumps plain integers (`Stats`): a labelled prometheus-client counter
costs microseconds per call, a dict increment a fraction of one. Everything is turned into
metric families when Prometheus scrapes (`ProxyCollector`), with the state read from where it
lives (pools, admission, audit writers) rather than mirrored."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from proxy.server import ProxyServer

# Statement latency buckets, seconds (what the proxy saw: authorization + the database + relay).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Stats:
    """Counters the proxy bumps as things happen; read only by the collector."""

    def __init__(self) -> None:
        self.statements: dict[tuple[str, str, str], int] = {}  # (decision, outcome, reason) -> n
        self.logins: dict[str, int] = {}  # "ok" or the session.rejected reason code -> n
        self.sessions_ended: dict[str, int] = {}  # reason -> n
        self.cancels: dict[str, int] = {}  # "statement_timeout" / "client_left" / ... -> n
        self._latency = [0] * (len(BUCKETS) + 1)
        self._latency_sum = 0.0

    def statement(self, decision: str, outcome: str, reason: str, seconds: float | None) -> None:
        key = (decision, outcome, reason)
        self.statements[key] = self.statements.get(key, 0) + 1
        if seconds is not None:
            self._latency[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._latency_sum += seconds

    def login(self, result: str) -> None:
        self.logins[result] = self.logins.get(result, 0) + 1

    def session_end(self, reason: str) -> None:
        self.sessions_ended[reason] = self.sessions_ended.get(reason, 0) + 1

    def cancel(self, why: str) -> None:
        self.cancels[why] = self.cancels.get(why, 0) + 1

    def latency_buckets(self) -> tuple[list[tuple[str, int]], float]:
        out, running = [], 0
        for bound, n in zip((*BUCKETS, float("inf")), self._latency):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out, self._latency_sum


class ProxyCollector(Collector):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        ctx = self.server.ctx
        stats: Stats = ctx.stats

        statements = CounterMetricFamily("jitproxy_statements", "Statements by decision, outcome and reason code",
                                         labels=["decision", "outcome", "reason"])
        for (decision, outcome, reason), n in sorted(stats.statements.items()):
            statements.add_metric([decision, outcome, reason], n)
        yield statements
        buckets, total = stats.latency_buckets()
        yield HistogramMetricFamily("jitproxy_statement_duration_seconds",
                                    "Time from a statement's arrival to its last answer byte", buckets=buckets,
                                    sum_value=total)
        logins = CounterMetricFamily("jitproxy_logins", "Login attempts by result (ok, or the refusal's reason code)",
                                     labels=["result"])
        for result, n in sorted(stats.logins.items()):
            logins.add_metric([result], n)
        yield logins
        ended = CounterMetricFamily("jitproxy_sessions_ended", "Sessions ended by the proxy, by reason",
                                    labels=["reason"])
        for reason, n in sorted(stats.sessions_ended.items()):
            ended.add_metric([reason], n)
        yield ended
        cancels = CounterMetricFamily("jitproxy_upstream_cancels", "KILLs the proxy sent upstream, by cause",
                                      labels=["cause"])
        for cause, n in sorted(stats.cancels.items()):
            cancels.add_metric([cause], n)
        yield cancels

        admission = ctx.admission
        yield _gauge("jitproxy_connections", "Client connections open (logged in or not)", admission.connections)
        yield _gauge("jitproxy_handshakes", "Client connections that have not finished logging in", admission.handshakes)
        yield _gauge("jitproxy_sessions", "Logged-in sessions", len(ctx.sessions))
        yield _gauge("jitproxy_login_lockouts", "Addresses and people locked after failed logins",
                     admission.stats()["locked"])
        limits = CounterMetricFamily("jitproxy_limit_refusals", "Connections and logins refused by a limit",
                                     labels=["limit"])
        for limit, n in sorted(admission.refused.items()):
            limits.add_metric([limit], n)
        yield limits

        pool_gauges = {
            "in_use": GaugeMetricFamily("jitproxy_upstream_connections_in_use", "Upstream connections held by sessions",
                                        labels=["instance"]),
            "idle": GaugeMetricFamily("jitproxy_upstream_connections_idle", "Pooled idle upstream connections",
                                      labels=["instance"]),
            "waiting": GaugeMetricFamily("jitproxy_upstream_pool_waiting", "Sessions waiting for a free upstream connection",
                                         labels=["instance"]),
            "max_size": GaugeMetricFamily("jitproxy_upstream_pool_max_size", "The pool's size limit", labels=["instance"]),
        }
        up = GaugeMetricFamily("jitproxy_upstream_up", "1 when the database answers (connects and health pings)",
                               labels=["instance"])
        exhausted = CounterMetricFamily("jitproxy_upstream_pool_exhausted", "Sessions refused: every connection in use",
                                        labels=["instance"])
        for name, instance in ctx.instances.items():
            h = instance.pool.health()
            for key, family in pool_gauges.items():
                family.add_metric([name], h[key])
            up.add_metric([name], 1 if h["state"] != "down" and h["responding"] else 0)
            exhausted.add_metric([name], h["exhausted"])
        yield from pool_gauges.values()
        yield up
        yield exhausted

        cache = ctx.analyze.stats()
        analysis = CounterMetricFamily("jitproxy_analysis_cache", "Statement analyses by cache result", labels=["result"])
        for result in ("hits", "fingerprint_hits", "misses"):
            analysis.add_metric([result], cache[result])
        yield analysis
        yield CounterMetricFamily("jitproxy_fast_path_statements", "Statements handled on the fast path",
                                  value=ctx.fast_statements)

        audit = ctx.audit.stats()
        yield CounterMetricFamily("jitproxy_audit_events", "Audit events emitted", value=audit["events"])
        yield CounterMetricFamily("jitproxy_audit_refused_statements",
                                  "Statements refused because they could not be audited (fail_closed)",
                                  value=audit["refused_statements"])
        queued = GaugeMetricFamily("jitproxy_audit_queue", "Audit events waiting to be written, by sink", labels=["sink"])
        dropped = CounterMetricFamily("jitproxy_audit_dropped", "Audit events dropped (best_effort, queue full)",
                                      labels=["sink"])
        sink_up = GaugeMetricFamily("jitproxy_audit_sink_up", "1 while the sink writes", labels=["sink"])
        for name, sink in audit["sinks"].items():
            queued.add_metric([name], sink["queued"])
            dropped.add_metric([name], sink["dropped"])
            sink_up.add_metric([name], 1 if sink["up"] else 0)
        yield queued
        yield dropped
        yield sink_up


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def renderer(server: ProxyServer) -> Callable[[], bytes]:
    """What GET /metrics answers: the text exposition format of this process's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(server))
    return lambda: generate_latest(registry)
