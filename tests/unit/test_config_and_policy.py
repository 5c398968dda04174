from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from proxy.authz.decide import GrantSet, decide, tables_visible, databases_visible
from proxy.authz.model import Analysis, DenyCode, Principal, Privilege, Requirement, StatementKind, TableRef
from proxy.authz.policy import PolicyError, load_policy_dir, split_object
from proxy.config import ConfigError, load_config, parse_duration

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_is_valid():
    cfg = load_config(ROOT / "config.example.yaml")
    assert cfg.listen.port == 3307
    assert cfg.upstream.tls is not None and cfg.upstream.tls.ca_file.is_absolute()


def test_example_policies_load():
    loaded = load_policy_dir(ROOT / "policies")
    grants, version = loaded.grants, loaded.digest
    assert grants and len(version) == 16


def _write_config(tmp_path, mutate):
    raw = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    mutate(raw)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = _write_config(tmp_path, lambda r: r["listen"].update(prot=1))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}: listen.prot: unknown key" in str(e.value)


def test_ill_typed_key_is_an_error(tmp_path):
    path = _write_config(tmp_path, lambda r: r["listen"].update(port="many"))
    with pytest.raises(ConfigError, match="listen.port"):
        load_config(path)


def test_upstream_needs_exactly_one_password_source(tmp_path):
    path = _write_config(tmp_path, lambda r: r["upstream"].update(password="x"))
    with pytest.raises(ConfigError, match="exactly one of password"):
        load_config(path)


def test_missing_tls_is_an_error(tmp_path):
    path = _write_config(tmp_path, lambda r: r["listen"].pop("tls"))
    with pytest.raises(ConfigError, match="listen.tls"):
        load_config(path)


