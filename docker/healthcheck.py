"""The image's HEALTHCHECK: GET /healthz on jitproxy's admin API (standard library only).

Healthy (exit 0) when the API answers 200 with a JSON body: `/healthz` answers 200 while the
proxy serves, "ok" or "degraded" (a database or an audit sink is down: reported, not a reason to
restart the proxy; see README "Failover and faults"). Anything else is unhealthy (exit 1). One
line is printed either way (`docker inspect` shows it). No token is sent: /healthz needs none.

Environment (defaults fit docker/jitproxy.yaml):
  JITPROXY_API_PORT               the config's api.port (default 8443)
  JITPROXY_HEALTHCHECK_HOST       where to connect (default 127.0.0.1: api.host must be
                                  0.0.0.0 or 127.0.0.1 in a container)
  JITPROXY_HEALTHCHECK_CA         CA bundle that signed the listener's certificate: the
                                  certificate is then verified, for JITPROXY_HEALTHCHECK_SERVER_NAME
                                  (default: the host). Unset: not verified (a loopback
                                  liveness probe that sends no credential).
  JITPROXY_HEALTHCHECK_TIMEOUT_S  seconds (default 4)

With `api.enabled: false` there is nothing to ask: turn the check off (`healthcheck: disable:
true` in compose, `--no-healthcheck` for docker run).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import sys


class _Connection(http.client.HTTPSConnection):
    """HTTPS to `host` with the certificate checked for `server_name` (which may differ)."""

    def __init__(self, host: str, port: int, *, server_name: str, tls: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=tls)
        self._server_name = server_name
        self._tls = tls

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self._server_name)


def main() -> int:
    env = os.environ
    host = env.get("JITPROXY_HEALTHCHECK_HOST") or "127.0.0.1"
    try:
        port = int(env.get("JITPROXY_API_PORT") or "8443")
        timeout = float(env.get("JITPROXY_HEALTHCHECK_TIMEOUT_S") or "4")
    except ValueError as e:
        print(f"unhealthy: bad setting: {e}")
        return 1
    ca = env.get("JITPROXY_HEALTHCHECK_CA")
    if ca:
        tls = ssl.create_default_context(cafile=ca)
    else:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    server_name = env.get("JITPROXY_HEALTHCHECK_SERVER_NAME") or host
    conn = _Connection(host, port, server_name=server_name, tls=tls, timeout=timeout)
    try:
        conn.request("GET", "/healthz", headers={"User-Agent": "jitproxy-healthcheck", "Accept": "application/json"})
        response = conn.getresponse()
        body = response.read(65536)
    except (OSError, http.client.HTTPException) as e:
        print(f"unhealthy: https://{host}:{port}/healthz: {e}")
        return 1
    finally:
        conn.close()
    if response.status != 200:
        print(f"unhealthy: https://{host}:{port}/healthz answered {response.status}")
        return 1
    try:
        status = json.loads(body).get("status", "?")
    except (ValueError, AttributeError):
        print(f"unhealthy: https://{host}:{port}/healthz answered 200 without a JSON object")
        return 1
    print(f"healthy: {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
