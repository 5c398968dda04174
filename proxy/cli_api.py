"""`jitproxy request|grant|access|whoami|audit`, and `jitproxy check` when it asks the proxy
(POST /v1/check, proxy.cli.cmd_check): the admin API's command-line client.

Where the API is and who is asking come from the environment (or flags): JITPROXY_API (default
https://127.0.0.1:8443), JITPROXY_TOKEN (your personal token; or --token-file) and JITPROXY_CA
(the CA bundle that signed the proxy's certificate; default: the system's; a certificate it
does not trust is answered with which option to set). Tokens go only over HTTPS. Output is a
readable table, or JSON with --json. Tables show an instance column only when some row is for
one upstream instance (not "*", every instance). Times are shown in this machine's zone, to the
second; `--for`, `--until` and `--at` are read by proxy.timespec (a time without a zone is read
in this machine's zone, and the command says so on stderr). A pending request is shown with how
far it has got (its `progress`: "1 of 2 approvals, needs one from group:dba"); an on-call
person's break-glass request (`request create --break-glass`) with its review after the fact
("break glass, review pending", "... reviewed by lena", "... denied in review by lena").

`jitproxy audit search` shows audit events as a table (times in your local zone), or as JSON
lines with --json (one event per line, exactly as written: for a SIEM or jq), or exports them
with --format csv|json|jsonl (proxy.audit.export); `jitproxy audit
chain` prints one proxy process's events as JSON lines in seq order, for `jitproxy audit verify`.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.audit.search import SearchError, build_query
from proxy.cli_login import DEFAULT_API, stored
from proxy.timespec import Moment, TimeSpecError, format_duration, parse_duration, parse_moment
from proxy.workflow.status import REQUEST_STATUSES, request_objects

if TYPE_CHECKING:
    import httpx

class ApiError(SystemExit):
    pass


def _client(args: argparse.Namespace) -> httpx.Client:
    import httpx  # not loaded by `jitproxy serve`

    url = _api_url(args)
    if not url.startswith("https://"):
        raise ApiError("the API URL must be https:// (tokens are never sent in clear text)")
    token = None
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="ascii").strip()
    token = token or os.environ.get("JITPROXY_TOKEN") or stored("token")
    if not token:
        raise ApiError("no token: run jitproxy login, set JITPROXY_TOKEN or pass --token-file")
    ca = args.ca or os.environ.get("JITPROXY_CA") or stored("ca")
    try:
        verify = ssl.create_default_context(cafile=ca) if ca else True
    except (OSError, ssl.SSLError) as e:
        raise ApiError(f"cannot read the CA bundle {ca} (--ca / JITPROXY_CA): {e.strerror or e}") from None
    return httpx.Client(base_url=url, verify=verify, timeout=30,
                        headers={"Authorization": f"Bearer {token}", "User-Agent": "jitproxy-cli"})


def _api_url(args: argparse.Namespace) -> str:
    return str(args.api or os.environ.get("JITPROXY_API") or stored("api") or DEFAULT_API)


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    try:
        with _client(args) as c:
            response = c.request(method, path, **kwargs)
    except httpx.HTTPError as e:
        if _untrusted_certificate(e):
            raise ApiError(f"the API's certificate ({_api_url(args)}) is not trusted here ({e}): give the CA bundle "
                           "that signed it with --ca FILE or JITPROXY_CA=FILE (the demo's: demo/ca.pem)") from None
        raise ApiError(f"cannot reach the jitproxy API: {type(e).__name__}: {e}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:300]
        if isinstance(detail, list):  # FastAPI validation errors
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}" for d in detail)
        raise ApiError(f"refused ({response.status_code}): {detail}")
    return response.json()


def _untrusted_certificate(error: BaseException) -> bool:
    """httpx wraps the ssl module's verification error: look down the chain for it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _span(args: argparse.Namespace) -> dict[str, Any]:
    """--for or --until for the API, checked here first (a clear error before any network).
    --until is read as written, in this machine's zone when it names none (said on stderr),
    and sent with its zone, so the server never guesses."""
    if bool(args.duration) == bool(args.until):
        raise ApiError("give --for (e.g. 4h) or --until (e.g. 14:50, 2026-11-21T18:00)")
    if args.duration:
        try:
            parse_duration(args.duration, "--for")
        except TimeSpecError as e:
            raise ApiError(f"jitproxy: {e}") from None
        return {"duration": args.duration}
    return {"until": local_moment(args.until, "--until").isoformat()}


