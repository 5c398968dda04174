"""What a person pastes commands into, for tests that run commands exactly as printed (the
demo's output, the README's examples): one bash whose variables and exports carry from one
command to the next, one `mariadb` session that stays open between statements, and a terminal
(a pseudo-terminal) for what only a person at a terminal does: typing at a password prompt.

Both read their answers with a deadline (a reader thread and a queue): a command that hangs
fails its test with what it printed, never the whole run."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path


def fresh_env(**extra: str) -> dict[str, str]:
    """A new login's environment: no JITPROXY_* variables and no directory holding a `jitproxy`
    command on the PATH (what the printed commands must set themselves); this machine's zone
    kept, since the commands print local times."""
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
            if p and not (Path(p) / "jitproxy").exists()]
    env = {"PATH": os.pathsep.join(path), "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return {**env, **extra}


class _Lines:
    """A pipe's lines, read by a thread, taken with a deadline."""

    def __init__(self, stream: object) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._queue.put(line)
        self._queue.put(None)

    def until(self, marker: str, timeout_s: float) -> tuple[list[str], bool]:
        """The lines before the one starting with `marker`, and whether it came in time."""
        lines: list[str] = []
        try:
            while True:
                line = self._queue.get(timeout=timeout_s)
                if line is None:
                    return lines, False
                if line.startswith(marker):
                    lines.append(line)
                    return lines, True
                lines.append(line)
        except queue.Empty:
            return lines, False


class Shell:
    """One bash, commands typed in one at a time. Each command's stdout and stderr go to one
    file, interleaved as a terminal shows them; its stdin is /dev/null (the shell's own stdin
    is this class's pipe)."""

    def __init__(self, cwd: Path, env: Mapping[str, str]) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="shell-"))
        self._proc = subprocess.Popen(["bash", "--norc", "--noprofile"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                                      env=dict(env), start_new_session=True)
        self._lines = _Lines(self._proc.stdout)
        self._count = 0

    def run(self, command: str, timeout_s: float = 60,
            meanwhile: Callable[[str], object] | None = None) -> tuple[int, str]:
        """Exit code and output of `command`, typed as is (so `REQ=$(...)` sets REQ for the
        next ones). A command still running at the deadline fails the test. `meanwhile`: what a
        person does while it runs (e.g. sign in at the page `jitproxy login` prints), called with
        its output so far every 0.2 s until it ends."""
        self._count += 1
        out, marker = self._dir / f"{self._count}.out", f"__readme_shell_done_{self._count}__"
        # `:` first: a line that is only a comment is a command too (an empty group is not).
        self._type(f"{{ :; {command}\n}} >{out} 2>&1 </dev/null\necho \"{marker} $?\"\n")
        deadline, noise, done = time.monotonic() + timeout_s, [], False
        while not done and time.monotonic() < deadline:
            wait = deadline - time.monotonic() if meanwhile is None else min(0.2, deadline - time.monotonic())
            more, done = self._lines.until(marker, max(wait, 0.01))
            noise += more
            if not done and meanwhile is not None and out.exists():
                meanwhile(out.read_text(errors="replace"))
        text = out.read_text(errors="replace") if out.exists() else ""
        if not done:
            self.close()
            raise AssertionError(f"no end (the shell quit, or {timeout_s}s passed): {command}\n{text}{''.join(noise)}")
        return int(noise[-1].split()[1]), text + "".join(noise[:-1])

    def value(self, name: str) -> str:
        """A shell variable's value now (the README's expected output may name one)."""
        code, text = self.run(f'printf "%s" "${{{name}}}"', timeout_s=10)
        assert code == 0, text
        return text

    def _type(self, text: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(text)
        self._proc.stdin.flush()

    def close(self) -> None:
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)


class ClientSession:
    """A `mariadb` client kept open, statements typed into it one at a time as at its prompt.
    Piped, it is told to behave as it does in a terminal: go on after an error (--force),
    answer each statement at once (--unbuffered) and draw tables (--table)."""

    def __init__(self, command: str, cwd: Path, env: Mapping[str, str]) -> None:
        flags = "--force --unbuffered --table"
        command = _without_comment(command)  # the flags go on the command, not into its comment
        words = command.split()
        if len(words) > 1 and Path(words[0]).name == "jitproxy" and words[1] == "connect" and "--" not in words:
            flags = "-- " + flags  # `jitproxy connect` hands what follows `--` to the client it starts
        self._proc = subprocess.Popen(["bash", "-c", f"exec {command} {flags}"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, cwd=cwd, env=dict(env), start_new_session=True)
        self._lines = _Lines(self._proc.stdout)
        self._count = 0

    def run(self, statement: str, timeout_s: float = 30) -> str:
        """What the client printed for `statement` (the client's own `\\!` echoes a marker after
        it, so no statement of the test's own reaches the proxy or its audit trail)."""
        self._count += 1
        marker = f"__readme_session_done_{self._count}__"
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(f"{statement}\n\\! echo {marker}\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # the client is gone: what it printed says why
        lines, done = self._lines.until(marker, timeout_s)
        if not done:
            self.close()
            raise AssertionError(f"no answer within {timeout_s}s to {statement}:\n{''.join(lines)}")
        return "".join(lines[:-1])

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)


def _without_comment(command: str) -> str:
    """`command` without a trailing `# comment` (a `#` after a blank, outside quotes, as bash reads it)."""
    quote = None
    for i, char in enumerate(command):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].rstrip()
    return command


class Terminal:
    """A program in a pseudo-terminal that is its controlling terminal (`setsid --ctty`), as in a
    terminal window: prompts that read /dev/tty (the `mariadb` CLI's `-p`) read what `type`
    sends, with echo off as the program sets it. `expect` waits, with a deadline, for a pattern
    in what it wrote since the last match."""

    def __init__(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        self._master, slave = os.openpty()
        try:
            self._proc = subprocess.Popen(["setsid", "--ctty", *argv], stdin=slave, stdout=slave, stderr=slave,
                                          env={"TERM": "dumb", **(env or os.environ)}, close_fds=True)
        finally:
            os.close(slave)
        self._chunks: queue.Queue[bytes | None] = queue.Queue()
        self._seen, self._at = "", 0
        self._pumping = threading.Thread(target=self._pump, daemon=True)
        self._pumping.start()

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self._master, 4096)
            except OSError:  # EIO: the program ended and closed the terminal
                data = b""
            if not data:
                self._chunks.put(None)
                return
            self._chunks.put(data)

    def expect(self, pattern: str, timeout_s: float = 30) -> re.Match[str]:
        """The first match of `pattern` in the output after the previous match."""
        compiled = re.compile(pattern)
        ended = False
        while True:
            match = compiled.search(self._seen, self._at)
            if match:
                self._at = match.end()
                return match
            if ended:
                raise AssertionError(f"the program ended without printing /{pattern}/:\n{self._seen[self._at:]}")
            try:
                chunk = self._chunks.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"no /{pattern}/ within {timeout_s}s:\n{self._seen[self._at:]}") from None
            if chunk is None:
                ended = True
            else:
                self._seen += chunk.decode("utf-8", "replace").replace("\r\n", "\n")

    def type(self, text: str) -> None:
        """Keys typed at the terminal (end a line with "\n", the Enter key)."""
        os.write(self._master, text.encode("utf-8"))

    def wait(self, timeout_s: float = 30) -> int:
        return self._proc.wait(timeout=timeout_s)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(timeout=10)
        # The reader ends on the EIO that follows the program's end; only then is the descriptor
        # closed (closed earlier, its number could go to the next terminal under a live reader).
        self._pumping.join(timeout=10)
        os.close(self._master)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
