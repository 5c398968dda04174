"""Fixtures of the fuzz suite: `mariadb`, `tls_files`, `upstream_credentials` come from
tests/conftest.py; `policies_dir` and `proxy` from the integration suite (a non-root conftest may
not use `pytest_plugins`, so they are imported: pytest registers the fixtures a conftest module
holds). The fuzzers fail thousands of logins and open connections by the hundred from 127.0.0.1;
a test proxy's admission limits stay out of their way (jitproxy_demo/inprocess.py); the limits are tested
in tests/integration/test_limits.py, the parsers are the subject here."""

from __future__ import annotations

import pytest

from tests.integration.conftest import policies_dir, proxy  # noqa: F401

# The helpers assert too (the oracle, the audit model): show their failures as pytest shows a
# test's. Registered before the test modules import them.
pytest.register_assert_rewrite("tests.fuzz.oracle", "tests.fuzz.prepared_model", "tests.fuzz.wire_client",
                               "tests.fuzz.garbage")