def local_moment(text: str, what: str) -> datetime:
    """`text` as a moment (proxy.timespec), read in this machine's zone when it names none, which
    is then said on stderr (so the server never guesses: the zone is sent with it)."""
    try:
        moment = parse_moment(text, datetime.now().astimezone(), None, what)
    except TimeSpecError as e:
        raise ApiError(f"jitproxy: {e}") from None
    if moment.assumed_zone:
        print(f"jitproxy: {what} {text} read as {moment.at.isoformat()} "
              f"({_day(moment) + ', ' if moment.clock_time else ''}your local zone, {_zone(moment.at)})",
              file=sys.stderr)
    return moment.at


def _day(moment: Moment) -> str:
    return "today" if moment.at.date() == datetime.now().astimezone().date() else "tomorrow"


def _zone(at: datetime) -> str:
    """"CET, UTC+01:00": the zone's name and its offset then."""
    offset = at.strftime("%z")
    return f"{at.tzname()}, UTC{offset[:3]}:{offset[3:]}" if offset else str(at.tzname())


def _when(text: Any) -> str:
    """An API time in this machine's zone, to the second (the exact end, readable here)."""
    try:
        return datetime.fromisoformat(str(text)).astimezone().isoformat(timespec="seconds")
    except ValueError:
        return str(text)


def _print(args: argparse.Namespace, data: Any, text: str) -> int:
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def _instance(row: dict[str, Any]) -> str:
    """The row's upstream instance; "*" (every instance) also from a server that predates them."""
    return str(row.get("instance") or "*")


def _instance_width(rows: list[dict[str, Any]]) -> int:
    """The instance column's width; 0 (no column) when every row is for every instance."""
    names = [_instance(row) for row in rows]
    return max(map(len, names)) if any(name != "*" for name in names) else 0


def _instance_cell(row: dict[str, Any], width: int) -> str:
    return f"{_instance(row):{width}} " if width else ""


def _request_ref(r: dict[str, Any]) -> str:
    """"request r-…", naming the instance when it is one."""
    return f"request {r['id']}" + (f" on {_instance(r)}" if _instance(r) != "*" else "")


def _ended(row: dict[str, Any]) -> str:
    """How it ended: "revoked 2026-…T15:20:00+01:00 by ada: done"."""
    text = f"{row['status']} {_when(row.get('status_at'))} by {row.get('status_by') or '?'}"
    return text + (f": {row['status_reason']}" if row.get("status_reason") else "")


def _request_state(r: dict[str, Any]) -> str:
    """The request's span for its status: what it asks for, until when it grants, or how it ended."""
    status = r["status"]
    if status == "pending":
        return f"until {_when(r['ends_at'])}" if r.get("ends_at") else f"for {format_duration(r['duration_s'])}"
    if status == "approved":
        return f"until {_when(r['access_until'])}"
    if status == "expired":
        if r.get("access_until"):
            return f"ended {_when(r['access_until'])}"
        return f"undecided, expired {_when(r.get('status_at'))}" if r.get("status_at") else "undecided"
    if status in ("revoked", "released"):
        return _ended(r)
    return f"by {r.get('status_by') or '?'}" + (f": {r['status_reason']}" if r.get("status_reason") else "")


