"""Typed configuration, validated at start. Unknown or ill-typed keys are errors naming the key
and the file. Relative paths are resolved against the config file's directory."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from proxy.environments import NAME_PATTERN

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> timedelta:
    """`90`, `90s`, `15m`, `8h`, `2d` → timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (examples: 30s, 15m, 8h, 2d)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
EnvironmentName = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenTls(_Strict):
    cert_file: Path
    key_file: Path


class ListenConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(3307, ge=0, le=65535)
    tls: ListenTls
    handshake_timeout_s: float = Field(10.0, gt=0)
    idle_timeout_s: float = Field(8 * 3600.0, gt=0)
    max_packet_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # Before login (handshake, auth exchange): a real handshake response with connect attributes
    # is a few KB and a token a few more; a stranger gets no more memory than this per packet.
    max_handshake_packet_bytes: int = Field(64 * 1024, ge=4096)
    max_connections: int = Field(1000, ge=1)
    server_version: str | None = None  # default: the upstream's own version string
    fast_path: bool = True  # plain statements handled in the socket callbacks (protocol/fastpath.py)


class LoginFailuresConfig(_Strict):
    """Failed logins (a wrong, expired or cut-off token) slow down, then lock for a while: per
    source address (any user from it), and per person at one address (so nobody can lock a
    person out from somewhere else). Counted over `window_s`."""

    window_s: float = Field(300.0, gt=0)
    free: int = Field(5, ge=0)  # failures answered at once
    backoff_base_s: float = Field(0.5, ge=0)  # then each answer waits base * 2^(n - free), up to
    backoff_max_s: float = Field(8.0, ge=0)
    lockout_after: int = Field(20, ge=1)  # failures in the window that lock for lockout_s
    lockout_s: float = Field(300.0, gt=0)


class LimitsConfig(_Strict):
    """Connection limits with safe defaults (listen.max_connections is the total)."""

    # Connections that have not finished logging in, counted apart: silent or slow sockets fill
    # these, never the slots of people who are logged in.
    max_handshakes: int = Field(200, ge=1)
    max_handshakes_per_address: int = Field(20, ge=1)
    max_connections_per_address: int = Field(200, ge=1)
    max_connections_per_user: int = Field(50, ge=1)
    login_failures: LoginFailuresConfig = LoginFailuresConfig()


class IssuerSettings(_Strict):
    issuer: str
    audience: str = "jitproxy"
    algorithms: tuple[str, ...] = ("EdDSA",)
    public_key_file: Path | None = None
    jwks_uri: str | None = None
    groups_claim: str = "groups"
    user_claim: str = "sub"

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerSettings:
        if (self.public_key_file is None) == (self.jwks_uri is None):
            raise ValueError("set exactly one of public_key_file or jwks_uri")
        return self


class SigningSettings(_Strict):
    issuer: str = "jitproxy"
    audience: str = "jitproxy"
    private_key_file: Path
    default_ttl: Duration = timedelta(hours=8)


class IdentityConfig(_Strict):
    max_token_ttl: Duration = timedelta(hours=12)
    leeway_s: float = Field(30.0, ge=0, le=300)
    # A session lives no longer than its token: `disconnect` ends it at its first command after
    # the token's exp (+ leeway_s), telling the person to get a new token; `allow_until_idle`
    # lets an open session go on (it still ends at listen.idle_timeout_s).
    on_token_expiry: Literal["disconnect", "allow_until_idle"] = "disconnect"
    issuers: tuple[IssuerSettings, ...] = Field(min_length=1)
    signing: SigningSettings | None = None


