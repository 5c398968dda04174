"""A stand-in for Slack's Web API on loopback (slack_sdk's WebClient takes base_url), and the
signing of interaction payloads as Slack does it."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit


class FakeSlack:
    """Records every Web API call (method, arguments, Authorization header) and answers like
    Slack: chat.postMessage with a channel id and a fresh ts, users.info from `users`."""

    def __init__(self, users: dict[str, dict[str, Any]] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.users = users or {}
        self._ts = itertools.count(1)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-slack", daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [c["args"] for c in self.calls if c["method"] == method]

    def answer(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        if method == "chat.postMessage":
            return {"ok": True, "channel": "C0APPROVE", "ts": f"1700000000.{next(self._ts):06d}",
                    "message": {"text": args.get("text")}}
        if method in ("chat.update", "chat.postEphemeral"):
            return {"ok": True, "channel": args.get("channel"), "ts": args.get("ts", "1700000001.000001")}
        if method == "users.info":
            user = self.users.get(str(args.get("user")))
            return {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}
        return {"ok": False, "error": "unknown_method"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._serve({k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()})

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    args = json.loads(raw or "{}")
                else:
                    args = {k: v[0] for k, v in parse_qs(raw).items()}
                self._serve(args)

            def _serve(self, args: dict[str, Any]) -> None:
                method = urlsplit(self.path).path.rsplit("/", 1)[-1]
                with fake._lock:
                    fake.calls.append({"method": method, "args": args,
                                       "authorization": self.headers.get("Authorization")})
                body = json.dumps(fake.answer(method, args)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def click_payload(request_id: str, slack_user: str, *, approve: bool = True, team: str = "T0JITPROXY",
                  channel: str = "C0APPROVE", message_ts: str = "1700000000.000001") -> dict[str, Any]:
    """A block_actions payload as Slack posts it for a click on one of our buttons."""
    return {
        "type": "block_actions",
        "team": {"id": team, "domain": "example"},
        "user": {"id": slack_user, "username": slack_user.lower(), "team_id": team},
        "api_app_id": "A0JITPROXY",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
        "channel": {"id": channel, "name": "db-approvals"},
        "message": {"type": "message", "ts": message_ts, "text": "..."},
        "response_url": "https://hooks.slack.invalid/actions/T0/1/x",
        "actions": [{"type": "button", "block_id": "jitproxy_decision",
                     "action_id": "jitproxy_approve" if approve else "jitproxy_deny",
                     "value": request_id, "action_ts": f"{time.time():.6f}"}],
    }


def signed(secret: str, payload: dict[str, Any], *, timestamp: int | None = None,
           signature: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The form body Slack posts and its headers: X-Slack-Signature = "v0=" + hex HMAC-SHA256 of
    "v0:<timestamp>:<body>" with the signing secret (or `signature` as given)."""
    body = urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
                  "X-Slack-Signature": signature or f"v0={digest}"}