def _break_glass(r: dict[str, Any]) -> str:
    """"break glass, review pending" / "break glass, reviewed by olga" / "break glass, denied in
    review by olga" for an on-call person's request; "" for any other."""
    review = str(r.get("review") or "")
    if not r.get("break_glass") or not review:
        return ""
    if review.startswith("approved by "):
        return f"break glass, reviewed by {review.removeprefix('approved by ')}"
    if review.startswith("denied by "):
        return f"break glass, denied in review by {review.removeprefix('denied by ')}"
    return f"break glass, review {review}"


def _request_line(r: dict[str, Any], width: int = 0) -> str:
    """One request; a pending one with how far it has got (its approval policy's progress)."""
    progress = f" ({r['progress']})" if r.get("progress") else ""
    if _break_glass(r):
        progress += f" [{_break_glass(r)}]"
    return (f"{r['id']}  {r['status']:9} {r['requester']:16} {_instance_cell(r, width)}{r['environment']:6} "
            f"{request_objects(r['db'], r['tables'])} {','.join(r['privileges'])} {_request_state(r)}{progress}"
            f"  — {r['reason'][:60]}")


def _grant_state(g: dict[str, Any]) -> str:
    if g.get("status", "active") == "active":
        return f"active until {_when(g['expires_at'])}" if g.get("expires_at") else "active, no expiry"
    if g["status"] == "expired":
        return f"expired {_when(g['expires_at'])}"
    return _ended(g)


