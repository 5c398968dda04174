"""Filter the rows of a small text result set by its first column (SHOW DATABASES / SHOW TABLES),
so a person sees the names of what they are granted and nothing else."""

from __future__ import annotations

from collections.abc import Callable

from proxy.mysql.wire import read_lenenc


def filter_rows_by_first_column(
    payloads: list[bytes], deprecate_eof: bool, keep: Callable[[str], bool]
) -> tuple[list[bytes], int]:
    """A whole response as payloads → (payloads with unwanted rows removed, rows kept).
    An OK or ERR response is returned unchanged."""
    first = payloads[0]
    if first[:1] in (b"\x00", b"\xff"):
        return payloads, 0
    ncols, _ = read_lenenc(first, 0)
    head = 1 + ncols + (0 if deprecate_eof else 1)
    out = payloads[:head]
    kept = 0
    for row in payloads[head:-1]:
        if row[:1] == b"\xfb":  # NULL name: nothing to show
            continue
        length, pos = read_lenenc(row, 0)
        name = row[pos : pos + length].decode("utf-8", "replace")
        if keep(name):
            out.append(row)
            kept += 1
    out.append(payloads[-1])
    return out, kept


def first_column_values(payloads: list[bytes], deprecate_eof: bool) -> list[str | None]:
    """The first column of every row of a whole text result (the proxy's own small queries)."""
    return [row[0] for row in text_rows(payloads, deprecate_eof)]


def text_rows(payloads: list[bytes], deprecate_eof: bool) -> list[tuple[str | None, ...]]:
    """Every row of a whole text result, each value decoded as UTF-8 (None: NULL); the proxy's
    own small queries."""
    first = payloads[0]
    if first[:1] in (b"\x00", b"\xff"):
        return []
    ncols, _ = read_lenenc(first, 0)
    head = 1 + ncols + (0 if deprecate_eof else 1)
    rows: list[tuple[str | None, ...]] = []
    for row in payloads[head:-1]:
        values: list[str | None] = []
        pos = 0
        for _ in range(ncols):
            if row[pos : pos + 1] == b"\xfb":
                values.append(None)
                pos += 1
                continue
            length, pos = read_lenenc(row, pos)
            values.append(row[pos : pos + length].decode("utf-8", "replace"))
            pos += length
        rows.append(tuple(values))
    return rows
