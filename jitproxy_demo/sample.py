"""Sample HR data and the proxy's own database account on a `LocalMariaDB`."""

from __future__ import annotations

import secrets
from importlib import resources

from jitproxy_demo.mariadb import Credentials, LocalMariaDB

SAMPLE_DATABASES = ("hr_prod", "hr_test")
UPSTREAM_USER = "jitproxy"


def sample_data_sql() -> str:
    return resources.files("jitproxy_demo").joinpath("sample_data.sql").read_text(encoding="utf-8")


def load_sample_data(db: LocalMariaDB) -> None:
    """(Re)create hr_prod and hr_test with their deterministic rows; see sample_data.sql."""
    db.execute_script(sample_data_sql())


def create_proxy_upstream_user(
    db: LocalMariaDB,
    user: str = UPSTREAM_USER,
    password: str | None = None,
    require_ssl: bool = False,
) -> Credentials:
    """Create the one account the proxy connects as: ALL on the sample databases, nothing else.

    A random password is generated when none is given; the returned credentials carry it.
    """
    return db.create_user(
        user,
        password if password is not None else secrets.token_urlsafe(24),
        [f"ALL PRIVILEGES ON `{name}`.*" for name in SAMPLE_DATABASES],
        require_ssl=require_ssl,
    )