class OidcConfig(_Strict):
    """Sign-in with the company's IdP (proxy.identity.oidc): jitproxy is the OIDC relying party
    and issues its own personal token (identity.signing) to whoever the IdP vouches for."""

    issuer: str  # the IdP's issuer URL; discovery reads {issuer}/.well-known/openid-configuration
    client_id: str
    client_secret_env: str | None = None  # a confidential client's secret (a secret: never in the file)
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    user_claim: str = "preferred_username"  # the ID token claim that becomes the jitproxy person
    groups_claim: str = "groups"  # a list of strings
    # IdP group -> jitproxy group; `only_mapped_groups`: groups absent from the map are dropped
    group_map: dict[str, str] = Field(default_factory=dict)
    only_mapped_groups: bool = False
    token_ttl: Duration = timedelta(hours=8)  # also capped by identity.max_token_ttl and the ID token's exp
    # the browser flow's redirect (this API's /v1/login/callback as the IdP reaches it)
    redirect_uri: str | None = None
    timeout_s: float = Field(10.0, gt=0, le=120)

    def client_secret(self) -> str | None:
        if self.client_secret_env is None:
            return None
        value = os.environ.get(self.client_secret_env)
        if not value:
            raise ValueError(f"oidc.client_secret_env: environment variable {self.client_secret_env} is not set")
        return value


class UpstreamTls(_Strict):
    ca_file: Path | None = None  # None: the system's trust store
    verify_hostname: bool = True
    server_name: str | None = None  # default: upstream.host


class PoolConfig(_Strict):
    max_idle: int = Field(8, ge=0)
    max_size: int = Field(200, ge=1)
    max_idle_time_s: float = Field(300.0, gt=0)
    # An idle connection older than this is pinged (COM_PING, ping_timeout_s) before a session
    # gets it: after a failover the old endpoint may hang instead of closing.
    ping_after_idle_s: float = Field(1.0, ge=0)
    ping_timeout_s: float = Field(2.0, gt=0)
    # New connections are retried with backoff (unreachable / timed out only, never a refusal)
    # until this deadline; then the client is told the database is unreachable.
    connect_deadline_s: float = Field(5.0, ge=0)
    # A new session waits at most this long for a free connection (max_size in use), then is
    # told "too many connections to <instance>, retry".
    acquire_timeout_s: float = Field(3.0, ge=0)


class IamSettings(_Strict):
    """AWS RDS IAM database authentication (`upstream.auth: iam`). Credentials: boto3's default
    chain (environment, shared profile, instance profile / IRSA, assume-role via a profile)."""

    region: str
    profile: str | None = None
    # Only to print the exact `rds-db:connect` resource ARN in errors; never needed to connect.
    account_id: str | None = None
    resource_id: str | None = None


class UpstreamConfig(_Strict):
    """One upstream database instance. Clients pick the instance by the port they connect to."""

    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    # The environment of the instance's databases (prod, test ...), and of those in another one
    # (database -> environment): what statements' audit events, the audit mode, requests,
    # approval policies and deny hints say of them (proxy.environments).
    environment: EnvironmentName | None = None
    environments: dict[Annotated[str, Field(min_length=1, max_length=64)], EnvironmentName] = {}
    listen_port: int | None = Field(None, ge=0, le=65535)  # default: listen.port
    host: str
    port: int = Field(3306, ge=1, le=65535)
    user: str
    auth: Literal["password", "iam"] = "password"
    password: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    iam: IamSettings | None = None
    tls: UpstreamTls | None = None
    connect_timeout_s: float = Field(10.0, gt=0)
    # A statement running longer is cancelled (KILL QUERY on a side connection) and the client
    # told why; None: no limit. Long-running work (migrations) belongs on an instance without one.
    statement_timeout_s: float | None = Field(None, gt=0)
    # Health pings on a connection of their own: a database that does not answer one within
    # health_timeout_s is "not responding" (/healthz degraded, new sessions fail fast, statements
    # waiting on it fail) until a ping is answered again.
    health_interval_s: float = Field(5.0, gt=0)
    health_timeout_s: float = Field(3.0, gt=0)
    # How long what the proxy read of the schema (view definitions, the columns a `*` reads) is
    # trusted. DDL through this proxy clears it at once; a view or column created elsewhere
    # (another replica, a DBA on the server) is seen within this time.
    schema_cache_ttl_s: float = Field(10.0, gt=0, le=3600)
    pool: PoolConfig = PoolConfig()

    @model_validator(mode="after")
    def _one_credential_source(self) -> UpstreamConfig:
        sources = [s for s in (self.password, self.password_file, self.password_env) if s is not None]
        if self.auth == "iam":
            if sources:
                raise ValueError("auth: iam takes no password (each connection gets a fresh IAM token)")
            if self.iam is None:
                raise ValueError("auth: iam needs an `iam:` section (at least `region`)")
            if self.tls is None or not self.tls.verify_hostname:
                raise ValueError(
                    "auth: iam needs `tls:` with verify_hostname (the token is a bearer secret; it only "
                    "travels inside verified TLS). CA bundle: https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"
                )
        else:
            if self.iam is not None:
                raise ValueError("an `iam:` section needs auth: iam")
            if len(sources) != 1:
                raise ValueError("set exactly one of password, password_file or password_env")
        return self

    def resolve_password(self) -> str:
        if self.password is not None:
            return self.password
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        assert self.password_env is not None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(f"upstream.password_env: environment variable {self.password_env} is not set")
        return value


