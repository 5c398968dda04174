"""The parameters of a COM_STMT_EXECUTE, decoded for the audit trail.

The proxy relays COM_STMT_EXECUTE to the database unchanged; this module only reads a copy of
it, so investigators see `SELECT * FROM employee WHERE id = ?` executed with `[42]`. It runs
on bytes a client chose, so it is pure and defensive: it never raises (the server, which gets
the packet as it is, decides whether it is valid; the audit trail gets what could be read),
every loop is bounded by `max_params`, nothing is allocated in proportion to a length the
packet claims, only to the packet itself, and the work per packet is bounded (below).

Layout read (classic, without CLIENT_QUERY_ATTRIBUTES, which the proxy never offers), after the
command byte::

    stmt_id(4) flags(1) iteration_count(4)
    if param_count > 0:
        NULL bitmap ((param_count + 7) // 8 bytes)
        new_params_bound_flag(1)
        if new_params_bound_flag: param_count x (type(1), flags(1))   # flags 0x80: unsigned
        the non-NULL values, in the binary protocol encodings

Like the server (MariaDB's mysqld_stmt_execute and MySQL's), the iteration count and the
cursor flags do not change that layout: MariaDB reads parameter indicators only in
COM_STMT_BULK_EXECUTE, never here. So they are not reasons to give up, which would let a client
hide its parameters from the audit trail by setting them.

The types in effect are returned as 16-bit codes, `type | flags << 8` (how the server reads the
pair), e.g. 0x8008 for an unsigned LONGLONG; the caller keeps them per statement and passes them
back as `previous_types` for the executes that do not send types again.

Values: None (NULL), int, float (finite; NaN and infinities as the strings "NaN", "Infinity",
"-Infinity" so the JSON stays valid) or str. Decimals are their text, dates and times ISO-like
strings, text is UTF-8 with replacement characters, BLOBs that are not valid UTF-8 (and GEOMETRY
and BIT, which never are text) are "0x<hex>". A str longer than `max_value_chars` is cut and
suffixed with "…(N chars)", N being the length of the whole rendering.

Bounded work: it runs on the event loop (the fast path decodes inline), and decoding bytes that
are not UTF-8 costs ~8 ns a byte, so a 64 MiB packet of them would stall every session for half
a second. So the values of one packet are decoded whole up to DECODED_BYTES_PER_PACKET bytes in
all; past that budget a value is rendered from its first bytes only (enough for
`max_value_chars`): exactly as above when it is ASCII or hex (their length is known without
decoding them), else suffixed with "…(N bytes)", N being its size.

Markers: UNKNOWN ("<unknown>") stands for each non-NULL value when the packet sends no types and
none were remembered; UNDECODABLE ("<undecodable>") follows the values decoded before anything
unexpected (a truncated packet, an unknown type, a bad length, bytes left over, a type list of
the wrong length, more than `max_params` parameters).

Not visible in the packet: a parameter whose value was sent with COM_STMT_SEND_LONG_DATA has no
bytes here, so the values after it are misread (usually ending in UNDECODABLE).
"""

from __future__ import annotations

import codecs
import math
import struct
from collections.abc import Callable
from typing import Any

from pymysql.constants import FIELD_TYPE

from proxy.mysql import wire

__all__ = ["UNDECODABLE", "UNKNOWN", "decode_execute_params"]

UNDECODABLE = "<undecodable>"
UNKNOWN = "<unknown>"
DECODED_BYTES_PER_PACKET = 1 << 20  # values decoded whole, in all (see the module docstring)

UNSIGNED_FLAG = 0x80
_HEADER = 9  # stmt_id(4) flags(1) iteration_count(4)


class _Undecodable(Exception):
    """Something unexpected: stop and mark the rest."""


class _Reader:
    """Bounds-checked reads over the payload; any overrun is _Undecodable."""

    __slots__ = ("data", "pos", "budget")

    def __init__(self, data: bytes, pos: int, budget: int) -> None:
        self.data = data
        self.pos = pos
        self.budget = budget  # bytes that may still be decoded whole

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise _Undecodable
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Undecodable
        self.pos += 1
        return self.data[self.pos - 1]

    def unpack(self, fmt: struct.Struct) -> Any:
        return fmt.unpack(self.take(fmt.size))[0]

    def lenenc(self) -> int:
        """A length-encoded integer: wire.read_lenenc refuses a truncated one and the prefixes
        that are not lengths (0xFB NULL, 0xFF) with ValueError."""
        try:
            value, self.pos = wire.read_lenenc(self.data, self.pos)
        except ValueError:
            raise _Undecodable from None
        return value

    def lenenc_bytes(self) -> bytes:
        """The bytes a length prefix announces: all of them in the packet, or _Undecodable
        (a length up to 2**64 allocates nothing: take() checks it against the packet first)."""
        return self.take(self.lenenc())

    def value(self, limit: int) -> tuple[bytes, int, bool]:
        """A length-prefixed value to render in `limit` characters → (bytes, size, ascii). The
        bytes are all of it while the packet's budget lasts; past it, only the first ones that
        can hold `limit` characters (UTF-8: at most 4 bytes each), and `ascii` tells whether the
        whole value is ASCII (checked at memory speed): then its length in characters is `size`."""
        size = self.lenenc()
        start, end = self.pos, self.pos + size
        if end > len(self.data):
            raise _Undecodable
        self.pos = end
        head = 4 * max(limit, 0) + 4
        if size <= head or size <= self.budget:  # (a value that short costs nothing to decode)
            self.budget -= min(size, self.budget)
            return self.data[start:end], size, False
        return self.data[start : start + head], size, self.data[start:end].isascii()


