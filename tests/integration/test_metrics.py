"""GET /metrics (Prometheus text format, parsed with prometheus-client's own parser) counts what
happened, and GET /readyz says whether new sessions can be served."""

from __future__ import annotations

import httpx
import pymysql
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import client_ssl


def _scrape(proxy, tls_files) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"https://127.0.0.1:{proxy.server.api.port}/metrics", verify=client_ssl(tls_files))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_statements_logins_and_pool_state(proxy, tls_files):
    before = _scrape(proxy, tls_files)
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="dev", password=proxy.token("dev"),
                        database="hr_prod", ssl=client_ssl(tls_files), autocommit=True)
    with c.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM employee")
        with pytest.raises(pymysql.MySQLError):
            cur.execute("SELECT * FROM salary")
    with pytest.raises(pymysql.MySQLError):
        pymysql.connect(host="127.0.0.1", port=proxy.port, user="dev", password="wrong",
                        ssl=client_ssl(tls_files))
    after = _scrape(proxy, tls_files)
    c.close()

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("jitproxy_statements_total", decision="allow", outcome="completed", reason="") >= 1
    assert grew("jitproxy_statements_total", decision="deny", outcome="denied", reason="missing_grant") == 1
    assert grew("jitproxy_logins_total", result="ok") >= 1
    assert sum(v for (n, labels), v in after.items() if n == "jitproxy_logins_total" and ("result", "ok") not in labels) \
        > sum(v for (n, labels), v in before.items() if n == "jitproxy_logins_total" and ("result", "ok") not in labels)
    assert grew("jitproxy_statement_duration_seconds_count") >= 1
    assert _value(after, "jitproxy_upstream_up", instance="default") == 1
    assert _value(after, "jitproxy_upstream_pool_max_size", instance="default") > 0
    assert _value(after, "jitproxy_sessions") >= 1
    assert ("jitproxy_audit_events_total", ()) in after
    # nothing that names a person, a statement or a host
    text = httpx.get(f"https://127.0.0.1:{proxy.server.api.port}/metrics", verify=client_ssl(tls_files)).text
    assert "dev" not in text and "salary" not in text and "127.0.0.1" not in text


def test_readyz_is_ready_while_the_database_answers(proxy, tls_files):
    r = httpx.get(f"https://127.0.0.1:{proxy.server.api.port}/readyz", verify=client_ssl(tls_files))
    assert r.status_code == 200 and r.json() == {"ready": True, "problems": []}
