"""Upstream instances and IAM settings in the config; instance-scoped grants in policy files."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from proxy.authz.decide import GrantSet
from proxy.authz.model import Principal
from proxy.authz.policy import PolicyError, check_overlaps, grants_from_document
from proxy.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 21, tzinfo=timezone.utc)


def _load(tmp_path: Path, mutate) -> object:
    raw = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    mutate(raw)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def _two_instances(raw: dict) -> None:
    one = raw.pop("upstream")
    raw["upstreams"] = [
        {**one, "name": "hr-prod", "environment": "prod", "listen_port": 3307},
        {**one, "name": "hr-test", "environment": "test", "listen_port": 3308},
    ]


def test_one_upstream_is_one_default_instance_on_the_listen_port(tmp_path):
    cfg = _load(tmp_path, lambda r: None)
    (only,) = cfg.instances
    assert only.name == "default" and cfg.port_of(only) == cfg.listen.port


def test_several_instances_each_on_its_own_port(tmp_path):
    cfg = _load(tmp_path, _two_instances)
    assert [(u.name, u.environment, cfg.port_of(u)) for u in cfg.instances] == [
        ("hr-prod", "prod", 3307), ("hr-test", "test", 3308)]


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(upstreams=[r["upstream"]]), "exactly one of `upstream`"),
    (lambda r: r.pop("upstream"), "exactly one of `upstream`"),
    (lambda r: (_two_instances(r), r["upstreams"][1].update(name="hr-prod")), "names must be unique"),
    (lambda r: (_two_instances(r), r["upstreams"][1].update(listen_port=3307)), "its own listen_port"),
    (lambda r: (_two_instances(r), r["upstreams"][1].pop("listen_port")), "its own listen_port"),
    (lambda r: r["upstream"].update(name="bad name"), "upstream.name"),
])
def test_instance_mistakes_are_named(tmp_path, mutate, message):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, mutate)
    assert message in str(e.value)


def _iam(raw: dict, **iam) -> None:
    u = raw["upstream"]
    for key in ("password", "password_file", "password_env"):
        u.pop(key, None)
    u.update(auth="iam", iam={"region": "eu-west-1", **iam})


def test_iam_upstream(tmp_path):
    cfg = _load(tmp_path, lambda r: _iam(r, account_id="123456789012"))
    assert cfg.upstream.auth == "iam" and cfg.upstream.iam.region == "eu-west-1"


@pytest.mark.parametrize("mutate, message", [
    (lambda r: (_iam(r), r["upstream"].update(password="x")), "takes no password"),
    (lambda r: (_iam(r), r["upstream"].pop("iam")), "needs an `iam:` section"),
    (lambda r: (_iam(r), r["upstream"].pop("tls")), "only travels inside verified TLS"),
    (lambda r: (_iam(r), r["upstream"]["tls"].update(verify_hostname=False)), "verify_hostname"),
    (lambda r: r["upstream"].update(iam={"region": "eu-west-1"}), "needs auth: iam"),
    (lambda r: (_iam(r), r["upstream"]["iam"].pop("region")), "upstream.iam.region"),
])
def test_iam_mistakes_are_named(tmp_path, mutate, message):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, mutate)
    assert message in str(e.value)


def test_instance_scoped_grants_apply_on_their_instance_only():
    grants = grants_from_document({"grants": [
        {"subject": "user:dev", "grant": "hr_prod.employee", "privileges": ["SELECT"], "instance": "hr-test"},
        {"subject": "user:dev", "grant": "hr_prod.title", "privileges": ["SELECT"]},
    ]}, "p.yaml")
    snapshot = GrantSet(grants, "v1")
    dev = Principal("dev", ())
    on_test = {g.table for g in snapshot.for_instance("hr-test").for_principal(dev, NOW)}
    on_prod = {g.table for g in snapshot.for_instance("hr-prod").for_principal(dev, NOW)}
    assert on_test == {"employee", "title"} and on_prod == {"title"}
    assert snapshot.for_instance("hr-test") is snapshot.for_instance("hr-test")  # made once


def test_same_object_on_two_instances_is_not_an_overlap_but_twice_on_one_is():
    doc = {"grants": [
        {"subject": "user:dev", "grant": "hr_prod.employee", "privileges": ["SELECT"], "instance": "hr-test"},
        {"subject": "user:dev", "grant": "hr_prod.employee", "privileges": ["SELECT"], "instance": "hr-prod"},
    ]}
    check_overlaps(grants_from_document(doc, "p.yaml"))
    doc["grants"][1]["instance"] = "hr-test"
    with pytest.raises(PolicyError, match="twice"):
        check_overlaps(grants_from_document(doc, "p.yaml"))


@pytest.mark.parametrize("bad", ["", "has space", 3, "a/b"])
def test_instance_name_in_a_policy_is_checked(bad):
    with pytest.raises(PolicyError, match="instance"):
        grants_from_document({"grants": [
            {"subject": "user:dev", "grant": "hr_prod.employee", "privileges": ["SELECT"], "instance": bad}]}, "p.yaml")


def _commented_block(text: str, first_line: str) -> str:
    """A commented-out example section of config.example.yaml, uncommented."""
    lines = text.splitlines()
    start = lines.index(f"# {first_line}")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        body = line[2:] if line.startswith("# ") else line[1:]
        if body.startswith(" ") or body == first_line:
            block.append(body)
        elif block and body == "":
            break
    return "\n".join(block)


@pytest.mark.parametrize("first_line", ["upstream:", "upstreams:"])
def test_the_commented_examples_in_config_example_are_valid(tmp_path, first_line):
    text = (ROOT / "config.example.yaml").read_text()
    example = yaml.safe_load(_commented_block(text, first_line))

    def swap(raw: dict) -> None:
        raw.pop("upstream")
        raw.update(example)

    cfg = _load(tmp_path, swap)
    assert all(u.auth == "iam" and u.iam.region == "eu-west-1" for u in cfg.instances)
    assert len(cfg.instances) == (2 if first_line == "upstreams:" else 1)
