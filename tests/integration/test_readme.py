"""The README's examples, run as written against a real `jitproxy demo` (real MariaDB, the
proxy, its admin API, its IdP), in the README's order: signing in with SSO and connecting (the
top of the README), the tutorial (dev denied in an open session, a
request with --until, approval, the same session's next query, revocation, release, expiry,
audit search, with every status and the exact end), then the examples of the later sections.

The blocks and their notation: tests/readme_examples.py. They run in one bash started with a
new login's environment (so the README's own `export` line must set PATH, JITPROXY_API and
JITPROXY_CA), in a directory laid out as the repository is for a reader (`.venv/bin/jitproxy`,
the demo in `demo/`); the demo listens on free ports, which take the place of the README's
3307 and 8443. The person's sign-in lives in this test's own JITPROXY_HOME."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.idp_page import SignInMeanwhile
from tests.integration.test_demo import _start_demo, _stop_demo
from tests.readme_examples import Step, as_at_the_prompt, missing, steps
from tests.shell import ClientSession, Shell, fresh_env

ROOT = Path(__file__).resolve().parents[2]
README_PORT, README_API_PORT = 3307, 8443  # `jitproxy demo`'s defaults, as the README shows them
POLL_STEP_S = 0.5

# The tutorial's flow: taking any of it out of the README fails here, not silently.
TUTORIAL: tuple[tuple[str, Callable[[Step], bool]], ...] = (
    ("a sign-in with jitproxy login", lambda s: s.kind == "sh" and s.text.startswith("jitproxy login")
     and s.sign_in_as is not None),
    ("jitproxy connect's session", lambda s: s.kind == "session" and s.text.startswith("jitproxy connect")),
    ("a session opened as dev", lambda s: s.kind == "session" and "-u dev" in s.text),
    ("a statement denied in it", lambda s: s.kind == "sql" and any("ERROR 1142" in e for e in s.expected)),
    ("a request with --until", lambda s: s.kind == "sh" and bool(re.search(r"request create .*--until", s.text))),
    ("its approval", lambda s: s.kind == "sh" and "request approve" in s.text),
    ("the same session's next query", lambda s: s.kind == "sql" and any("600" in e for e in s.expected)),
    ("a revocation", lambda s: s.kind == "sh" and "grant revoke" in s.text),
    ("a release", lambda s: s.kind == "sh" and "request release" in s.text),
    ("an expiry, polled for", lambda s: s.kind == "sh" and s.again_within_s is not None
     and any("expired" in e for e in s.expected)),
    ("an audit search", lambda s: s.kind == "sh" and "audit search" in s.text and bool(s.expected)),
)


@pytest.mark.timeout(300)  # the demo's start and a 20 s expiry; every step has its own deadline
def test_the_readme_examples_run_as_written(tmp_path: Path) -> None:
    found = steps((ROOT / "README.md").read_text(encoding="utf-8"))
    for what, shows in TUTORIAL:
        assert any(shows(step) for step in found), f"the README's tutorial no longer shows {what}"
    jitproxy = Path(sys.executable).parent / "jitproxy"
    if not jitproxy.exists():
        pytest.skip("no jitproxy command beside this interpreter (pip install -e .)")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "jitproxy").symlink_to(jitproxy)
    proc, printed = _start_demo(tmp_path / "demo")
    text = "".join(printed)
    ports = {README_PORT: _port(r"ready on 127\.0\.0\.1:(\d+)", text),
             README_API_PORT: _port(r"JITPROXY_API=https://127\.0\.0\.1:(\d+)", text)}
    env = fresh_env(JITPROXY_HOME=os.environ["JITPROXY_HOME"])
    shell, session, outputs = Shell(tmp_path, env), None, []
    try:
        for step in found:
            command = _with_ports(step.text, ports)
            if step.kind == "session":
                if session is not None:
                    session.close()
                session = ClientSession(command, tmp_path, {**env, "PATH": shell.value("PATH")})
            elif step.kind == "sql":
                assert session is not None, f"README line {step.line}: a statement before the session block"
                outputs.append(_run_statement(session, step, shell))
            else:
                outputs.append(_run_command(shell, step, command))
    finally:
        if session is not None:
            session.close()
        shell.close()
        _stop_demo(proc)
    for user in ("dev", "admin"):
        token = (tmp_path / "demo" / f"{user}.token").read_text().strip()
        assert not any(token in output for output in outputs), f"{user}'s token was printed"
    signed_in = json.loads((Path(os.environ["JITPROXY_HOME"]) / "session.json").read_text())["token"]
    assert not any(signed_in in output for output in outputs), "the signed-in token was printed"


def _port(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match, text
    return int(match.group(1))


def _with_ports(command: str, ports: dict[int, int]) -> str:
    """The demo's real ports where the README shows its defaults (`-P 3307`, `127.0.0.1:8443`)."""
    for shown, real in ports.items():
        command = re.sub(rf"(?<=-P ){shown}\b|(?<=127\.0\.0\.1:){shown}\b", str(real), command)
    return command


def _run_command(shell: Shell, step: Step, command: str) -> str:
    """Run it (again, while the step says so, until its deadline); check its exit code and output."""
    deadline = time.monotonic() + (step.again_within_s or 0)
    while True:
        code, output = shell.run(command, meanwhile=SignInMeanwhile(step.sign_in_as) if step.sign_in_as else None)
        problems = _problems(step, code, output, shell.value)
        if not problems or step.again_within_s is None or time.monotonic() >= deadline:
            break
        time.sleep(POLL_STEP_S)
    assert not problems, f"README line {step.line}: {command}\n" + "\n".join(problems) + f"\n--- it printed:\n{output}"
    return output


def _problems(step: Step, code: int, output: str, value: Callable[[str], str]) -> list[str]:
    problems = [f"exit code {code}, not {step.exit_code}"] if code != step.exit_code else []
    return problems + [f"does not show: {fragment}" for fragment in missing(output, step.expected, value)]


def _run_statement(session: ClientSession, step: Step, shell: Shell) -> str:
    output = as_at_the_prompt(session.run(step.text))
    absent = missing(output, step.expected, shell.value)
    assert not absent, (f"README line {step.line}: {step.text}\n" + "\n".join(f"does not show: {f}" for f in absent)
                        + f"\n--- it printed:\n{output}")
    return output