def _with_instance(body: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    # Only when given: the server picks the only instance, or says which ones there are.
    return {**body, "instance": args.instance} if args.instance else body


def cmd_request_create(args: argparse.Namespace) -> int:
    body = _with_instance({"db": args.db, "tables": args.table, "privileges": args.privilege or ["SELECT"],
                           "reason": args.reason, **_span(args)}, args)
    if args.break_glass:
        body["break_glass"] = True
    r = _call(args, "POST", "/v1/requests", json=body)
    if args.quiet:  # the id alone, for a shell variable: REQ=$(jitproxy request create ... --quiet)
        print(r["id"])
        return 0
    text = f"{_request_ref(r)}: {r['status']}"
    what = f"{','.join(r['privileges'])} on {request_objects(r['db'], r['tables'])}"
    if r.get("existing"):
        text += (f" ({what} {_request_state(r)}): you asked for this already at {_when(r['created_at'])}; nothing "
                 f"new was made. To ask differently, cancel it first: jitproxy request cancel {r['id']}")
    elif r["status"] == "approved" and _break_glass(r):
        reviewers = ", ".join(r.get("reviewers") or ()) or "admins"
        text += (f" — {_break_glass(r)} (access until {_when(r['access_until'])}; your next statement can use it)\n"
                 f"audited and notified; a reviewer ({reviewers}) keeps it with jitproxy request approve {r['id']} or "
                 f"revokes it with jitproxy request deny {r['id']} --comment '...'")
    elif r["status"] == "approved":
        text += f" (access until {_when(r['access_until'])}; your next statement can use it)"
    else:
        span = _request_state(r) + ("" if r.get("ends_at") else " once approved")
        text += f" ({what} {span})\nan approver runs: jitproxy request approve {r['id']}"
    return _print(args, r, text)


def cmd_request_list(args: argparse.Namespace) -> int:
    params = {"mine": "true"} if args.mine else {}
    if args.status:
        params["status"] = args.status
    found = _call(args, "GET", "/v1/requests", params=params)
    width = _instance_width(found)
    return _print(args, found, "\n".join(_request_line(r, width) for r in found) or "no requests")


def cmd_request_show(args: argparse.Namespace) -> int:
    r = _call(args, "GET", f"/v1/requests/{args.id}")
    lines = [_request_line(r, _instance_width([r]))]
    for a in r["approvals"]:
        lines.append(f"  {a['decision']:7} by {a['approver']} at {_when(a['at'])}"
                     + (f": {a['comment']}" if a["comment"] else ""))
    for g in r.get("grants", ()):
        lines.append(f"  grant {g['grant_id']} {g['object']}: {_grant_state(g)}")
    if r["grant_ids"] and "grants" not in r:  # a server that does not say how its grants stand
        lines.append(f"  grants: {', '.join(r['grant_ids'])}")
    return _print(args, r, "\n".join(lines))


def _decide(args: argparse.Namespace, verb: str) -> int:
    r = _call(args, "POST", f"/v1/requests/{args.id}/{verb}", json={"comment": args.comment or ""})
    text = f"{_request_ref(r)}: {r['status']}" + (f" — {_break_glass(r)}" if _break_glass(r) else "")
    return _print(args, r, text + (f" ({r['progress']})" if r.get("progress") else ""))


def cmd_request_approve(args: argparse.Namespace) -> int:
    return _decide(args, "approve")


def cmd_request_deny(args: argparse.Namespace) -> int:
    return _decide(args, "deny")


def cmd_request_cancel(args: argparse.Namespace) -> int:
    r = _call(args, "POST", f"/v1/requests/{args.id}/cancel")
    return _print(args, r, f"{_request_ref(r)}: {r['status']}")


def cmd_request_release(args: argparse.Namespace) -> int:
    r = _call(args, "POST", f"/v1/requests/{args.id}/release", json={"reason": args.reason or ""})
    return _print(args, r, f"{_request_ref(r)}: {_request_state(r)}")


def _grant_source(g: dict[str, Any]) -> str:
    """Where the grant comes from; from a server that does not say: who made it."""
    if g.get("source"):
        return str(g["source"])
    return f"by {g['created_by']}" + (f" (request {g['request_id']})" if g.get("request_id") else "")


def _grant_line(g: dict[str, Any], width: int = 0) -> str:
    if g.get("status", "active") == "active":
        state = "until " + (_when(g["expires_at"]) if g.get("expires_at") else "no expiry")
    else:  # a grant just revoked says so, not the end it no longer has
        state = _grant_state(g)
    return (f"{g.get('grant_id') or 'policy':14}  {g['subject']:24} {_instance_cell(g, width)}"
            f"{g['object']:30} {','.join(g['privileges']):20} {state}  {_grant_source(g)}")


def _grant_lines(grants: list[dict[str, Any]], prefix: str = "") -> list[str]:
    width = _instance_width(grants)
    return [prefix + _grant_line(g, width) for g in grants]


def cmd_grant_add(args: argparse.Namespace) -> int:
    subject = f"user:{args.user}" if args.user else f"group:{args.group}"
    body = _with_instance({"subject": subject, "objects": args.grant, "privileges": args.privilege or ["SELECT"],
                           "reason": args.reason or "", "break_glass": args.break_glass, **_span(args)}, args)
    grants = _call(args, "POST", "/v1/grants", json=body)
    return _print(args, grants, "\n".join(_grant_lines(grants, "granted ")))


def cmd_grant_list(args: argparse.Namespace) -> int:
    grants = _call(args, "GET", "/v1/grants", params={"all": "true"} if args.all else {})
    return _print(args, grants, "\n".join(_grant_lines(grants)) or "no grants")


def cmd_grant_revoke(args: argparse.Namespace) -> int:
    """End a grant now (g-…), or every grant in effect of a request (r-…): an admin ending a
    person's request early should not have to look its grants up first."""
    params = {"reason": args.reason} if args.reason else {}
    if not args.id.startswith("r-"):
        g = _call(args, "DELETE", f"/v1/grants/{args.id}", params=params)
        return _print(args, g, "\n".join(_grant_lines([g], "revoked ")))
    ended = [_call(args, "DELETE", f"/v1/grants/{grant_id}", params=params)
             for grant_id in _grants_in_effect(args, args.id)]
    return _print(args, ended, "\n".join(_grant_lines(ended, "revoked ")))


def _grants_in_effect(args: argparse.Namespace, request_id: str) -> list[str]:
    """The ids of a request's grants still active; refused when there is none, with why."""
    r = _call(args, "GET", f"/v1/requests/{request_id}")
    if "grants" in r:
        ids = [g["grant_id"] for g in r["grants"] if g.get("status", "active") == "active"]
    else:  # a server that does not say how each grant stands
        ids = list(r.get("grant_ids") or ())
    if not ids:
        raise ApiError(f"{_request_ref(r)} is {r['status']}: no grant of it is in effect, nothing to revoke")
    return ids


def cmd_access(args: argparse.Namespace) -> int:
    held = _call(args, "GET", "/v1/access")
    return _print(args, held, "\n".join(_access_lines(held)) or "no access")


def _access_lines(held: list[dict[str, Any]]) -> list[str]:
    """One line per grant in effect: object, privileges, until when, where it comes from."""
    width = _instance_width(held)
    return [
        f"{_instance_cell(h, width)}{h['object']:30} {','.join(h['privileges']):30} "
        f"until {_when(h['expires_at']) if h['expires_at'] else 'no expiry':26} {h['source']}"
        for h in held
    ]


def cmd_access_release(args: argparse.Namespace) -> int:
    """Give back early what you hold: the grants or requests named, or with --all every grant
    made for you alone (policy-file and group grants are not one person's to give back)."""
    if bool(args.ids) == bool(args.all):
        raise ApiError("name what to give back (grant g-… or request r-… ids, see jitproxy access) or --all")
    ids = args.ids or [h["grant_id"] for h in _call(args, "GET", "/v1/access")
                       if h.get("grant_id") and str(h["subject"]).startswith("user:")]
    done = []
    for ident in ids:
        kind = "requests" if ident.startswith("r-") else "grants"
        done.append(_call(args, "POST", f"/v1/{kind}/{ident}/release", json={"reason": args.reason or ""}))
    lines = [f"{_request_ref(d)}: {_request_state(d)}" if "requester" in d
             else f"grant {d['grant_id']} {d['object']}: {_grant_state(d)}" for d in done]
    return _print(args, done, "\n".join(lines) or "nothing to give back: what you hold comes from the policy files "
                                                 "or a group (jitproxy access)")


def cmd_whoami(args: argparse.Namespace) -> int:
    """Who the token says you are, until when, and the access you hold now (as `jitproxy access`)."""
    me = _call(args, "GET", "/v1/whoami")
    held = _call(args, "GET", "/v1/access")
    groups = ", ".join(me["groups"]) or "none"
    text = f"{me['user']} (groups: {groups}; admin: {'yes' if me['admin'] else 'no'}) at {_api_url(args)}"
    if me.get("token_expires_at"):
        text += f"\ntoken until {_when(me['token_expires_at'])}"
    text += "\naccess:" + ("\n  " + "\n  ".join(_access_lines(held)) if held else " none")
    return _print(args, {**me, "access": held}, text)


# -- audit -----------------------------------------------------------------------------------------


def _json_line(event: dict[str, Any]) -> str:
    # Compact and non-ASCII kept: an event the proxy stored comes out as the line it wrote.
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def _local_time(text: Any) -> str:
    """An event's time in the local zone, short ("11-21 17:25:53"); as given if unreadable."""
    try:
        return datetime.fromisoformat(str(text)).astimezone().strftime("%m-%d %H:%M:%S")
    except ValueError:
        return str(text)[:14]


def _one_line(text: Any, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def _what(e: dict[str, Any]) -> str:
    """What the event is about, for the table's last wide column."""
    if e.get("statement"):
        return str(e["statement"])
    kind = str(e.get("type", ""))
    if kind.startswith("request."):
        objects = request_objects(str(e.get("db")), [str(t) for t in e.get("tables") or ()])
        return f"{e.get('id')} {objects} {','.join(map(str, e.get('privileges') or ()))}"
    if kind.startswith("grant."):
        return f"{e.get('grant_id')} {e.get('subject')} {e.get('object')} {','.join(map(str, e.get('privileges') or ()))}"
    if kind == "admin.api_call":
        return f"{e.get('method')} {e.get('path')} -> {e.get('status')}"
    if kind == "statement.failed":  # the result of an allowed statement, joined by statement_id
        return f"[{e.get('statement_id')}] {e.get('error') or 'failed'}"
    if kind.startswith("statement."):
        counts = [f"{key}={e[field]}" for key, field in (("rows", "rows"), ("affected", "affected_rows"))
                  if e.get(field) is not None]
        return f"[{e.get('statement_id')}] {' '.join(counts)}".rstrip()
    if kind.startswith("session."):
        return f"{e.get('client_program') or '?'} from {e.get('client_addr') or '?'}"
    return str(e.get("reason") or e.get("error") or "")


def _code(e: dict[str, Any]) -> str:
    if e.get("reason_code"):
        return str(e["reason_code"])
    if e.get("error_code") is not None:
        return str(e["error_code"])
    return ""


def _audit_table(events: list[dict[str, Any]]) -> str:
    columns = ("TIME", "USER", "INSTANCE", "TYPE", "DECISION", "WHAT", "REASON/ERROR")
    rows = [(_local_time(e.get("time")), _one_line(e.get("user") or "-", 16), _one_line(e.get("instance") or "-", 14),
             str(e.get("type", "?")), str(e.get("decision") or "-"), _one_line(_what(e), 60), _code(e))
            for e in events]
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns) - 1)]
    return "\n".join(
        ("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]).rstrip()
        for row in [columns, *rows]
    )


def cmd_audit_search(args: argparse.Namespace) -> int:
    now = datetime.now().astimezone()
    try:
        # Checked here first (clear errors before any network); a time without a zone is yours.
        q = build_query(now=now, user=args.user, since=args.since, until=args.until, table=args.table,
                        decision=args.decision, type=args.type, instance=args.instance, session_id=args.session,
                        proxy_instance=args.proxy_instance, limit=args.limit, oldest_first=args.oldest_first,
                        naive_tz=now.tzinfo or UTC)
    except SearchError as e:
        raise ApiError(f"jitproxy audit search: {e}") from None
    params: dict[str, Any] = {"limit": q.limit}
    for key, value in (("user", q.user), ("table", q.table), ("decision", q.decision), ("type", q.type),
                       ("instance", q.instance), ("session_id", q.session_id), ("proxy_instance", q.proxy_instance),
                       ("since", q.since.isoformat() if q.since else None),
                       ("until", q.until.isoformat() if q.until else None)):
        if value is not None:
            params[key] = value
    if q.oldest_first:
        params["oldest_first"] = "true"
    events = _call(args, "GET", "/v1/audit", params=params)["events"]
    fmt = "jsonl" if args.json else args.format
    if fmt != "table":
        from proxy.audit.export import render

        sys.stdout.write(render(events, fmt))
    else:
        print(_audit_table(events) if events else "no events")
    if len(events) >= q.limit:  # on stderr: an export cut at --limit must not look complete
        print(f"({len(events)} events shown; more may match: narrow with --since/--until or raise --limit)",
              file=sys.stderr)
    return 0


def cmd_audit_chain(args: argparse.Namespace) -> int:
    """Every event of the chain (paged), as JSON lines."""
    after = args.after_seq
    while True:
        page = _call(args, "GET", "/v1/audit/chain",
                     params={"proxy_instance": args.proxy_instance, "after_seq": after, "limit": args.page_size})
        events = page["events"]
        for event in events:
            print(_json_line(event))
        if len(events) < args.page_size or not isinstance(events[-1].get("seq"), int):
            return 0
        after = events[-1]["seq"]


def check_through_api(args: argparse.Namespace) -> dict[str, Any]:
    """`jitproxy check` asked of the proxy (POST /v1/check): your own statement with your
    token's groups; admins may name someone else (--user, --group). The report of
    proxy.workflow.check."""
    body: dict[str, Any] = _with_instance({"sql": args.sql, "db": args.db}, args)
    if args.at:
        body["at"] = local_moment(args.at, "--at").isoformat()
    if args.user:
        body.update(user=args.user, groups=args.group or [])
    elif args.group:
        raise ApiError("jitproxy check: --group goes with --user (your own groups come from your token)")
    return _call(args, "POST", "/v1/check", json=body)


def add_client_arguments(sp: argparse.ArgumentParser, json_help: str = "machine-readable output") -> argparse.ArgumentParser:
    """Where the admin API is, who asks, and how to show its answer."""
    sp.add_argument("--api", help="API URL (default: $JITPROXY_API or https://127.0.0.1:8443)")
    sp.add_argument("--token-file", help="file holding your token (default: $JITPROXY_TOKEN, else jitproxy login's)")
    sp.add_argument("--ca", help="CA bundle for the API's certificate (default: $JITPROXY_CA)")
    sp.add_argument("--json", action="store_true", help=json_help)
    return sp


def add_commands(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """Add request, grant, access, whoami and audit (search, chain); returns the `audit`
    subcommands, so more can be added to them (verify)."""
    client = add_client_arguments

    def span(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("--for", dest="duration", help=f"how long{what}: 30s, 15m, 4h, 1d, 1h30m (a unit is required)")
        sp.add_argument("--until", help="the exact end, however late the approval: 14:50 (today, or tomorrow when "
                                        "passed), 2026-11-21T18:00 (your local zone) or 2026-11-21T18:00:00Z")

    def reason(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--reason", help="why it ends early (kept in the audit trail)")

    rq = sub.add_parser("request", help="ask for access, and decide requests").add_subparsers(
        dest="request_command", required=True)
    s = client(rq.add_parser("create", help="ask for access to tables for a while"))
    s.add_argument("--instance", metavar="NAME",
                   help="the upstream instance (e.g. hr-prod); needed when the proxy has several")
    s.add_argument("--db", required=True)
    s.add_argument("--table", action="append", required=True, help="table name (repeatable)")
    s.add_argument("--privilege", action="append", help="SELECT (default), INSERT, UPDATE, ... (repeatable)")
    span(s, " once approved")
    s.add_argument("--reason", required=True, help="incident or ticket, and what for (at least 3 characters)")
    s.add_argument("--break-glass", action="store_true",
                   help="on call, in an emergency: granted at once where a break-glass policy names you (its "
                        "privileges, its maximum duration); audited, notified, and reviewed after the fact")
    s.add_argument("-q", "--quiet", action="store_true",
                   help="print the request's id only (for scripts: REQ=$(jitproxy request create ... --quiet))")
    s.set_defaults(func=cmd_request_create)
    s = client(rq.add_parser("list", help="requests you made or may decide"))
    s.add_argument("--status", choices=REQUEST_STATUSES)
    s.add_argument("--mine", action="store_true")
    s.set_defaults(func=cmd_request_list)
    for name, func, help_text in (("show", cmd_request_show, "one request, its approvals and its grants"),
                                  ("approve", cmd_request_approve, "approve a request (break glass: review "
                                                                   "it, keeping it)"),
                                  ("deny", cmd_request_deny, "deny a request (break glass: revoke it in "
                                                             "review)"),
                                  ("cancel", cmd_request_cancel, "cancel your pending request"),
                                  ("release", cmd_request_release, "give back your approved request's access early")):
        s = client(rq.add_parser(name, help=help_text))
        s.add_argument("id")
        if name in ("approve", "deny"):
            s.add_argument("--comment")
        if name == "release":
            reason(s)
        s.set_defaults(func=func)

    gr = sub.add_parser("grant", help="direct grants (admins)").add_subparsers(dest="grant_command", required=True)
    s = client(gr.add_parser("add", help="grant access for a while"))
    who = s.add_mutually_exclusive_group(required=True)
    who.add_argument("--user")
    who.add_argument("--group")
    s.add_argument("--instance", metavar="NAME",
                   help="the upstream instance the grants apply on; needed when the proxy has several")
    s.add_argument("--grant", action="append", required=True, help="db.table or db.* (repeatable)")
    s.add_argument("--privilege", action="append", help="SELECT (default), INSERT, ... (repeatable)")
    span(s, "")
    s.add_argument("--reason")
    s.add_argument("--break-glass", action="store_true",
                   help="longer than the environment's maximum, for an emergency: needs --reason; audited and "
                        "notified")
    s.set_defaults(func=cmd_grant_add)
    s = client(gr.add_parser("list", help="grants in effect, with their source (yours; admins: --all)"))
    s.add_argument("--all", action="store_true")
    s.set_defaults(func=cmd_grant_list)
    s = client(gr.add_parser("revoke", help="end a grant now (every replica, next statement)"))
    s.add_argument("id", help="g-… (a grant) or r-… (every grant in effect of that request)")
    reason(s)
    s.set_defaults(func=cmd_grant_revoke)

    s = client(sub.add_parser("access", help="what you may access now, until when, and from where"))
    s.set_defaults(func=cmd_access)
    s = client(s.add_subparsers(dest="access_command").add_parser(
        "release", help="give back access early: grant or request ids, or --all"))
    s.add_argument("ids", nargs="*", metavar="ID", help="g-… (a grant) or r-… (a request)")
    s.add_argument("--all", action="store_true", help="every grant made for you alone")
    reason(s)
    s.set_defaults(func=cmd_access_release)

    s = client(sub.add_parser("whoami", help="who your token says you are, whether you are an admin, until "
                                              "when, and the access you hold"))
    s.set_defaults(func=cmd_whoami)

    au = sub.add_parser("audit", help="the audit trail (admins and auditors)").add_subparsers(
        dest="audit_command", required=True)
    s = client(au.add_parser("search", help="find audit events (newest first)",
                             description="Filters combine; times are yours (local) unless they name a zone."),
               json_help="JSON lines, one event per line, as written (for a SIEM, jq)")
    s.add_argument("--user", help="the person")
    s.add_argument("--since", help="from: 1h, 30m, 2d (ago), or a time (2026-11-21T08:00, 2026-11-21T08:00:00Z)")
    s.add_argument("--until", help="before: same forms as --since")
    s.add_argument("--table", help="db.table (or db.*): statements, requests and grants naming it")
    s.add_argument("--decision", choices=["allow", "deny"])
    s.add_argument("--type", help="an event type (statement.denied) or a prefix (statement.)")
    s.add_argument("--instance", metavar="NAME", help="the upstream instance")
    s.add_argument("--session", metavar="SESSION_ID", help="one client session")
    s.add_argument("--proxy-instance", metavar="HOST:PID", help="one proxy process")
    s.add_argument("--limit", type=int, default=100, help="at most this many events (1..10000, default 100)")
    s.add_argument("--oldest-first", action="store_true")
    s.add_argument("--format", choices=["table", "csv", "json", "jsonl"], default="table",
                   help="table (default); csv (fixed columns, for a spreadsheet); json (one array); "
                        "jsonl (one event per line as written, like --json)")
    s.set_defaults(func=cmd_audit_search)
    s = client(au.add_parser("chain", help="one proxy process's events in seq order, as JSON lines",
                             description="For verification: jitproxy audit chain --proxy-instance H:P | "
                                         "jitproxy audit verify -"),
               json_help="(the default: the output is always JSON lines)")
    s.add_argument("--proxy-instance", required=True, metavar="HOST:PID",
                   help="the proxy process (the proxy_instance of its events)")
    s.add_argument("--after-seq", type=int, default=0, help="start after this seq (default: from the first)")
    s.add_argument("--page-size", type=int, default=10_000, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_audit_chain)
    return au


