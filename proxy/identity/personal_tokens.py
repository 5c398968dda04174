"""Personal tokens: issue short-lived JWTs locally (EdDSA); verify them and OIDC issuers' (JWKS).

A developer logs in with their user name and a token as the MySQL password. `TokenVerifier.verify`
turns that pair into a `Principal` or raises `TokenError`, whose `code` is for the audit event and
whose public message is the same generic text for every failure.

Rules:
- the token's length is capped before anything decodes it;
- the unverified `iss` picks one trusted issuer, and only that issuer's algorithms are accepted;
  each issuer has one algorithm family and one key source (a PEM public key or a JWKS URI); HMAC
  and `none` are refused when the configuration is built;
- `exp`, `iat`, `sub`, `aud`, `iss` are required, `exp - iat` may not exceed `max_ttl`, and the
  time checks use the injected clock (PyJWT's own ones read the wall clock, so they are off);
- the token's user claim must equal the MySQL user name exactly.

Nothing here logs, and no exception message or repr carries the token or a claim value.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlparse

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from proxy.authz.model import Principal

PUBLIC_MESSAGE = "Access denied: invalid or expired token"
MAX_TOKEN_CHARS = 8 * 1024
REQUIRED_CLAIMS = ("exp", "iat", "sub", "aud", "iss")
LOCAL_ALGORITHM = "EdDSA"

_NAME_RE = re.compile(r"[A-Za-z0-9._@-]{1,80}")
_COMPACT_JWS_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_GROUPS = 256
_MAX_GROUP_CHARS = 256
_MAX_JTI_CHARS = 128

# One family per key type. HMAC is listed only so that it can be refused with a clear message.
_FAMILIES: dict[str, str] = {
    **dict.fromkeys(("HS256", "HS384", "HS512"), "HMAC"),
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "RSA"),
    **dict.fromkeys(("ES256", "ES384", "ES512", "ES256K"), "EC"),
    "EdDSA": "OKP",
}
_KEY_TYPES: dict[str, tuple[type, ...]] = {
    "RSA": (rsa.RSAPublicKey,),
    "EC": (ec.EllipticCurvePublicKey,),
    "OKP": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _now_ts(clock: Callable[[], datetime]) -> float:
    now = clock()
    if now.tzinfo is None:
        raise ValueError("the clock must return timezone-aware datetimes")
    return now.timestamp()


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"{kind} name must be 1-80 characters of A-Z a-z 0-9 . _ @ -")
    return name


class TokenError(Exception):
    """A token was refused. `code` goes to the audit event; only `public_message` to the client."""

    def __init__(self, code: str, public_message: str = PUBLIC_MESSAGE) -> None:
        super().__init__(code, public_message)
        self.code = code
        self.public_message = public_message

    def __str__(self) -> str:
        return self.public_message

    def __repr__(self) -> str:
        return f"TokenError(code={self.code!r})"


def _fail(code: str) -> TokenError:
    return TokenError(code)


# The mariadb/mysql CLI's interactive prompt keeps 79 characters (80 with some builds); a token
# is ~390. A JWT's first bytes are always `eyJ` (base64 of `{"`).
TRUNCATED_LENGTHS = (79, 80)
TRUNCATED_MESSAGE = (
    "Access denied: the password is a personal token cut off at {n} characters (an interactive "
    "password prompt keeps at most 79). Use a short session password (`jitproxy password`), "
    "`jitproxy connect`, or put the token in an option file (--defaults-extra-file)"
)


def looks_truncated(token: str) -> bool:
    """A password that is the start of a JWT, of the length a prompt cuts it to."""
    return len(token) in TRUNCATED_LENGTHS and token.startswith("eyJ")


def truncated_error(length: int) -> TokenError:
    """Not a secret to say: the length is the client's, and nothing about any token is told."""
    return TokenError("truncated", TRUNCATED_MESSAGE.format(n=length))


# --- key material and the local issuer ---------------------------------------------------------