@pytest.mark.parametrize("text,seconds", [("90", 90), ("30s", 30), ("15m", 900), ("8h", 28800), ("2d", 172800)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_bad_duration():
    with pytest.raises(ValueError):
        parse_duration("soon")


def _policy(tmp_path, text, name="p.yaml"):
    d = tmp_path / "pol"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    return d


def test_overlapping_grants_are_rejected(tmp_path):
    d = _policy(tmp_path, "grants:\n - {subject: user:a, grant: db.t, privileges: [SELECT]}\n")
    _policy(tmp_path, "grants:\n - {subject: user:a, grant: db.t, privileges: [INSERT]}\n", "q.yaml")
    with pytest.raises(PolicyError, match="twice"):
        load_policy_dir(d)


@pytest.mark.parametrize(
    "entry,message",
    [
        ("{subject: a, grant: db.t, privileges: [SELECT]}", "user:NAME"),
        ("{subject: user:a, grant: db, privileges: [SELECT]}", "db.table"),
        ("{subject: user:a, grant: '*.t', privileges: [SELECT]}", "use \\*.\\*"),
        ("{subject: user:a, grant: db.t, privileges: [FLY]}", "unknown privilege"),
        ("{subject: user:a, grant: db.t, privileges: [SELECT], expires_at: 2030-01-01T00:00:00}", "time zone"),
        ("{subject: user:a, grant: db.t, privileges: [SELECT], note: x}", "unknown key"),
    ],
)
def test_invalid_policy_entries(tmp_path, entry, message):
    d = _policy(tmp_path, f"grants:\n - {entry}\n")
    with pytest.raises(PolicyError, match=message):
        load_policy_dir(d)


def test_split_object_handles_backquotes():
    assert split_object("`my-db`.`a.b`") == ("my-db", "a.b")
    assert split_object("db.*") == ("db", "*")


NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


def _grants(tmp_path):
    d = _policy(
        tmp_path,
        "grants:\n"
        " - {subject: user:dev, grant: hr.employee, privileges: [SELECT], expires_at: 2026-11-21T13:00:00Z}\n"
        " - {subject: group:ops, grant: hr.*, privileges: [SELECT, UPDATE]}\n"
        " - {subject: user:root, grant: '*.*', privileges: ALL}\n",
    )
    return GrantSet(load_policy_dir(d).grants)


def _select(*tables):
    return Analysis(
        StatementKind.QUERY,
        "SELECT",
        frozenset(Requirement(TableRef(*t.split(".")), Privilege.SELECT) for t in tables),
    )


def test_decide_allows_until_expiry_and_denies_after(tmp_path):
    grants = _grants(tmp_path)
    dev = Principal("dev")
    assert decide(_select("hr.employee"), dev, grants, NOW).allowed
    later = decide(_select("hr.employee"), dev, grants, NOW + timedelta(hours=1))
    assert not later.allowed and later.code is DenyCode.MISSING_GRANT


def test_decide_lists_every_missing_requirement(tmp_path):
    d = decide(_select("hr.employee", "hr.salary", "pay.x"), Principal("dev"), _grants(tmp_path), NOW)
    assert [str(r.target) for r in d.missing] == ["hr.salary", "pay.x"]


def test_group_grants_apply(tmp_path):
    assert decide(_select("hr.salary"), Principal("x", ("ops",)), _grants(tmp_path), NOW).allowed
    assert not decide(_select("hr.salary"), Principal("x", ("other",)), _grants(tmp_path), NOW).allowed


def test_database_access(tmp_path):
    use = Analysis(StatementKind.USE, "USE", use_db="pay", database_access=frozenset({"pay"}))
    assert decide(use, Principal("root"), _grants(tmp_path), NOW).allowed
    d = decide(use, Principal("dev"), _grants(tmp_path), NOW)
    assert not d.allowed and d.code is DenyCode.DATABASE_ACCESS


def test_visibility(tmp_path):
    g = _grants(tmp_path)
    assert databases_visible(Principal("dev"), g, NOW) == {"hr"}
    assert databases_visible(Principal("root"), g, NOW) is None
    assert tables_visible(Principal("dev"), g, NOW, "hr") == {"employee"}
    assert tables_visible(Principal("dev", ("ops",)), g, NOW, "hr") is None
    assert databases_visible(Principal("dev"), g, NOW + timedelta(hours=2)) == frozenset()


def test_analysis_cache_never_keeps_long_statements():
    from proxy.authz.cache import AnalysisCache

    cache = AnalysisCache(max_entries=10, max_statement_chars=100)
    long_sql = "SELECT 1 /*" + "x" * 200 + "*/"
    cache(long_sql, None)
    cache(long_sql, None)
    assert cache.hits == 0 and cache.misses == 2
    cache("SELECT 1", None)
    cache("SELECT 1", None)
    cache("SELECT 1", "db")  # another database is another entry
    assert (cache.hits, cache.misses) == (1, 4)
    cache("SELECT 2", "db")  # same shape, another literal: served by the fingerprint
    assert cache.fingerprint_hits == 1


def test_policy_names_follow_the_analyzer_rule():
    from proxy.authz.analyze import analyze

    assert split_object("INFORMATION_SCHEMA.TABLES") == ("information_schema", "tables")
    req = next(iter(analyze("SELECT * FROM `Hr_Prod`.`Salary`", None).requirements))
    assert (req.target.db, req.target.table) == split_object("Hr_Prod.Salary") == ("Hr_Prod", "Salary")


def test_guardrails_unbounded_writes_and_max_rows(tmp_path):
    d = _policy(
        tmp_path,
        "grants:\n"
        " - {subject: user:a, grant: hr.t, privileges: [SELECT, UPDATE, DELETE], max_rows: 100}\n"
        " - {subject: user:a, grant: hr.u, privileges: [SELECT, DELETE], allow_unbounded_writes: true, max_rows: 5}\n",
    )
    grants = GrantSet(load_policy_dir(d).grants)
    t, u = TableRef("hr", "t"), TableRef("hr", "u")
    delete_all_t = Analysis(StatementKind.QUERY, "DELETE", frozenset({Requirement(t, Privilege.DELETE)}),
                            unbounded_writes=frozenset({t}))
    d1 = decide(delete_all_t, Principal("a"), grants, NOW)
    assert not d1.allowed and d1.code is DenyCode.UNBOUNDED_WRITE
    delete_all_u = Analysis(StatementKind.QUERY, "DELETE", frozenset({Requirement(u, Privilege.DELETE)}),
                            unbounded_writes=frozenset({u}))
    assert decide(delete_all_u, Principal("a"), grants, NOW).allowed
    join = _select("hr.t", "hr.u")
    assert decide(join, Principal("a"), grants, NOW).max_rows == 5
    assert decide(_select("hr.t"), Principal("a"), grants, NOW).max_rows == 100


@pytest.mark.parametrize("extra,message", [("max_rows: 0", "positive integer"), ("max_rows: yes", "positive integer"),
                                           ("allow_unbounded_writes: 1", "true or false")])
def test_guardrail_keys_are_validated(tmp_path, extra, message):
    d = _policy(tmp_path, f"grants:\n - {{subject: user:a, grant: db.t, privileges: [SELECT], {extra}}}\n")
    with pytest.raises(PolicyError, match=message):
        load_policy_dir(d)


def test_star_through_column_grants_is_decided_by_the_real_columns(tmp_path):
    from proxy.authz.analyze import analyze
    from proxy.authz.decide import stars_needing_schema

    d = _policy(tmp_path, "grants:\n"
                " - {subject: user:c, grant: hr.t, privileges: [SELECT], columns: [a, b]}\n"
                " - {subject: user:c, grant: hr.u, privileges: [SELECT]}\n")
    grants = GrantSet(load_policy_dir(d).grants)
    star = analyze("SELECT * FROM t JOIN u ON u.id = t.a", "hr")
    t = TableRef("hr", "t")
    assert stars_needing_schema(star, Principal("c"), grants, NOW) == {t}  # u is granted whole
    assert not decide(star, Principal("c"), grants, NOW).allowed  # columns unknown: refused
    assert decide(star, Principal("c"), grants, NOW, table_columns={t: frozenset({"a", "b"})}).allowed
    more = decide(star, Principal("c"), grants, NOW, table_columns={t: frozenset({"a", "b", "ssn"})})
    assert not more.allowed and "hr.t.ssn" in more.reason
