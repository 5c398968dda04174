"""Hypothesis settings shared by the fuzz suite.

Derandomized (examples derived from each test's name, no example database) so a CI run is
reproducible and a failure found there is found again locally. JITPROXY_FUZZ_SCALE=<n>
multiplies every test's examples for a longer local run (still derandomized: change a test's
examples by scale, not by chance); JITPROXY_FUZZ_RANDOM=1 draws fresh random examples instead,
to explore (a failure then prints its seed: `@seed(...)` reproduces it)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = max(1, int(os.environ.get("JITPROXY_FUZZ_SCALE", "1")))
RANDOM = os.environ.get("JITPROXY_FUZZ_RANDOM") == "1"


def fuzz(max_examples: int) -> settings:
    """Settings for one fuzz test: `max_examples` (scaled), no deadline (a live proxy's latency
    varies; a hang is caught by bounded socket reads and the watchdog instead)."""
    return settings(
        max_examples=max_examples * SCALE,
        derandomize=not RANDOM,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