def generate_ed25519_keypair(private_path: str | os.PathLike[str],
                             public_path: str | os.PathLike[str]) -> bytes:
    """Write a new Ed25519 key pair as PEM (private file mode 0600); return the public PEM.

    Refuses to overwrite an existing file (FileExistsError): replacing a key in use is a rotation,
    not something to do by accident.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    for path, data, mode in ((private_path, private_pem, 0o600), (public_path, public_pem, 0o644)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # exact, whatever the umask
            os.write(fd, data)
        finally:
            os.close(fd)
    return public_pem


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenIssuer:
    """Mints personal tokens signed with the local Ed25519 key."""

    def __init__(self, private_key_pem: bytes, issuer: str, audience: str, max_ttl: timedelta,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("the local issuer needs an Ed25519 private key")
        if not issuer or not audience:
            raise ValueError("issuer and audience must be non-empty")
        if max_ttl <= timedelta(0):
            raise ValueError("max_ttl must be positive")
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self.max_ttl = max_ttl
        self._clock = clock
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        # RFC 7638 thumbprint: lets a verifier tell keys apart during a rotation.
        thumb = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)},
                           separators=(",", ":"), sort_keys=True)
        self.key_id = _b64url(hashlib.sha256(thumb.encode()).digest())

    @property
    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)

    def __repr__(self) -> str:
        return (f"TokenIssuer(issuer={self.issuer!r}, audience={self.audience!r}, "
                f"kid={self.key_id!r})")

    def issue(self, user: str, groups: Sequence[str] = (), *, ttl: timedelta) -> str:
        _check_name("user", user)
        if isinstance(groups, str):
            raise ValueError("groups must be a sequence of group names, not a string")
        group_list = list(dict.fromkeys(_check_name("group", g) for g in groups))
        if len(group_list) > _MAX_GROUPS:
            raise ValueError(f"at most {_MAX_GROUPS} groups")
        if ttl < timedelta(seconds=1) or ttl > self.max_ttl:
            raise ValueError(f"ttl must be between 1 second and max_ttl ({self.max_ttl})")
        iat = math.floor(_now_ts(self._clock))
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user,
            "groups": group_list,
            "iat": iat,
            "nbf": iat,
            "exp": iat + math.floor(ttl.total_seconds()),  # so that exp - iat <= ttl <= max_ttl
            "jti": secrets.token_urlsafe(16),
        }
        token = jwt.encode(claims, self._key, algorithm=LOCAL_ALGORITHM,
                           headers={"kid": self.key_id, "typ": "JWT"})
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError(f"token longer than {MAX_TOKEN_CHARS} characters (too many groups)")
        return token


# --- trusted issuers -----------------------------------------------------------------------------


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted issuer: exactly one key source, one algorithm family. Checked on construction."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    public_key_pem: bytes | None = None
    jwks_uri: str | None = None
    groups_claim: str = "groups"
    user_claim: str = "sub"
    jwks_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("issuer must be a non-empty string")
        if not isinstance(self.audience, str) or not self.audience:
            raise ValueError(f"issuer {self.issuer!r}: audience must be a non-empty string")
        algs = (self.algorithms,) if isinstance(self.algorithms, str) else tuple(self.algorithms)
        object.__setattr__(self, "algorithms", algs)
        if not algs:
            raise ValueError(f"issuer {self.issuer!r}: no algorithms")
        for alg in algs:
            if alg.lower() == "none":
                raise ValueError(f"issuer {self.issuer!r}: algorithm 'none' is never allowed")
            if alg not in _FAMILIES:
                raise ValueError(f"issuer {self.issuer!r}: unknown algorithm {alg!r} "
                                 f"(one of {', '.join(sorted(_FAMILIES))})")
        families = {_FAMILIES[a] for a in algs}
        if len(families) > 1:
            raise ValueError(f"issuer {self.issuer!r}: algorithms {list(algs)} mix families "
                             f"{sorted(families)}; one key source takes one algorithm family")
        if families == {"HMAC"}:
            raise ValueError(f"issuer {self.issuer!r}: HMAC algorithms are not accepted; "
                             "use a public-key algorithm (EdDSA, ES*, RS*, PS*)")
        if (self.public_key_pem is None) == (self.jwks_uri is None):
            raise ValueError(f"issuer {self.issuer!r}: set exactly one of public_key_pem, jwks_uri")
        if self.jwks_uri is not None:
            url = urlparse(self.jwks_uri)
            if not (url.scheme == "https" or (url.scheme == "http" and _is_loopback(url.hostname))):
                raise ValueError(f"issuer {self.issuer!r}: jwks_uri must be https "
                                 "(plain http only on a loopback address)")
            if not self.jwks_timeout_s > 0:
                raise ValueError(f"issuer {self.issuer!r}: jwks_timeout_s must be positive")
        else:
            self.load_public_key()
        if not self.groups_claim or not self.user_claim:
            raise ValueError(f"issuer {self.issuer!r}: groups_claim and user_claim must be set")

    @property
    def family(self) -> str:
        return _FAMILIES[self.algorithms[0]]

    def load_public_key(self) -> Any:
        assert self.public_key_pem is not None
        key = serialization.load_pem_public_key(self.public_key_pem)
        if not isinstance(key, _KEY_TYPES[self.family]):
            raise ValueError(f"issuer {self.issuer!r}: the public key does not fit "
                             f"algorithms {list(self.algorithms)}")
        for alg in self.algorithms:
            try:
                jwt.get_algorithm_by_name(alg).prepare_key(key)  # e.g. the curve of ES384
            except jwt.InvalidKeyError:
                raise ValueError(f"issuer {self.issuer!r}: the public key does not fit "
                                 f"algorithm {alg}") from None
        return key


class _JwksSource:
    """An issuer's JWKS: the key set is cached for `lifespan` seconds and then fetched again.

    Not `cache_keys=True`: PyJWKClient's per-kid LRU never expires, so a key the issuer has
    withdrawn from its JWKS would stay trusted for the life of the process.
    """

    def __init__(self, cfg: IssuerConfig) -> None:
        assert cfg.jwks_uri is not None
        self._cfg = cfg
        self.client = jwt.PyJWKClient(cfg.jwks_uri, cache_keys=False, cache_jwk_set=True,
                                      lifespan=300, timeout=cfg.jwks_timeout_s)

    def cached(self, kid: str) -> jwt.PyJWK | None:
        """The key from the unexpired cached set, without any network access; None on a miss."""
        cache = self.client.jwk_set_cache
        jwk_set = cache.get() if cache is not None else None
        if jwk_set is None:
            return None
        for key in jwk_set.keys:
            if key.key_id == kid and key.public_key_use in ("sig", None):
                return key
        return None

    def fetch(self, kid: str) -> jwt.PyJWK:
        """Blocking: may fetch the JWKS (refetches for unknown kids are rate-limited by PyJWT)."""
        try:
            return self.client.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError:
            raise _fail("jwks_unavailable") from None
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, jwt.PyJWKError):
            raise _fail("unknown_key") from None


@dataclass(frozen=True)
class _Pending:
    """What the unverified token says, once it has passed the checks that need no key."""

    cfg: IssuerConfig
    alg: str
    kid: str | None
    token: str = field(repr=False)


def _numeric(payload: dict[str, Any], claim: str) -> float:
    value = payload.get(claim)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail("invalid_claim")
    try:
        number = float(value)
    except OverflowError:
        raise _fail("invalid_claim") from None
    if not math.isfinite(number):
        raise _fail("invalid_claim")
    return number


class TokenVerifier:
    """Verifies tokens from a fixed list of trusted issuers against an injected clock."""

    def __init__(self, issuers: Sequence[IssuerConfig], *, max_ttl: timedelta,
                 leeway: timedelta = timedelta(seconds=30),
                 clock: Callable[[], datetime] = _utc_now) -> None:
        if not issuers:
            raise ValueError("at least one trusted issuer is needed")
        if max_ttl <= timedelta(0):
            raise ValueError("max_ttl must be positive")
        if leeway < timedelta(0):
            raise ValueError("leeway must not be negative")
        self._issuers: dict[str, IssuerConfig] = {}
        self._local_keys: dict[str, Any] = {}
        self._jwks: dict[str, _JwksSource] = {}
        for cfg in issuers:
            if cfg.issuer in self._issuers:
                raise ValueError(f"issuer {cfg.issuer!r} is configured twice")
            self._issuers[cfg.issuer] = cfg
            if cfg.public_key_pem is not None:
                self._local_keys[cfg.issuer] = cfg.load_public_key()
            else:
                self._jwks[cfg.issuer] = _JwksSource(cfg)
        self.max_ttl = max_ttl
        self.leeway = leeway
        self._clock = clock

    def __repr__(self) -> str:
        return f"TokenVerifier(issuers={list(self._issuers)!r}, max_ttl={self.max_ttl})"

    def verify(self, username: str, token: str | bytes) -> Principal:
        """Blocking. For a JWKS issuer whose key is not cached this fetches the JWKS over the
        network: on an event loop use `verify_async`."""
        pending = self._inspect(token)
        key = self._resolve_cached(pending)
        if key is None:
            key = self._jwks[pending.cfg.issuer].fetch(pending.kid or "")
        return self._finish(pending, key, username)

    async def verify_async(self, username: str | None, token: str | bytes, *,
                           instance: str | None = None, address: str | None = None) -> Principal:
        """Like `verify`; a JWKS fetch, when one is needed, runs in a worker thread. `username`
        None: a token presented without a user name (the admin API's `Authorization: Bearer`),
        the person is the token's own user claim; every other check is the same. `instance` and
        `address` (the proxy login's) bind session passwords (proxy.identity.session_passwords),
        not tokens: a token is good on every instance."""
        pending = self._inspect(token)
        key = self._resolve_cached(pending)
        if key is None:
            key = await asyncio.to_thread(self._jwks[pending.cfg.issuer].fetch, pending.kid or "")
        return self._finish(pending, key, username)

    # -- steps ------------------------------------------------------------------------------------

    def _inspect(self, token: str | bytes) -> _Pending:
        """Length, shape, unverified header and `iss`: pick the issuer and the algorithm."""
        if isinstance(token, bytes):
            if len(token) > MAX_TOKEN_CHARS:
                raise _fail("too_long")
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise _fail("malformed") from None
        if not isinstance(token, str):
            raise _fail("malformed")
        if len(token) > MAX_TOKEN_CHARS:
            raise _fail("too_long")
        if not _COMPACT_JWS_RE.fullmatch(token):
            raise truncated_error(len(token)) if looks_truncated(token) else _fail("malformed")
        try:
            header = jwt.get_unverified_header(token)
            payload = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise truncated_error(len(token)) if looks_truncated(token) else _fail("malformed") from None
        iss = payload.get("iss")
        if iss is None:
            raise _fail("missing_claim")
        if not isinstance(iss, str):
            raise _fail("invalid_claim")
        cfg = self._issuers.get(iss)
        if cfg is None:
            raise _fail("wrong_issuer")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in cfg.algorithms:
            raise _fail("algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _fail("malformed")
        if cfg.jwks_uri is not None and not kid:
            raise _fail("unknown_key")
        return _Pending(cfg, alg, kid, token)

    def _resolve_cached(self, pending: _Pending) -> Any | None:
        """The verification key without network access, or None when the JWKS must be fetched."""
        local = self._local_keys.get(pending.cfg.issuer)
        if local is not None:
            return local
        return self._jwks[pending.cfg.issuer].cached(pending.kid or "")

    def _finish(self, pending: _Pending, key: Any, username: str | None) -> Principal:
        cfg = pending.cfg
        if isinstance(key, jwt.PyJWK):
            key = key.key
        if not isinstance(key, _KEY_TYPES[cfg.family]):
            raise _fail("algorithm")  # e.g. a JWKS entry of another key type under this kid
        required = list(REQUIRED_CLAIMS)
        if cfg.user_claim not in required:
            required.append(cfg.user_claim)
        try:
            payload = jwt.decode(
                pending.token, key, algorithms=[pending.alg], audience=cfg.audience,
                issuer=cfg.issuer, leeway=0,
                options={
                    "require": required,
                    # PyJWT reads the wall clock for these; they are checked below with ours.
                    "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                    "verify_aud": True, "verify_iss": True, "verify_sub": True,
                    "verify_jti": True, "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError:
            raise _fail("bad_signature") from None
        except jwt.InvalidAlgorithmError:
            raise _fail("algorithm") from None
        except jwt.MissingRequiredClaimError:
            raise _fail("missing_claim") from None
        except jwt.InvalidAudienceError:
            raise _fail("wrong_audience") from None
        except jwt.InvalidIssuerError:
            raise _fail("wrong_issuer") from None
        except (InvalidSubjectError, InvalidJTIError):
            raise _fail("invalid_claim") from None
        except jwt.InvalidKeyError:
            raise _fail("key_rejected") from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
            raise _fail("malformed") from None
        return self._principal(cfg, payload, username)

    def _principal(self, cfg: IssuerConfig, payload: dict[str, Any], username: str | None) -> Principal:
        exp = _numeric(payload, "exp")
        iat = _numeric(payload, "iat")
        nbf = _numeric(payload, "nbf") if payload.get("nbf") is not None else None
        if exp <= iat:
            raise _fail("invalid_claim")
        if exp - iat > self.max_ttl.total_seconds():
            raise _fail("ttl_too_long")
        now = _now_ts(self._clock)
        leeway = self.leeway.total_seconds()
        if exp <= now - leeway:
            raise _fail("expired")
        if iat > now + leeway or (nbf is not None and nbf > now + leeway):
            raise _fail("not_yet_valid")

        user = payload.get(cfg.user_claim)
        if not isinstance(user, str):
            raise _fail("invalid_claim")
        if username is not None and user != username:
            raise _fail("user_mismatch")
        if not _NAME_RE.fullmatch(user):
            raise _fail("invalid_claim")

        raw_groups = payload.get(cfg.groups_claim)
        if raw_groups is None:
            raw_groups = []
        if not isinstance(raw_groups, list) or len(raw_groups) > _MAX_GROUPS:
            raise _fail("invalid_claim")
        for group in raw_groups:
            if (not isinstance(group, str) or not 0 < len(group) <= _MAX_GROUP_CHARS
                    or not group.isprintable()):
                raise _fail("invalid_claim")
        groups = tuple(dict.fromkeys(raw_groups))

        jti = payload.get("jti")
        if jti is not None and (not jti or len(jti) > _MAX_JTI_CHARS or not jti.isprintable()):
            raise _fail("invalid_claim")
        expires_at = datetime.fromtimestamp(exp, tz=timezone.utc)
        return Principal(user=user, groups=groups, token_expires_at=expires_at, token_id=jti)
