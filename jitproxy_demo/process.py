"""The process lifecycle shared by the private database servers of the demo and the tests.

`LocalServer` owns one server process that keeps everything in `basedir` and listens on a
loopback port: it starts the server (picking a free port the first time, and trying another
if a picked one is taken before the server binds it), waits until it answers, stops it (a
signal, then SIGKILL after `shutdown_timeout_s`, and at interpreter exit if nobody did), and
puts the tail of the server's log into the errors it raises. `LocalMariaDB`
(`jitproxy_demo.mariadb`) and `LocalPostgres` (`jitproxy_demo.postgres`) are its subclasses.

A subclass provides:

- the class attributes `_product` (in messages: "MariaDB"), `_program` (the server binary's
  name in messages: "mariadbd"), `_error` (the exception class raised, a `LocalServerError`)
  and, when SIGTERM is not the right shutdown request, `_stop_signal`;
- `_prepare()`: run by `start()` before the server is spawned: initialise the data directory
  the first time (`_run_install` runs the tool), and whatever else the spawn needs;
- `_spawn(port)`: start the server process on `port` (`start_in_session`), its output
  appended to the files that `_startup_logs` names;
- `_ready(port, remaining_s)`: one attempt to run a query on the spawned server: True once it
  answers, False while it is not listening yet, raise `_error` when it refuses;
- `_server_log`: the server's log (its tail goes into the error when it never answers);
  `_startup_logs`: what it printed while starting, in order (the server log by default);
- optionally `_started()`: run by `start()` once the server answers (if it raises, the
  server is stopped again).

The methods block; use the `astart`/`astop` wrappers or `async with` from asyncio code.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypedDict

LOOPBACK = "127.0.0.1"
# A unix socket path must fit in sockaddr_un.sun_path (108 bytes on Linux, with the NUL).
_MAX_SOCKET_PATH_BYTES = 107
_PORT_ATTEMPTS = 3
_POLL_INTERVAL_S = 0.05
_LOG_TAIL_LINES = 25


class Timeouts(TypedDict, total=False):
    """`LocalServer`'s timeouts, which a subclass's constructor passes on (`**timeouts`)."""

    startup_timeout_s: float
    shutdown_timeout_s: float


class LocalServerError(RuntimeError):
    """The local server could not be initialised, started or queried."""


class LocalServer:
    """One server process owning `basedir`; see the module docstring for what a subclass adds.

    `start()` may be called again after `stop()`: the port picked the first time is kept.
    """

    host = LOOPBACK
    _product: ClassVar[str]
    _program: ClassVar[str]
    _error: ClassVar[type[LocalServerError]]
    _stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(
        self,
        basedir: Path,
        port: int | None = None,
        *,
        startup_timeout_s: float = 60.0,
        shutdown_timeout_s: float = 30.0,
    ) -> None:
        self.basedir = Path(basedir).resolve()
        self.startup_timeout_s = startup_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None

    # -- where things are ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise self._error("no port yet: it is picked when the server first starts")
        return self._port

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def _server_log(self) -> Path:
        raise NotImplementedError

    @property
    def _startup_logs(self) -> Sequence[Path]:
        return (self._server_log,)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            raise self._error(f"{self._product} in {self.basedir} is already running")
        self.basedir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        self._launch()
        try:
            self._started()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Send `_stop_signal`, wait up to `shutdown_timeout_s`, then SIGKILL. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if process.poll() is None:
            process.send_signal(self._stop_signal)
            try:
                process.wait(timeout=self.shutdown_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    # -- what a subclass provides -------------------------------------------------------

    def _prepare(self) -> None:
        """Before the spawn: initialise the data directory the first time, and so on."""

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _ready(self, port: int, remaining_s: float) -> bool:
        raise NotImplementedError

    def _started(self) -> None:
        """After the server answers: finish setting it up (it is stopped if this raises)."""

    # -- internals ----------------------------------------------------------------------

    def _run_install(
        self, tool: str, log_path: Path, command: Sequence[str], **popen_args: Any
    ) -> None:
        """Run `tool`, a data-directory initialiser, within `startup_timeout_s`.

        Its output goes to `log_path`. It runs in its own session, so that a timeout kills it
        together with the bootstrap server it starts. On failure the half-initialised data
        directory is removed (the next start begins from scratch) and `_error` is raised with
        the tail of the output.
        """
        process = start_in_session(command, log_path, append=False, **popen_args)
        try:
            returncode = process.wait(timeout=self.startup_timeout_s)
            failure = f"exit code {returncode}" if returncode != 0 else None
        except BaseException as exc:
            kill_group(process)
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            failure = f"no result within {self.startup_timeout_s}s"
        if failure is not None:
            shutil.rmtree(self.datadir, ignore_errors=True)
            raise self._error(
                f"{tool} failed ({failure}; full output in {log_path}):\n"
                f"{tail(read_from(log_path, 0))}"
            )

    def _launch(self) -> None:
        """Spawn the server and wait until it answers; retry a picked port taken meanwhile."""
        picked_port = self._port is None
        deadline = time.monotonic() + self.startup_timeout_s
        for _ in range(_PORT_ATTEMPTS if picked_port else 1):
            port = self._port if self._port is not None else free_loopback_port()
            offsets = [(path, size(path)) for path in self._startup_logs]
            process = self._spawn(port)
            try:
                failure = self._wait_until_ready(process, port, deadline)
            except BaseException:
                kill(process)
                raise
            if failure is None:
                self._port, self._process = port, process
                atexit.register(self.stop)
                return
            log = "".join(read_from(path, offset) for path, offset in offsets)
            if not (picked_port and "Address already in use" in log):
                raise self._error(f"{self._program} exited early ({failure}):\n{tail(log)}")
        raise self._error(f"{self._program} could not bind a free port in {_PORT_ATTEMPTS} tries")

    def _wait_until_ready(
        self, process: subprocess.Popen[bytes], port: int, deadline: float
    ) -> str | None:
        """Poll `_ready` until it is True (None), or describe how the process exited."""
        while True:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise self._error(
                    f"{self._program} did not accept connections within "
                    f"{self.startup_timeout_s}s:\n{tail(read_from(self._server_log, 0))}"
                )
            if process.poll() is not None:
                return f"exit code {process.returncode}"
            if self._ready(port, remaining_s):
                return None
            try:
                process.wait(timeout=min(_POLL_INTERVAL_S, max(remaining_s, 0.0)))
            except subprocess.TimeoutExpired:
                pass


def start_in_session(
    command: Sequence[str], output: Path, *, append: bool = True, **popen_args: Any
) -> subprocess.Popen[bytes]:
    """Start `command` in a session of its own (a ^C at the terminal reaches us, and we stop
    it), stdin closed, stdout and stderr into `output` (appended, or written from scratch)."""
    with open(output, "ab" if append else "wb") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen_args,
        )


def write_private(path: Path, text: str, owner: pwd.struct_passwd | None = None) -> None:
    """Write `text` to `path`, readable by its owner only (0600, an existing file's mode too);
    the file belongs to `owner` when given (a server running as that account must read it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        if owner is not None:
            os.fchown(out.fileno(), owner.pw_uid, owner.pw_gid)
        out.write(text)


def check_socket_path(path: Path) -> None:
    """ValueError if `path` is too long to be a unix socket's address."""
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH_BYTES:
        raise ValueError(
            f"unix socket path {path} is too long for the OS "
            f"(max {_MAX_SOCKET_PATH_BYTES} bytes); use a shorter basedir"
        )


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the session that (unreaped) `process` leads, then reap `process`."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
