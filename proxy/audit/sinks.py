"""Where audit events go, and the writer threads that take them there off the event loop.

A sink writes batches of sealed events (`Record`: the JSON line and the parsed event). Each
non-synchronous sink has its own `SinkWriter` thread and bounded queue: batches of up to 500
events, one write (and one fsync for files) per batch, so the cost per event falls as load
rises. A failed batch is kept and retried with backoff, in order, until the sink is back:
nothing is lost while the queue has room; past `max_queue` new events are dropped and counted.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

import structlog

log = structlog.get_logger("jitproxy.audit")

BATCH = 500
LINGER_S = 0.002  # how long a writer waits for more events before writing a batch
INLINE_SLOW_S = 0.001  # an inline write slower than this ...
INLINE_PAUSE_S = 10.0  # ... sends the next batches through the writer thread for this long


def _waits() -> int:
    """How often this thread has waited (its voluntary context switches; Linux), -1 elsewhere. A
    slow inline write that never waited was only preempted: the disk is not the problem."""
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw if _RUSAGE_THREAD is not None else -1


_RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)  # Linux only


_TRAIL_TYPES = ("audit.checkpoint", "audit.sealed")  # events.EventType.AUDIT_*


class Record(NamedTuple):  # a tuple: made for every event, cheaper than a frozen dataclass
    n: int  # the emitter's order of emission
    line: str  # the sealed JSON line (no newline)
    event: dict[str, Any]  # what `line` parses to
    durable: bool = False  # a fail_closed statement waits for it: write (and sync) it at once


class Sink(Protocol):
    name: str
    required: bool  # fail_closed statements wait until this sink has their event
    synchronous: bool  # written inside emit() (in-memory sinks only)

    def write_batch(self, records: list[Record]) -> None: ...

    def close(self) -> None: ...


class StreamSink:
    """JSON lines on a stream (stdout by default: what log shippers ingest)."""

    synchronous = False

    def __init__(self, stream: IO[str] | None = None, *, name: str = "stdout", required: bool = True) -> None:
        self._stream = stream
        self.name = name
        self.required = required

    def write_batch(self, records: list[Record]) -> None:
        stream = self._stream or sys.stdout
        stream.write("".join(r.line + "\n" for r in records))
        stream.flush()

    def close(self) -> None:
        stream = self._stream or sys.stdout
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed, or a pipe whose reader left: nothing more to do
            pass


def _ends_with_newline(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except OSError:
        return True  # unreadable (write-only permissions): leave it as it is


class FileSink:
    """JSON lines appended to a file (mode 0600), flushed per batch; synced (fdatasync) in the
    batch that carries an event a fail_closed statement waits for, else at least every
    `sync_interval_s` (best_effort events reach the disk within it; a crash of the process
    alone loses nothing once flushed). With
    `max_bytes`, the file rotates like logrotate's numbered scheme: path → path.1 → ... →
    path.<backups> (the oldest is removed). Rotation happens between batches, never inside one.
    (stdlib RotatingFileHandler swallows write errors, which fail_closed must see.)"""

    synchronous = False
    inline = True  # page-cache appends: cheap enough for the event loop (SinkWriter.put_many)

    def __init__(self, path: Path, *, max_bytes: int = 0, backups: int = 5, fsync: bool = True,
                 name: str | None = None, required: bool = True, sync_interval_s: float = 1.0) -> None:
        self.path = path
        self.sync_interval_s = sync_interval_s
        self._synced_at = time.monotonic()
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync
        self.name = name or f"file:{path.name}"
        self.required = required
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = None
        self._size = 0
        self._unsynced = False
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "ab")
        self._size = os.fstat(fd).st_size
        if self._size and not _ends_with_newline(self.path):
            # A line cut short by a crash (a killed process, a power cut): end it, so this
            # process's first event is a line of its own (`audit verify` reports it as torn).
            self._file.write(b"\n")
            self._file.flush()
            self._size += 1

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        for i in range(self.backups, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            newer = self.path.with_name(f"{self.path.name}.{i - 1}") if i > 1 else self.path
            if newer.exists():
                os.replace(newer, older)
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        self._open()

    def write_batch(self, records: list[Record], sync: bool = True) -> None:
        """Append the batch (one write). `sync`: fdatasync now if a record is durable or the
        last sync is older than sync_interval_s (an inline write leaves that to `sync_due`)."""
        data = "".join(r.line + "\n" for r in records).encode("utf-8")
        if self._file is None:
            self._open()
        if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        assert self._file is not None
        self._file.write(data)
        self._file.flush()
        self._size += len(data)
        self._unsynced = True
        now = time.monotonic()
        if sync and self.fsync and (any(r.durable for r in records)
                                    or now - self._synced_at >= self.sync_interval_s):
            os.fdatasync(self._file.fileno())
            self._synced_at = now
            self._unsynced = False

    def sync_due(self) -> float | None:
        """Seconds until written data must be synced (0: now); None: nothing unsynced."""
        if not self.fsync or not self._unsynced:
            return None
        return max(self.sync_interval_s - (time.monotonic() - self._synced_at), 0.0)

    def sync_fd(self) -> int | None:
        """A duplicate of the file's descriptor to fdatasync outside any lock (the file may be
        rotated meanwhile: the data written before is what gets synced); None when closed."""
        if self._file is None:
            return None
        self._synced_at, self._unsynced = time.monotonic(), False
        return os.dup(self._file.fileno())

    def close(self) -> None:
        """Flush and sync (even with fsync off: once, at the end, costs nothing), then close."""
        if self._file is not None:
            try:
                self._file.flush()
                os.fdatasync(self._file.fileno())
            except OSError as e:  # EINVAL: not a file that syncs (a pipe, /dev/stdout)
                log.error("audit file sync at close failed", sink=self.name, error=str(e))
            finally:
                self._file.close()
                self._file = None


class MemorySink:
    """Every event, in order, as a list of dicts (tests; written synchronously)."""

    synchronous = True
    required = False
    name = "memory"

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def write_batch(self, records: list[Record]) -> None:
        self.events.extend(json.loads(r.line) for r in records)

    def close(self) -> None:
        pass


class SinkWriter:
    """One sink's thread: batches from a bounded queue; a failed batch is retried (backoff
    0.05 s doubling to 5 s) before anything after it, so the sink sees events in order."""

    def __init__(self, sink: Sink, max_queue: int, on_written: Callable[[SinkWriter], None],
                 on_failed: Callable[[SinkWriter], None]) -> None:
        self.sink = sink
        self.max_queue = max_queue
        self._on_written = on_written
        self._on_failed = on_failed
        self._queue: deque[Record] = deque()
        self._cond = threading.Condition(threading.Lock())  # not re-entered: a plain lock is cheaper
        self._closing = False
        self.written_n = 0  # every event with n <= this is in the sink
        self.up = True
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None
        self._inline_paused_until = 0.0
        self.inline_pauses = 0  # times a slow inline write sent batches to the thread
        self._sync_idle = False  # the thread waits without a sync deadline
        self._thread = threading.Thread(target=self._run, name=f"audit-{sink.name}", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def put_many(self, records: list[Record]) -> None:
        """A batch of non-durable records from the event loop (AuditEmitter.run_soon). With an
        inline sink (a file) that is up and has nothing queued, they are written right here: one
        append per loop turn, no hand-over to the writer thread (whose GIL hand-offs cost every
        TLS write of the loop a few µs). The writer thread still syncs them (sync_interval_s).
        A failed write, or a slow one (> INLINE_SLOW_S) that waited (for the disk, a lock: not
        just a busy machine's scheduler preempting the loop), sends this and the next
        INLINE_PAUSE_S of batches through the queue: a stalling disk never holds the loop twice.
        A batch ending with a durable record (a checkpoint) goes through the thread, which syncs it."""
        if not records[-1].durable and self._inline_ok():
            with self._cond:
                if not self._queue and not self._closing:
                    waits = _waits()
                    started = time.perf_counter()
                    try:
                        self.sink.write_batch(records, sync=False)  # type: ignore[call-arg]
                    except Exception as e:  # noqa: BLE001 - the thread retries it (in order) and reports
                        self._inline_paused_until = time.monotonic() + INLINE_PAUSE_S
                        log.warning("audit sink inline write failed; using the writer thread",
                                    sink=self.sink.name, error=f"{type(e).__name__}: {str(e)[:200]}")
                    else:
                        self.written_n = records[-1].n
                        if self._sync_idle:
                            self._cond.notify()  # the thread syncs within sync_interval_s
                        if time.perf_counter() - started > INLINE_SLOW_S and (waits < 0 or _waits() > waits):
                            self._inline_paused_until = time.monotonic() + INLINE_PAUSE_S
                            self.inline_pauses += 1
                            log.info("audit sink slow; writing through its thread for a while", sink=self.sink.name,
                                     pause_s=INLINE_PAUSE_S)
                        return
        for record in records:
            self.put(record)

    def _inline_ok(self) -> bool:
        return (getattr(self.sink, "inline", False) and self.up
                and (not self._inline_paused_until or time.monotonic() >= self._inline_paused_until))

    def put(self, record: Record) -> bool:
        """Queue `record`; past max_queue it is dropped and counted, except the trail's own events
        (a checkpoint, the seal: rare, and the seal says how many were dropped)."""
        with self._cond:
            if len(self._queue) >= self.max_queue and record.event.get("type") not in _TRAIL_TYPES:
                self.dropped += 1
                return False
            self._queue.append(record)
            # Wake the writer only when it must act: it lingers for more otherwise.
            if len(self._queue) == 1 or record.durable or len(self._queue) >= min(BATCH, self.max_queue // 2):
                self._cond.notify()
        return True

    def _run(self) -> None:
        delay = 0.05
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    due = self._sync_due()
                    if due == 0.0:
                        break
                    self._sync_idle = due is None
                    self._cond.wait(due)
                    self._sync_idle = False
                if not self._queue:
                    fd = self._sync_fd()
                    if self._closing and fd is None:
                        return
                else:
                    fd = None
            if fd is not None:  # inline writes to sync: outside the lock (the loop may append meanwhile)
                self._sync(fd)
                continue
            with self._cond:
                if not self._queue:
                    continue
                # Linger a little for more events (fewer writes and wake-ups under load),
                # unless a fail_closed statement is waiting for one of them.
                deadline = time.monotonic() + LINGER_S
                while (len(self._queue) < min(BATCH, self.max_queue // 2) and not self._closing
                       and not self._queue[-1].durable
                       and (left := deadline - time.monotonic()) > 0):
                    self._cond.wait(left)
                batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
            try:
                self.sink.write_batch(batch)
            except (ValueError, TypeError) as e:  # the events themselves are refused: retrying cannot help
                with self._cond:
                    for _ in batch:
                        self._queue.popleft()
                    self.dropped += len(batch)
                log.error("audit sink refused a batch; dropped", sink=self.sink.name, events=len(batch),
                          error=f"{type(e).__name__}: {str(e)[:200]}")
                continue
            except Exception as e:  # noqa: BLE001 - any other failure: the batch stays queued
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {str(e)[:200]}"
                if self.up:
                    log.error("audit sink failing; events kept and retried", sink=self.sink.name, error=self.last_error)
                self.up = False
                self._notify(self._on_failed)
                with self._cond:
                    if self._closing and self._give_up:
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.05
            with self._cond:  # `up` changes with the queue, so an idle writer is never seen down
                for _ in batch:
                    self._queue.popleft()
                was_down, self.up = not self.up, True
                self.written_n = batch[-1].n
            if was_down:
                log.info("audit sink back", sink=self.sink.name)
            self._notify(self._on_written)

    _give_up = False

    def _sync_due(self) -> float | None:
        due = getattr(self.sink, "sync_due", None)
        return due() if due is not None else None

    def _sync_fd(self) -> int | None:
        if self._sync_due() is None:
            return None
        return self.sink.sync_fd()  # type: ignore[attr-defined]

    def _sync(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as e:
            log.error("audit sink sync failed", sink=self.sink.name, error=str(e))
        finally:
            os.close(fd)

    def _notify(self, callback: Callable[[SinkWriter], None]) -> None:
        try:
            callback(self)
        except Exception:  # noqa: BLE001 - the writer thread must outlive any bug here
            log.exception("audit writer callback failed", sink=self.sink.name)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (up to `timeout_s`), then close the sink."""
        self.begin_close()
        self.finish_close(time.monotonic() + timeout_s)

    def begin_close(self) -> None:
        """Tell the thread to write what is queued and stop (finish_close waits for it)."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def finish_close(self, deadline: float) -> None:
        """Wait (until the monotonic `deadline`) for the queue to be written, then close the sink
        (a file sink syncs). Past the deadline what is left is dropped, counted and logged."""
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            with self._cond:
                self._give_up = True
                self.dropped += len(self._queue)
                self._cond.notify()
            self._thread.join(1)
            log.error("audit sink closed with events unwritten", sink=self.sink.name, dropped=self.dropped)
        self.sink.close()

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._cond:
                if not self._queue:
                    return True
            time.sleep(0.002)
        return False
