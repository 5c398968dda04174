"""Audit events exported for people and other tools: `jitproxy audit search --format csv|json|jsonl`.

- jsonl: one event per line exactly as the proxy wrote it (a SIEM, jq, `audit verify`);
- json: one JSON array of those events (tools that read one document);
- csv: one row per event, the fields people filter and sort on in a spreadsheet, in fixed
  columns (`CSV_COLUMNS`), so exports of different searches line up. Lists are joined with
  spaces, nested values are JSON. The whole event stays available in jsonl: CSV is a view.

CSV cells are made safe to open in a spreadsheet: a statement, a reason or a name is text the
person being audited chose, and one starting with `=`, `+`, `-`, `@` (or a tab or carriage
return) would run as a formula (CSV injection). Such a cell gets a leading `'`, which
spreadsheets show as text; numbers stay numbers.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["CSV_COLUMNS", "FORMATS", "render"]

FORMATS = ("table", "csv", "json", "jsonl")

CSV_COLUMNS = (
    "time", "type", "user", "groups", "instance", "environment", "decision", "reason_code", "statement",
    "tables", "privileges", "rows", "affected_rows", "error_code", "error", "reason", "request_id", "grant_id",
    "object", "subject", "actor", "status", "session_id", "statement_id", "client_addr", "client_program",
    "proxy_instance", "seq", "event_id",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def render(events: list[dict[str, Any]], fmt: str) -> str:
    """`events` as text in `fmt` (csv, json or jsonl; the table is the CLI's own)."""
    if fmt == "jsonl":
        return "".join(json_line(e) + "\n" for e in events)
    if fmt == "json":
        return json.dumps(events, ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        return csv_text(events)
    raise ValueError(f"unknown export format {fmt!r}; one of csv, json, jsonl")


def json_line(event: Mapping[str, Any]) -> str:
    # Compact and non-ASCII kept: an event the proxy wrote comes out as the line it wrote.
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def csv_text(events: Iterable[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for event in events:
        writer.writerow([_cell(_field(event, column)) for column in CSV_COLUMNS])
    return out.getvalue()


def _field(event: Mapping[str, Any], column: str) -> Any:
    """The column's value: the event's field, except request_id, which request events call `id`."""
    if column == "request_id" and event.get("request_id") is None and str(event.get("type", "")).startswith("request."):
        return event.get("id")
    return event.get(column)


def _cell(value: Any) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)):
        text = " ".join(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value)
    elif isinstance(value, Mapping):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text