class PoliciesConfig(_Strict):
    dirs: tuple[Path, ...] = (Path("policies"),)


class AuthzConfig(_Strict):
    # Parsing cost grows with statement size (~1 ms per KB of VALUES): statements over this are
    # denied with a clear message instead of stalling every session of the process.
    max_statement_bytes: int = Field(1024 * 1024, ge=1024)
    # Statements over this are analyzed in a worker thread, so other sessions keep moving.
    thread_offload_bytes: int = Field(16 * 1024, ge=1024)
    # `hash` masks are SHA-256 of this salt and the value. Without a salt, a low-entropy value
    # (a national id, a phone number) can be recovered by hashing every candidate. The salt
    # travels in the statement text to the upstream (DBAs see it in the processlist); people
    # behind jitproxy never see it. The environment variable named here holds it.
    mask_salt_env: str | None = None
    # When a person's last grant ends (expiry, revocation, a changed policy file): `deny` refuses
    # their next statement; `disconnect` also closes their open sessions, within one store poll
    # interval (an idle client is told why; a busy one after its current statement).
    on_expiry: Literal["deny", "disconnect"] = "deny"

    def resolve_mask_salt(self) -> str:
        if self.mask_salt_env is None:
            return ""
        value = os.environ.get(self.mask_salt_env)
        if not value:
            raise ValueError(f"authz.mask_salt_env: environment variable {self.mask_salt_env} is not set")
        return value


class AuditSinkConfig(_Strict):
    type: Literal["stdout", "file", "store"]
    path: Path | None = None  # file
    max_bytes: int = Field(0, ge=0)  # file: rotate past this size (0: never; logrotate may do it)
    backups: int = Field(5, ge=0)  # file: rotated files kept (path.1 ... path.N)
    fsync: bool = True  # file: each batch reaches the disk before fail_closed statements go on
    # fail_closed statements wait for this sink; an unrequired sink is written best effort.
    required: bool = True

    @model_validator(mode="after")
    def _path_for_file(self) -> AuditSinkConfig:
        if (self.type == "file") != (self.path is not None):
            raise ValueError("a file sink needs 'path'; stdout and store sinks take none")
        return self


