"""The README's main job: `jitproxy demo` brings everything up and the printed commands work,
pasted exactly as printed into a fresh shell (no virtualenv on its PATH, nothing set)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pymysql

from tests.idp_page import PRINTED_PAGE, SignInMeanwhile
from tests.shell import ClientSession, Shell, fresh_env

JITPROXY = Path(sys.executable).parent / "jitproxy"
CMD = [str(JITPROXY)] if JITPROXY.exists() else [sys.executable, "-m", "proxy.cli"]


def _start_demo(directory: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`jitproxy demo` until it prints that it is ready; its printed lines."""
    proc = subprocess.Popen(
        [*CMD, "demo", "--dir", str(directory), "--port", "0", "--api-port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    lines: list[str] = []
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    text = "".join(lines)
    assert re.search(r"jitproxy demo ready on 127\.0\.0\.1:\d+", text), text + (proc.stderr.read() if proc.poll() is not None else "")
    return proc, lines


def _stop_demo(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err
    assert "jitproxy demo: stopped" in out
    return out, err


def _printed_command(lines: list[str], user: str) -> str:
    return next(l.strip() for l in lines if l.strip().startswith("mariadb ") and f"-u {user}" in l)


def _run(command: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f"{command} --batch -e {shlex.quote(sql)}"],
                          capture_output=True, text=True, timeout=60)


def _pasted(lines: list[str], header: str) -> list[str]:
    """The printed lines under the line starting with `header`, as a person pastes them (without
    the two-space indent)."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    block = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        block.append(line[2:].rstrip("\n"))
    return block


def _jit_lines(lines: list[str]) -> list[str]:
    """The printed just-in-time lines, as a person pastes them."""
    return _pasted(lines, "Just-in-time access")


def _person_env() -> dict[str, str]:
    """A new login's environment, with this test's own sign-in directory (never the real
    ~/.config/jitproxy of whoever runs the tests)."""
    return fresh_env(JITPROXY_HOME=os.environ["JITPROXY_HOME"])


class _SignInWithCurl:
    """What the demo prints for a person without a browser: its curl line, with the page that
    `jitproxy login` printed in place of the placeholder, run once the page is printed."""

    def __init__(self, printed_hint: str) -> None:
        match = re.search(r"(curl .*'<[^>]+>')", printed_hint)
        assert match, printed_hint
        self.template, self.placeholder = match.group(1), re.search(r"'(<[^>]+>)'", match.group(1)).group(1)
        self.done = False

    def __call__(self, printed: str) -> None:
        page = PRINTED_PAGE.search(printed)
        if page and not self.done:
            self.done = True
            command = self.template.replace(self.placeholder, page.group(1))
            answer = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
            assert answer.returncode == 0 and "Signed in as" in answer.stdout, answer.stdout + answer.stderr


def _sign_in_and_connect(tmp_path: Path, lines: list[str]) -> str:
    """The printed SSO lines in a fresh shell, as a person does them: the export line, `jitproxy
    login` (signing in as dev at the page it prints), `jitproxy connect` and SQL at its prompt,
    `jitproxy whoami`; then a login as admin the way the demo says works without a browser."""
    pasted = _pasted(lines, "Sign in with SSO")
    assert [line.split()[:2] for line in pasted] == [["export", pasted[0].split()[1]], ["jitproxy", "login"],
                                                      ["jitproxy", "connect"]], pasted
    export, login, connect = pasted
    shell, outputs = Shell(tmp_path, _person_env()), []
    try:
        for command, meanwhile in ((export, None), (login, SignInMeanwhile("dev"))):
            code, output = shell.run(command, meanwhile=meanwhile)
            outputs.append(output)
            assert code == 0, f"{command}\n{output}"
        assert "enter the code" in outputs[-1] and "signed in as dev (groups: none) until " in outputs[-1], outputs
        session = ClientSession(connect, tmp_path, {**_person_env(), "PATH": shell.value("PATH")})
        try:
            sql = next(line for line in lines if line.startswith("then SQL at its prompt: ")).split(": ", 1)[1]
            answer = session.run(sql.strip())
        finally:
            session.close()
        outputs.append(answer)
        assert re.search(r"\| first_name +\| dept +\|", answer) and answer.count("\n|") >= 3, answer
        code, output = shell.run("jitproxy whoami")
        outputs.append(output)
        assert code == 0 and output.startswith("dev (groups: none; admin: no) at https://127.0.0.1:"), output
        no_browser = next(line for line in lines if line.startswith("(No browser?"))
        curl = _SignInWithCurl(no_browser.replace("username=dev", "username=admin"))
        code, output = shell.run(login, meanwhile=curl)
        outputs.append(output)
        assert code == 0 and "signed in as admin (groups: project-owner, dba)" in output, output
    finally:
        shell.close()
    return "".join(outputs)


def _dev_session(directory: Path, port: int) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=port, user="dev", password=(directory / "dev.token").read_text().strip(),
                           database="hr_prod", ssl=ssl.create_default_context(cafile=str(directory / "ca.pem")))


def _salary_rows(session: pymysql.Connection) -> int | str:
    """The rows of hr_prod.salary through `session`, or the error's code when denied."""
    try:
        with session.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM salary")
            return int(cur.fetchone()[0])
    except pymysql.MySQLError as e:
        return f"error {e.args[0]}"


def test_demo_end_to_end(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    proc, lines = _start_demo(directory)
    try:
        text = "".join(lines)
        for name in ("ca.pem", "admin.token", "dev.token", "config.yaml"):
            assert (directory / name).exists(), name
        dev_cmd = _printed_command(lines, "dev")
        admin_cmd = _printed_command(lines, "admin")
        run = _run

        ok = run(dev_cmd, "SELECT COUNT(*) FROM employee")
        assert ok.returncode == 0 and ok.stdout.split() == ["COUNT(*)", "300"], ok.stderr
        denied = run(dev_cmd, "SELECT * FROM salary")
        assert denied.returncode != 0 and "ERROR 1142" in denied.stderr
        assert "jitproxy request create --db hr_prod --table salary" in denied.stderr
        assert "with JITPROXY_API, JITPROXY_CA and JITPROXY_TOKEN set" in denied.stderr  # what it needs to run
        signed_in = _sign_in_and_connect(tmp_path, lines)
        port = int(re.search(r"ready on 127\.0\.0\.1:(\d+)", text).group(1))
        session = _dev_session(directory, port)  # open all along: access bites on its next statement
        shell = Shell(tmp_path, fresh_env())  # no venv on PATH, no JITPROXY_*: the printed lines set them
        try:
            outputs = _paste_jit_flow(shell, _jit_lines(lines), session)
        finally:
            shell.close()
            session.close()
        admin = run(admin_cmd, "SELECT COUNT(*) FROM salary")
        assert admin.returncode == 0 and admin.stdout.split() == ["COUNT(*)", "600"], admin.stderr
        token = (directory / "dev.token").read_text().strip()
        audit = (directory / "audit.jsonl").read_text()
        assert '"user":"dev"' in audit and '"statement.denied"' in audit
        # One environment model (config: upstream.environments): dev's statements on hr_prod and
        # the request that gave access to it say the same environment.
        events = [json.loads(line) for line in audit.splitlines()]
        said = {e["environment"] for e in events if e.get("user") == "dev" and e["type"].startswith(("statement.",
                                                                                                     "request."))}
        assert said == {"prod"}, said
        assert token not in audit and token not in text and token not in outputs
        sso_token = json.loads((Path(os.environ["JITPROXY_HOME"]) / "session.json").read_text())["token"]
        for where in (audit, text, outputs, signed_in):
            assert sso_token not in where
        assert any(e["type"] == "identity.signed_in" and e["user"] == "dev" for e in events)
    finally:
        _, err = _stop_demo(proc)
    assert token not in err


def _paste_jit_flow(shell: Shell, pasted: list[str], session: pymysql.Connection) -> str:
    """Every printed just-in-time line, pasted in order into one fresh shell, exactly as printed;
    the open session checked between them. All the output, for the caller's checks."""
    assert pasted[0].startswith("export PATH=") and all("<" not in line for line in pasted), pasted
    assert _salary_rows(session) == "error 1142"
    seen = []
    for line in pasted:
        code, output = shell.run(line)
        seen.append(output)
        if " check " in line:
            assert code == 1 and "decision:   DENY" in output, output
            continue
        assert code == 0, f"{line}\n{output}"
        if "request create" in line:
            request_id, end = shell.value("REQ"), re.search(r"read as (\S+)", output).group(1)
            assert re.fullmatch(r"r-[0-9a-f]+", request_id), output
        elif "request show" in line:
            assert f"{request_id}  pending" in output and f"until {end}" in output, output
        elif "request approve" in line:
            assert f"request {request_id}: approved" in output
            mine = line.replace("admin.token", "dev.token")  # nobody approves their own request
            code, refused = shell.run(mine)
            assert code == 1 and "nobody approves or denies their own request" in refused, refused
            assert _salary_rows(session) == 600  # the same session, no reconnect
        elif "request release" in line:
            assert re.search(rf"request {request_id}: released \S+ by dev", output), output
            assert _salary_rows(session) == "error 1142"
        elif "audit search" in line:
            for kind in ("statement.denied", "statement.completed", "request.created", "request.approved",
                         "request.released"):
                assert kind in output, output
    assert any("audit search" in line for line in pasted)
    return "".join(seen)


def test_demo_in_iam_mode(tmp_path: Path) -> None:
    """`jitproxy demo --iam`: the proxy reaches MariaDB as Aurora IAM users do (a fresh token
    per connection, PAM-verified, TLS only); the printed commands work the same; the demo's
    AWS secret is never printed or audited; the PAM service is gone after Ctrl-C."""
    directory = tmp_path / "demo"
    proc, lines = _start_demo(directory, "--iam")
    try:
        assert "fresh AWS RDS IAM token per connection" in "".join(lines)
        ok = _run(_printed_command(lines, "dev"), "SELECT COUNT(*) FROM employee")
        assert ok.returncode == 0 and ok.stdout.split() == ["COUNT(*)", "300"], ok.stderr
        config = (directory / "config.yaml").read_text()
        assert "auth: iam" in config and "password" not in config
        decisions = [json.loads(l) for p in (directory / "mariadb").glob("jitproxy-iam-*.decisions.jsonl")
                     for l in p.read_text().splitlines()]
        assert decisions and all(d["ok"] for d in decisions) and decisions[-1]["user"] == "iam_app"
        # The demo's own PAM service (others may exist: the IAM tests' own, in this run).
        services = [p.name for p in Path("/etc/pam.d").glob("jitproxy-iam-*")
                    if (directory / "mariadb" / f"{p.name}.json").exists()]
        assert len(services) == 1
    finally:
        out, err = _stop_demo(proc)
    secret = re.search(r"aws_secret_access_key = (\S+)", (directory / "aws-credentials").read_text()).group(1)
    for where in (out, err, "".join(lines), (directory / "audit.jsonl").read_text()):
        assert secret not in where and "X-Amz-Signature" not in where
    assert not any(Path("/etc/pam.d", name).exists() for name in services)