def _cut(text: str, limit: int, total: int | None = None) -> str:
    """`text` (the start of a rendering `total` characters long) cut to `limit` characters."""
    total = len(text) if total is None else total
    if total <= limit:
        return text
    return f"{text[:max(limit, 0)]}…({total} chars)"


def _hex(raw: bytes, limit: int, size: int | None = None) -> str:
    """`raw` (or the first bytes of a value `size` bytes long) as 0x<hex>, cut to `limit`."""
    total = 2 + 2 * (len(raw) if size is None else size)
    return _cut("0x" + raw[: max(limit, 0) // 2 + 1].hex(), limit, total)


def _head(raw: bytes, limit: int, size: int, ascii: bool) -> str:
    """The first `limit` characters of a text value `size` bytes long of which `raw` is only the
    first bytes: cut as a whole one would be when it is ASCII, else with its size in bytes."""
    if ascii:
        return _cut(raw.decode("ascii"), limit, size)
    return f"{raw.decode('utf-8', 'replace')[: max(limit, 0)]}…({size} bytes)"


# -- the decoders, one per type family: (reader, unsigned, type, max_value_chars) -> value --------

_INTS: dict[int, tuple[struct.Struct, struct.Struct]] = {
    FIELD_TYPE.TINY: (struct.Struct("<b"), struct.Struct("<B")),
    FIELD_TYPE.SHORT: (struct.Struct("<h"), struct.Struct("<H")),
    FIELD_TYPE.YEAR: (struct.Struct("<h"), struct.Struct("<H")),
    FIELD_TYPE.LONG: (struct.Struct("<i"), struct.Struct("<I")),
    FIELD_TYPE.INT24: (struct.Struct("<i"), struct.Struct("<I")),  # 4 bytes on the wire
    FIELD_TYPE.LONGLONG: (struct.Struct("<q"), struct.Struct("<Q")),
}
_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")

_TEXT = frozenset({
    FIELD_TYPE.VARCHAR, FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING, FIELD_TYPE.ENUM, FIELD_TYPE.SET,
    FIELD_TYPE.JSON, FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL,
})
_BLOBS = frozenset({FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB, FIELD_TYPE.LONG_BLOB, FIELD_TYPE.BLOB})
_NEVER_TEXT = frozenset({FIELD_TYPE.GEOMETRY, FIELD_TYPE.BIT})
_DATES = frozenset({FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE})
_DATETIMES = frozenset({FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP})


def _integer(r: _Reader, unsigned: bool, ftype: int, limit: int) -> Any:
    signed_fmt, unsigned_fmt = _INTS[ftype]
    return r.unpack(unsigned_fmt if unsigned else signed_fmt)


def _finite(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _float(r: _Reader, unsigned: bool, ftype: int, limit: int) -> Any:
    raw = r.take(4)
    value = _FLOAT.unpack(raw)[0]
    if math.isfinite(value):  # the shortest decimal that is this float32 (1.1, not 1.100000023841858)
        for digits in range(1, 10):
            short = float(f"{value:.{digits}g}")
            try:
                if _FLOAT.pack(short) == raw:
                    return short
            except OverflowError:  # rounded up past the largest float32
                continue
    return _finite(value)


def _double(r: _Reader, unsigned: bool, ftype: int, limit: int) -> Any:
    return _finite(r.unpack(_DOUBLE))


def _text(r: _Reader, unsigned: bool, ftype: int, limit: int) -> Any:
    raw, size, ascii = r.value(limit)
    if len(raw) < size:
        return _head(raw, limit, size, ascii)
    return _cut(raw.decode("utf-8", "replace"), limit)


def _blob(r: _Reader, unsigned: bool, ftype: int, limit: int) -> Any:
    raw, size, ascii = r.value(limit)
    if ftype not in _NEVER_TEXT:
        try:
            if len(raw) < size:  # its first bytes: valid UTF-8 but for a character cut at the end
                codecs.getincrementaldecoder("utf-8")().decode(raw, final=False)
                return _head(raw, limit, size, ascii)
            return _cut(raw.decode("utf-8"), limit)
        except UnicodeDecodeError:
            pass
    return _hex(raw, limit, size)


def _datetime(r: _Reader, unsigned: bool, ftype: int, limit: int) -> Any:
    raw = r.lenenc_bytes()
    if len(raw) not in (0, 4, 7, 11):
        raise _Undecodable
    if not raw:
        return "0000-00-00" if ftype in _DATES else "0000-00-00 00:00:00"
    text = f"{_U16.unpack_from(raw)[0]:04d}-{raw[2]:02d}-{raw[3]:02d}"
    if len(raw) >= 7:
        text += f" {raw[4]:02d}:{raw[5]:02d}:{raw[6]:02d}"
    if len(raw) == 11:
        text += f".{_U32.unpack_from(raw, 7)[0]:06d}"
    return _cut(text, limit)


def _time(r: _Reader, unsigned: bool, ftype: int, limit: int) -> Any:
    raw = r.lenenc_bytes()
    if len(raw) not in (0, 8, 12):
        raise _Undecodable
    if not raw:
        return "00:00:00"
    days = _U32.unpack_from(raw, 1)[0]
    text = ("-" if raw[0] else "") + (f"{days} " if days else "") + f"{raw[5]:02d}:{raw[6]:02d}:{raw[7]:02d}"
    if len(raw) == 12:
        text += f".{_U32.unpack_from(raw, 8)[0]:06d}"
    return _cut(text, limit)


_Decoder = Callable[[_Reader, bool, int, int], Any]
_DECODERS: dict[int, _Decoder] = {
    **{t: _integer for t in _INTS},
    FIELD_TYPE.FLOAT: _float,
    FIELD_TYPE.DOUBLE: _double,
    **{t: _text for t in _TEXT},
    **{t: _blob for t in _BLOBS | _NEVER_TEXT},
    **{t: _datetime for t in _DATES | _DATETIMES},
    FIELD_TYPE.TIME: _time,
}


def decode_execute_params(
    payload: bytes,
    param_count: int,
    previous_types: tuple[int, ...] | None,
    *,
    max_value_chars: int = 256,
    max_params: int = 1000,
) -> tuple[list[Any], tuple[int, ...] | None]:
    """COM_STMT_EXECUTE `payload` (after the command byte) of a statement with `param_count`
    parameters → (values, the types in effect). Never raises; see the module's docstring."""
    values: list[Any] = []
    state = _State(previous_types)
    try:
        _decode(payload, param_count, state, values, max_value_chars, max_params)
    except _Undecodable:
        values.append(UNDECODABLE)
    except Exception:  # a safety net for the audit trail: nothing is expected to get this far
        values.append(UNDECODABLE)
    return values, state.types


class _State:
    __slots__ = ("types",)

    def __init__(self, types: tuple[int, ...] | None) -> None:
        self.types = types


def _decode(
    payload: bytes, param_count: int, state: _State, values: list[Any], max_value_chars: int, max_params: int
) -> None:
    """Appends to `values` and sets `state.types` (once the types sent are all read); raises
    _Undecodable, and nothing else, at the first thing unexpected."""
    if param_count == 0:
        return
    if param_count < 0 or param_count > max_params:
        raise _Undecodable
    data = payload if isinstance(payload, bytes) else bytes(payload)
    if len(data) < _HEADER:
        raise _Undecodable
    r = _Reader(data, _HEADER, DECODED_BYTES_PER_PACKET)
    null_bitmap = r.take((param_count + 7) // 8)
    if r.byte():  # new_params_bound_flag: like the server, any non-zero value means "types follow"
        sent = r.take(2 * param_count)
        state.types = tuple(_U16.unpack_from(sent, 2 * i)[0] for i in range(param_count))
    elif state.types is not None and len(state.types) != param_count:
        raise _Undecodable
    types = state.types
    for i in range(param_count):
        if null_bitmap[i >> 3] & (1 << (i & 7)):
            values.append(None)
        elif types is None:
            values.append(UNKNOWN)
        else:
            code = types[i]
            if not isinstance(code, int) or code == FIELD_TYPE.NULL:  # (a NULL type must be NULL in the bitmap)
                raise _Undecodable
            ftype, flags = code & 0xFF, code >> 8
            decoder = _DECODERS.get(ftype)
            if decoder is None or flags & ~UNSIGNED_FLAG:
                raise _Undecodable
            values.append(decoder(r, bool(flags & UNSIGNED_FLAG), ftype, max_value_chars))
    if types is not None and r.pos != len(data):  # bytes left over: something was misread
        raise _Undecodable