class AuditConfig(_Strict):
    sinks: tuple[AuditSinkConfig, ...] = (AuditSinkConfig(type="stdout"),)
    # fail_closed: a statement's event is written by every required sink before the statement
    # is forwarded, and statements are refused while one fails. best_effort: statements run;
    # events wait in a bounded queue (max_queue) while a sink fails, then are dropped and
    # counted. off: statement events are not written (denials, sessions and admin events still
    # are). auto: fail_closed for instances that hold a prod database, best_effort otherwise.
    # (YAML reads a bare `off` as false: that means "off" here.)
    mode: Annotated[Literal["auto", "fail_closed", "best_effort", "off"],
                    BeforeValidator(lambda v: "off" if v is False else v)] = "auto"
    durable_timeout_s: float = Field(2.0, gt=0)  # fail_closed: longer than this → refused
    max_queue: int = Field(100_000, ge=1)  # events per sink waiting to be written
    max_statement_chars: int = Field(16384, ge=256)  # longer text is cut (length + SHA-256 kept)
    max_event_bytes: int = Field(65536, ge=4096)  # larger events are cut the same way, never dropped
    redact_literals: bool = False  # statement text with literals as ? (the fingerprint is kept)
    # audit.checkpoint events: every checkpoint_interval_s seconds while events are emitted, and
    # after every checkpoint_events events (0: never by that measure). A crash leaves at most the
    # events after the last checkpoint uncovered; `jitproxy audit verify` says how many.
    checkpoint_interval_s: float = Field(60.0, ge=0)
    checkpoint_events: int = Field(10_000, ge=0)


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class StoreConfig(_Strict):
    """Where JIT grants and requests live: one SQLite file (one replica, the default) or a
    PostgreSQL database shared by several replicas."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: Path = Path("state/jitproxy.db")  # sqlite; relative to the config file
    dsn_env: str | None = None  # postgres: the environment variable holding the DSN (it has a password)
    # Every replica polls the store's revision this often: an approval or a revocation made
    # anywhere bites on every replica within it.
    poll_interval_s: float = Field(0.5, gt=0, le=10)

    @model_validator(mode="after")
    def _postgres_needs_dsn(self) -> StoreConfig:
        if self.backend == "postgres" and not self.dsn_env:
            raise ValueError("a postgres store needs dsn_env (the variable holding its DSN)")
        return self

    def url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.path}"
        value = os.environ.get(self.dsn_env or "")
        if not value:
            raise ValueError(f"store.dsn_env: environment variable {self.dsn_env} is not set")
        return value


class ApiConfig(_Strict):
    """The admin API (HTTPS, the listener's certificate; personal tokens as bearer tokens)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8443, ge=0, le=65535)
    admin_groups: tuple[str, ...] = ()  # members may grant, revoke and decide any request
    auditor_groups: tuple[str, ...] = ()  # members may search the audit trail (admins may too)
    pending_ttl: Duration = timedelta(hours=24)  # an undecided request expires after this
    max_grant_duration: Duration = timedelta(days=7)  # direct grants through the API


class ConsoleConfig(_Strict):
    """The web console (proxy.console) at /console on the admin API's port and process."""

    enabled: bool = True  # false: /console is not served (the API is)
    # The API's address as people's browsers reach it (https://jitproxy.example.com:8443): the
    # links in webhook and Slack messages, and the console's IdP callback
    # ({public_url}/console/login/callback, registered with the IdP). Default: the origin of
    # oidc.redirect_uri when set; else no links (the callback: the address the browser used).
    public_url: str | None = Field(None, pattern=r"^https?://[^\s/?#<>|\"'`]+/?$")
    session_ttl: Duration = timedelta(hours=8)  # a browser session, at most (and never past its token)


class WebhookConfig(_Strict):
    name: str
    url_env: str  # the environment variable holding the URL (a Slack webhook URL is a secret)
    format: Literal["slack", "json"] = "json"
    # Break glass is subscribed to by default: an emergency grant nobody hears about is a hole
    # (an admin's direct grant, an on-call person's request, and that request's review).
    events: tuple[str, ...] = ("request.created", "request.approved", "request.denied", "request.expired",
                               "request.cancelled", "grant.break_glass", "request.break_glass", "request.reviewed")
    secret_env: str | None = None  # HMAC-SHA256 signing secret for json receivers


class NotifyConfig(_Strict):
    webhooks: tuple[WebhookConfig, ...] = ()


class SlackPerson(_Strict):
    """Who a Slack user is to jitproxy: the person (a token's user) and the groups they decide
    requests as. Slack knows no jitproxy groups and a button press carries no token, so the
    approver groups a person has in Slack are the ones written here."""

    user: str = Field(pattern=r"^[A-Za-z0-9._@-]{1,80}$")
    groups: tuple[str, ...] = ()


class SlackConfig(_Strict):
    """Approvals from Slack (proxy.notify.slack): new requests are posted to `channel` with
    Approve / Deny buttons; Slack posts the clicks to the admin API at /v1/slack/interactions."""

    channel: str = Field(min_length=1)  # a channel id (C0123ABCD) or name the bot is a member of
    bot_token_env: str = "JITPROXY_SLACK_BOT_TOKEN"  # the variable holding the xoxb- token (a secret)
    signing_secret_env: str = "JITPROXY_SLACK_SIGNING_SECRET"  # the app's signing secret (a secret)
    # Slack user id (U0123ABCD) or the email of a Slack account (matched through users.info,
    # needs the users:read.email scope) -> the person. Anyone else's clicks are refused.
    people: dict[str, SlackPerson] = {}
    team_id: str | None = None  # set: clicks from another workspace are refused
    api_url: str = "https://slack.com/api/"  # Slack's Web API (a test's fake, an egress proxy)
    timeout_s: float = Field(10.0, gt=0, le=60)


class Config(_Strict):
    listen: ListenConfig
    identity: IdentityConfig
    limits: LimitsConfig = LimitsConfig()
    upstream: UpstreamConfig | None = None  # one instance, or:
    upstreams: tuple[UpstreamConfig, ...] = ()  # several, each on its own listen_port
    policies: PoliciesConfig = PoliciesConfig()
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()
    console: ConsoleConfig = ConsoleConfig()
    notify: NotifyConfig = NotifyConfig()
    slack: SlackConfig | None = None  # approvals from Slack
    oidc: OidcConfig | None = None  # sign-in with the company's IdP (needs identity.signing)
    authz: AuthzConfig = AuthzConfig()
    audit: AuditConfig = AuditConfig()
    log: LogConfig = LogConfig()
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _instances_are_distinct(self) -> Config:
        if (self.upstream is None) == (not self.upstreams):
            raise ValueError("set exactly one of `upstream` (one instance) or `upstreams` (a list)")
        names = [u.name for u in self.instances]
        if len(set(names)) != len(names):
            raise ValueError(f"upstreams: instance names must be unique ({', '.join(names)})")
        ports = [self.port_of(u) for u in self.instances if self.port_of(u) != 0]
        if len(set(ports)) != len(ports):
            raise ValueError("upstreams: every instance needs its own listen_port")
        return self

    @model_validator(mode="after")
    def _oidc_needs_signing(self) -> Config:
        if self.oidc is not None and self.identity.signing is None:
            raise ValueError("oidc: sign-in issues jitproxy's own tokens: set identity.signing too")
        return self

    @property
    def instances(self) -> tuple[UpstreamConfig, ...]:
        return (self.upstream,) if self.upstream is not None else self.upstreams

    def port_of(self, upstream: UpstreamConfig) -> int:
        """The port clients of this instance connect to."""
        return self.listen.port if upstream.listen_port is None else upstream.listen_port

    def console_url(self) -> str | None:
        """Where browsers reach the console's host (no trailing slash): console.public_url, else
        the origin of oidc.redirect_uri (the same API); None when unknown or the console is off."""
        if not (self.api.enabled and self.console.enabled):
            return None
        if self.console.public_url:
            return self.console.public_url.rstrip("/")
        if self.oidc is not None and self.oidc.redirect_uri:
            scheme, _, rest = self.oidc.redirect_uri.partition("://")
            host = rest.split("/", 1)[0]
            return f"{scheme}://{host}" if scheme in ("http", "https") and host else None
        return None


class ConfigError(ValueError):
    pass


def _resolve_paths(value: Any, base: Path) -> Any:
    if isinstance(value, Path):
        return value if value.is_absolute() else (base / value)
    if isinstance(value, BaseModel):
        updates = {k: _resolve_paths(getattr(value, k), base) for k in type(value).model_fields}
        return value.model_copy(update=updates)
    if isinstance(value, tuple):
        return tuple(_resolve_paths(v, base) for v in value)
    return value


def load_config(path: Path) -> Config:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    return config_from_dict(raw, path)


def config_from_dict(raw: Any, path: Path) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{path}: {key}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    cfg = _resolve_paths(cfg, path.resolve().parent)
    return cfg.model_copy(update={"source": path})
