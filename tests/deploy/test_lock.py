"""requirements.lock (what the image installs with --require-hashes) against pyproject.toml:
every runtime dependency, the `fast` extra and the build backend pinned, within pyproject's
ranges, with hashes; the dependencies of the locked packages locked too. A failure here means:
regenerate the lock (`sh docker/lock.sh`) and commit it."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from dataclasses import dataclass

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.conftest import ROOT

LOCK = ROOT / "requirements.lock"


@dataclass(frozen=True)
class Locked:
    requirement: Requirement
    version: Version
    hashes: tuple[str, ...]


def parse_lock(text: str) -> dict[str, Locked]:
    entries: dict[str, Locked] = {}
    logical = re.sub(r"\\\n", " ", text)
    for line in logical.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"an option line in the lock: {line}"
        hashes = tuple(re.findall(r"--hash=(\S+)", line))
        spec = re.sub(r"--hash=\S+", "", line).strip()
        requirement = Requirement(spec)
        pins = [s for s in requirement.specifier if s.operator == "=="]
        assert len(pins) == 1 and len(requirement.specifier) == 1, f"not pinned exactly: {spec}"
        name = canonicalize_name(requirement.name)
        assert name not in entries, f"{name} twice in the lock"
        entries[name] = Locked(requirement, Version(pins[0].version), hashes)
    return entries


@pytest.fixture(scope="module")
def lock() -> dict[str, Locked]:
    return parse_lock(LOCK.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    """Does the requirement apply here (Linux, CPython 3.11: the image) for these extras?"""
    if requirement.marker is None:
        return True
    env = default_environment()
    return any(requirement.marker.evaluate({**env, "extra": extra}) for extra in extras | {""})


def test_every_entry_is_pinned_with_sha256_hashes(lock: dict[str, Locked]) -> None:
    assert lock
    for name, entry in lock.items():
        assert entry.hashes, f"{name} has no hash"
        for h in entry.hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", h), (name, h)


def test_lock_says_how_to_regenerate_it() -> None:
    assert "sh docker/lock.sh" in LOCK.read_text(encoding="utf-8").split("\n\n", 1)[0]


def test_runtime_dependencies_fast_extra_and_build_backend_are_locked(lock: dict[str, Locked], pyproject: dict) -> None:
    wanted = [*pyproject["project"]["dependencies"], *pyproject["project"]["optional-dependencies"]["fast"],
              *pyproject["build-system"]["requires"]]
    problems = []
    for spec in wanted:
        requirement = Requirement(spec)
        if not _applies(requirement, frozenset()):
            continue
        entry = lock.get(canonicalize_name(requirement.name))
        if entry is None:
            problems.append(f"{spec}: not in the lock")
        elif not requirement.specifier.contains(entry.version, prereleases=True):
            problems.append(f"{spec}: the lock has {entry.version}")
    assert not problems, "regenerate the lock (sh docker/lock.sh):\n" + "\n".join(problems)


def walk(lock: dict[str, Locked], pyproject: dict) -> tuple[list[str], set[str], list[str]]:
    """From pyproject's requirements (with their extras, e.g. sqlglot[c] -> sqlglotc), through
    each locked package's own metadata: read from this venv where it has the locked version
    (the others cannot be read without the network, and are only checked at their own level).
    Returns (problems, the locked names reached, the packages whose metadata was not read)."""
    queue = [(Requirement(s), frozenset()) for s in
             [*pyproject["project"]["dependencies"], *pyproject["project"]["optional-dependencies"]["fast"]]]
    reached: set[str] = set()
    expanded: set[tuple[str, frozenset[str]]] = set()
    not_read: list[str] = []
    problems: list[str] = []
    while queue:
        requirement, parent_extras = queue.pop()
        if not _applies(requirement, parent_extras):
            continue
        name = canonicalize_name(requirement.name)
        entry = lock.get(name)
        if entry is None:
            problems.append(f"{requirement}: not in the lock")
            continue
        if not requirement.specifier.contains(entry.version, prereleases=True):
            problems.append(f"{requirement}: the lock has {entry.version}")
        reached.add(name)
        key = (name, frozenset(requirement.extras))
        if key in expanded:
            continue
        expanded.add(key)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            not_read.append(name)
            continue
        if Version(dist.version) != entry.version:
            not_read.append(f"{name} (venv {dist.version}, lock {entry.version})")
            continue
        queue.extend((Requirement(r), frozenset(requirement.extras)) for r in dist.requires or ())
    return problems, reached, not_read


def test_dependencies_of_locked_packages_are_locked(lock: dict[str, Locked], pyproject: dict) -> None:
    problems, reached, not_read = walk(lock, pyproject)
    assert not problems, "regenerate the lock (sh docker/lock.sh):\n" + "\n".join(problems)
    assert {"sqlglotc", "psycopg-binary", "pydantic-core", "uvloop"} <= reached
    if not not_read:  # everything read: nothing in the lock is left over either
        build = {canonicalize_name(Requirement(r).name) for r in pyproject["build-system"]["requires"]}
        assert set(lock) - reached - build == set(), "locked but needed by nothing"


def test_the_walk_finds_a_missing_indirect_dependency(lock: dict[str, Locked], pyproject: dict) -> None:
    """Proves the check above reads more than pyproject.toml: drop two indirect dependencies
    (one only reached through an extra) and it names both."""
    if {"sqlglot", "python-dateutil"} & {n.split(" ")[0] for n in walk(lock, pyproject)[2]}:
        pytest.skip("this venv does not have the locked sqlglot / python-dateutil to read")
    partial = {k: v for k, v in lock.items() if k not in ("sqlglotc", "six")}
    problems, _, _ = walk(partial, pyproject)
    assert any(p.startswith("sqlglotc") for p in problems), problems
    assert any(p.startswith("six") for p in problems), problems
