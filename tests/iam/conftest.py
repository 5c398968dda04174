"""A MariaDB checking RDS IAM auth tokens like Aurora MySQL (`jitproxy_demo.iam`), and tokens for it.

The keys below are made up; tokens are signed locally by boto3 (no network).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator
from typing import Any
from unittest import mock

import boto3
import botocore.auth
import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.iam import IAM_SERVER_ARGS, AwsKey, IamAuthSetup, install_iam_auth
from jitproxy_demo.mariadb import LocalMariaDB
from jitproxy_demo.process import LOOPBACK
from jitproxy_demo.sample import load_sample_data

REGION = "eu-west-1"
IAM_USER = "iam_app"
KEY_A = AwsKey("AKIAJITPROXYTESTKEYA", "jitproxy/test/secret/A+0123456789abcdefghij")
KEY_B = AwsKey("AKIAJITPROXYTESTKEYB", "jitproxy/test/secret/B+0123456789abcdefghij")
# Temporary credentials, as an instance role or SSO gives them: the token carries the session token.
KEY_STS = AwsKey(
    "ASIAJITPROXYTESTSTS1",
    "jitproxy/test/secret/S+0123456789abcdefghij",
    session_token="IQoJb3JpZ2luX2VjEJITPROXYTESTSESSIONTOKEN/" + "x" * 560 + "/end",
)
ALL_KEYS = (KEY_A, KEY_B, KEY_STS)


def make_token(
    key: AwsKey,
    *,
    host: str = LOOPBACK,
    port: int,
    user: str = IAM_USER,
    region: str = REGION,
    at: dt.datetime | None = None,
) -> str:
    """An RDS IAM auth token from boto3's own `generate_db_auth_token`, signed at `at` (UTC)."""
    rds = _rds_client(key, region)
    if at is None:
        return rds.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user)
    naive_utc = at.astimezone(dt.timezone.utc).replace(tzinfo=None)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=naive_utc):
        return rds.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user)


@functools.cache
def _rds_client(key: AwsKey, region: str) -> Any:
    session = boto3.session.Session(
        aws_access_key_id=key.access_key_id,
        aws_secret_access_key=key.secret_access_key,
        aws_session_token=key.session_token,
        region_name=region,
    )
    return session.client("rds")


@pytest.fixture(scope="session")
def iam_mariadb(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[LocalMariaDB]:
    """A private MariaDB with TLS, auth_pam (asking for mysql_clear_password), the sample data."""
    with LocalMariaDB(
        tmp_path_factory.mktemp("iam-mariadb"),
        tls=tls_files,
        extra_args=IAM_SERVER_ARGS,
        general_log=True,
    ) as db:
        load_sample_data(db)
        yield db


@pytest.fixture(scope="session")
def iam_setup(iam_mariadb: LocalMariaDB) -> Iterator[IamAuthSetup]:
    """iam_app@'%' (SELECT on hr_prod.*) logging in with tokens for 127.0.0.1:<port>."""
    with install_iam_auth(
        iam_mariadb,
        user=IAM_USER,
        region=REGION,
        host=LOOPBACK,
        port=iam_mariadb.port,
        keys=[KEY_A],
        grants_sql=[f"GRANT SELECT ON hr_prod.* TO {IAM_USER}@'%'"],
    ) as setup:
        yield setup


@pytest.fixture
def iam(iam_setup: IamAuthSetup) -> IamAuthSetup:
    """The session's setup as a test expects it: KEY_A and KEY_STS accepted, the clock right."""
    iam_setup.set_keys([KEY_A, KEY_STS])
    iam_setup.set_clock_offset(0)
    return iam_setup
