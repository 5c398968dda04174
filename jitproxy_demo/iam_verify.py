"""Checks an RDS IAM auth token the way Aurora MySQL does; run by pam_exec for the IAM harness.

`jitproxy_demo.iam` points a PAM service at this file:

    auth required pam_exec.so expose_authtok quiet <python> -I -S <this file> <config.json>

MariaDB's `auth_pam` (with `pam_use_cleartext_plugin=ON`) hands the password the client sent
with `mysql_clear_password` to PAM, pam_exec writes it to our stdin and sets `PAM_USER`. We
recompute the SigV4 query-string signature that botocore's `generate_db_auth_token` made and
exit 0 (accept) or 1 (reject), appending one JSON line per decision to the config's `log_path`:
`{"ok", "reason", "user", "at", "service", "key"}` — never the token, its signature, a session
token or a secret key.

Standard library only: every login starts one Python (`-I -S`), so nothing else is imported.

Reasons: "ok", "malformed", "truncated" (pam_exec passes at most 511 characters; a token with
an STS session token is ~1000), "wrong_host", "wrong_action", "wrong_user", "bad_algorithm",
"wrong_region", "wrong_service", "unknown_key", "bad_session_token", "bad_signature",
"future_dated", "expired", "config_error", "internal_error".

Config (JSON, written by `jitproxy_demo.iam`): host, port, user, region, keys (a list of
{access_key_id, secret_access_key, session_token}), max_age_s, max_future_skew_s,
clock_offset_s, log_path.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
SIGNING_SERVICE = "rds-db"
SIGNED_HEADERS = "host"
# What pam_exec's expose_authtok passes on at most (PAM_MAX_RESP_SIZE less its NUL).
PAM_EXEC_MAX_TOKEN_CHARS = 511
DEFAULT_MAX_FUTURE_SKEW_S = 60
_MAX_EXPIRES_S = 7 * 24 * 3600
_MAX_STDIN_BYTES = 64 * 1024
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
# SigV4 URI-encodes everything except the unreserved characters.
_UNRESERVED = "-_.~"
_SIGNATURE = "X-Amz-Signature"
_SECURITY_TOKEN = "X-Amz-Security-Token"
_REQUIRED_PARAMS = frozenset(
    {
        "Action",
        "DBUser",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        _SIGNATURE,
    }
)
_KNOWN_PARAMS = _REQUIRED_PARAMS | {_SECURITY_TOKEN}


def check_token(token: str, user: str, config: Mapping[str, Any], now: float) -> str | None:
    """None when `token` lets `user` connect under `config`, else the reason it does not.

    `now` is the real time (epoch seconds); the config's `clock_offset_s` is added to it.
    """
    host, port = str(config["host"]), int(config["port"])
    prefix = f"{host}:{port}/?"
    if not token.startswith(prefix):
        return "wrong_host" if "/?" in token else "malformed"
    params = _parse_query(token[len(prefix) :])
    if params is None or not _REQUIRED_PARAMS <= params.keys() <= _KNOWN_PARAMS:
        return _truncated_or(token, "malformed")
    signature = params[_SIGNATURE]
    if len(signature) != 64 or not _is_lower_hex(signature):
        return _truncated_or(token, "malformed")
    if params["Action"] != "connect":
        return "wrong_action"
    if not (params["DBUser"] == user == config["user"]):
        return "wrong_user"
    if params["X-Amz-Algorithm"] != ALGORITHM or params["X-Amz-SignedHeaders"] != SIGNED_HEADERS:
        return "bad_algorithm"

    amz_date = params["X-Amz-Date"]
    signed_at = _parse_amz_date(amz_date)
    expires_s = _parse_expires(params["X-Amz-Expires"])
    scope = params["X-Amz-Credential"].split("/")
    if signed_at is None or expires_s is None or len(scope) != 5:
        return "malformed"
    access_key_id, scope_date, region, service, terminator = scope
    if scope_date != amz_date[:8] or terminator != "aws4_request":
        return "malformed"
    if region != config["region"]:
        return "wrong_region"
    if service != SIGNING_SERVICE:
        return "wrong_service"

    key = next((k for k in config["keys"] if k["access_key_id"] == access_key_id), None)
    if key is None:
        return "unknown_key"
    if not _session_token_matches(key.get("session_token"), params.get(_SECURITY_TOKEN)):
        return "bad_session_token"

    expected = presign_signature(
        params,
        host=host,
        port=port,
        region=region,
        secret_access_key=key["secret_access_key"],
    )
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return "bad_signature"

    verifier_now = now + float(config.get("clock_offset_s", 0.0))
    if signed_at > verifier_now + float(config.get("max_future_skew_s", DEFAULT_MAX_FUTURE_SKEW_S)):
        return "future_dated"
    if verifier_now - signed_at > min(expires_s, int(config["max_age_s"])):
        return "expired"
    return None


def presign_signature(
    params: Mapping[str, str], *, host: str, port: int, region: str, secret_access_key: str
) -> str:
    """The SigV4 signature of a presigned `GET https://host:port/?<params>` for rds-db.

    Canonical request as botocore builds it for `generate_db_auth_token`: path `/`, every
    parameter but X-Amz-Signature URI-encoded and sorted, the one signed header `host` (without
    the port when it is 443, https's default) and the SHA-256 of an empty payload.
    """
    pairs = sorted(
        (quote(name, safe=_UNRESERVED), quote(value, safe=_UNRESERVED))
        for name, value in params.items()
        if name != _SIGNATURE
    )
    canonical_query = "&".join(f"{name}={value}" for name, value in pairs)
    host_header = host.lower() if port == 443 else f"{host.lower()}:{port}"
    canonical_request = "\n".join(
        ["GET", "/", canonical_query, f"host:{host_header}\n", SIGNED_HEADERS, _EMPTY_SHA256]
    )
    amz_date = params["X-Amz-Date"]
    scope = f"{amz_date[:8]}/{region}/{SIGNING_SERVICE}/aws4_request"
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    signing_key = f"AWS4{secret_access_key}".encode()
    for part in (amz_date[:8], region, SIGNING_SERVICE, "aws4_request"):
        signing_key = hmac.digest(signing_key, part.encode(), "sha256")
    return hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def claimed_access_key(token: str) -> str | None:
    """The access key id a token names, for the decision log (an identifier, not a secret)."""
    _, _, query = token.partition("/?")
    params = _parse_query(query) or {}
    key = params.get("X-Amz-Credential", "").split("/", 1)[0]
    return key if key.isascii() and key.isalnum() and 16 <= len(key) <= 128 else None


def main(argv: Sequence[str] | None = None) -> int:
    """pam_exec entry point: exit status 0 accepts the login, anything else rejects it."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        print("usage: iam_verify.py CONFIG.json  (token on stdin, PAM_USER set)", file=sys.stderr)
        return 1
    try:
        with open(args[0], encoding="utf-8") as config_file:
            config = json.load(config_file)
        log_path = str(config["log_path"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"iam_verify: cannot read {args[0]}: {type(exc).__name__}", file=sys.stderr)
        return 1

    user = os.environ.get("PAM_USER", "")
    # pam_exec may end the token with a NUL; nothing after it is part of the token.
    raw = sys.stdin.buffer.read(_MAX_STDIN_BYTES).split(b"\0", 1)[0]
    token = ""
    try:
        token = raw.decode("ascii")
        reason = check_token(token, user, config, time.time())
    except UnicodeDecodeError:
        reason = "malformed"
    except (KeyError, TypeError, ValueError):
        reason = "config_error"
    except Exception:  # fail closed, and never let a traceback print the token
        reason = "internal_error"
    _record(log_path, reason, user, token)
    return 0 if reason is None else 1


# -- internals ------------------------------------------------------------------------------


def _parse_query(query: str) -> dict[str, str] | None:
    """Percent-decoded parameters, or None for an empty name, a missing `=` or a repeat."""
    params: dict[str, str] = {}
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        name, value = unquote(name), unquote(value)
        if not name or not equals or name in params:
            return None
        params[name] = value
    return params


def _truncated_or(token: str, reason: str) -> str:
    return "truncated" if len(token) >= PAM_EXEC_MAX_TOKEN_CHARS else reason


def _is_lower_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _parse_amz_date(text: str) -> float | None:
    """Epoch seconds of a `YYYYMMDDTHHMMSSZ` stamp, None unless it is exactly that."""
    if len(text) != 16 or text[8] != "T" or text[15] != "Z":
        return None
    digits = text[:8] + text[9:15]
    if not (digits.isascii() and digits.isdigit()):
        return None
    fields = (digits[0:4], digits[4:6], digits[6:8], digits[8:10], digits[10:12], digits[12:14])
    seconds = calendar.timegm(tuple(int(f) for f in fields))
    # timegm normalises month 13 or second 61; a real stamp survives the round trip.
    return float(seconds) if time.strftime(_AMZ_DATE_FORMAT, time.gmtime(seconds)) == text else None


def _parse_expires(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()) or len(text) > 7:
        return None
    value = int(text)
    return value if 1 <= value <= _MAX_EXPIRES_S else None


def _session_token_matches(expected: str | None, sent: str | None) -> bool:
    if expected is None or sent is None:
        return expected is None and sent is None
    return hmac.compare_digest(expected.encode(), sent.encode())


def _record(log_path: str, reason: str | None, user: str, token: str) -> None:
    line = {
        "ok": reason is None,
        "reason": reason or "ok",
        "user": user,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "service": os.environ.get("PAM_SERVICE", ""),
        "key": claimed_access_key(token),
    }
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return  # the decision stands without its log line
    try:
        os.write(fd, data)  # one write with O_APPEND: concurrent logins do not interleave
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
