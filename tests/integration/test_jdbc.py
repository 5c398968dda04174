"""MariaDB Connector/J (Debian's libmariadb-java), the JDBC driver behind DBeaver's MariaDB
connections: login with a token over verified TLS, the statements it sends at connect, results,
prepared statements, a denial. scripts/setup.sh installs Java and the driver."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DRIVER = Path("/usr/share/java/mariadb-java-client.jar")
SOURCE = Path(__file__).with_name("jdbc") / "Probe.java"


def test_jdbc_client_through_the_proxy(proxy, tls_files, tmp_path):
    assert shutil.which("javac") and DRIVER.exists(), "scripts/setup.sh installs a JDK and libmariadb-java"
    subprocess.run(["javac", "-d", str(tmp_path), "-cp", str(DRIVER), str(SOURCE)], check=True, timeout=120)
    url = f"jdbc:mariadb://127.0.0.1:{proxy.port}/hr_prod?useSsl=true&serverSslCert={tls_files.ca_cert}"
    res = subprocess.run(
        ["java", "-cp", f"{DRIVER}:{tmp_path}", "Probe", url, "dev", proxy.token("dev")],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line and not line.startswith("row="))
    rows = [line for line in res.stdout.splitlines() if line.startswith("row=")]
    assert out["version"].endswith("-jitproxy") and "MariaDB" in out["version"]
    assert out["columns"].startswith("id,first_name table=employee")
    assert len(rows) == 2
    assert out["injection_count"] == "0"
    assert out["salary_denied"] == "1142"
    assert out["tables"] == "employee title"
    assert out["md_tables"] == "employee title"
    assert out["md_salary_columns"] == "0" and int(out["md_employee_columns"]) > 5
    assert all("salary" not in value for value in out.values())
    assert set(out["md_catalogs"].split()) <= {"hr_prod", "information_schema"}
