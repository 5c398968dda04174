"""Personal tokens: issue, verify, refuse. Real crypto, a fixed clock, a real local JWKS server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.identity.personal_tokens import (
    MAX_TOKEN_CHARS,
    PUBLIC_MESSAGE,
    IssuerConfig,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    generate_ed25519_keypair,
)

ISS = "https://jitproxy.test"
AUD = "jitproxy"
MAX_TTL = timedelta(hours=1)
T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def _pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    priv, pub = tmp_path / "issuer.key", tmp_path / "issuer.pub"
    generate_ed25519_keypair(priv, pub)
    return priv, pub


@pytest.fixture
def signing_key(keypair: tuple[Path, Path]) -> ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(keypair[0].read_bytes(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(keypair: tuple[Path, Path], clock: Clock) -> TokenIssuer:
    return TokenIssuer(keypair[0].read_bytes(), ISS, AUD, MAX_TTL, clock)


@pytest.fixture
def local_cfg(keypair: tuple[Path, Path]) -> IssuerConfig:
    return IssuerConfig(ISS, AUD, ("EdDSA",), public_key_pem=keypair[1].read_bytes())


@pytest.fixture
def verifier(local_cfg: IssuerConfig, clock: Clock) -> TokenVerifier:
    return TokenVerifier([local_cfg], max_ttl=MAX_TTL, clock=clock)


def claims(**overrides: Any) -> dict[str, Any]:
    iat = int(T0.timestamp())
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "alice", "groups": ["dev"],
                            "iat": iat, "nbf": iat, "exp": iat + 600, "jti": "jti-1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def mint(key: Any, payload: dict[str, Any], alg: str = "EdDSA", **headers: Any) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=headers or None)


def _seg(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def expect_refused(code: str, call: Callable[[], Any], token: str | bytes,
                   secrets: tuple[str, ...] = ()) -> TokenError:
    """The call fails with `code`; nothing the client or a log could see carries token data."""
    with pytest.raises(TokenError) as info:
        call()
    err = info.value
    assert err.code == code
    assert err.public_message == PUBLIC_MESSAGE
    assert str(err) == PUBLIC_MESSAGE
    shown = str(err) + repr(err) + " ".join(map(str, err.args))
    tok = token.decode("latin-1") if isinstance(token, bytes) else token
    for part in [tok, *tok.split(".")] + list(secrets):
        if len(part) >= 3:
            assert part not in shown
    assert err.__cause__ is None  # no PyJWT text chained to it
    assert err.__context__ is None or err.__suppress_context__
    return err


# --- key material --------------------------------------------------------------------------------


def test_keypair_files(keypair: tuple[Path, Path], tmp_path: Path) -> None:
    priv, pub = keypair
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert b"PRIVATE KEY" in priv.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    key = serialization.load_pem_private_key(priv.read_bytes(), password=None)
    assert _pem_public(key) == pub.read_bytes()
    with pytest.raises(FileExistsError):
        generate_ed25519_keypair(priv, tmp_path / "other.pub")
    with pytest.raises(ValueError, match="Ed25519"):
        TokenIssuer(rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), ISS, AUD, MAX_TTL)


def test_issuer_repr_hides_key(issuer: TokenIssuer, keypair: tuple[Path, Path]) -> None:
    assert "PRIVATE" not in repr(issuer) and issuer.key_id in repr(issuer)
    assert issuer.public_key_pem == keypair[1].read_bytes()


# --- issue ---------------------------------------------------------------------------------------


def test_round_trip(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue("alice", ["dev", "oncall", "dev"], ttl=timedelta(minutes=15))
    p = verifier.verify("alice", token)
    assert p.user == "alice"
    assert p.groups == ("dev", "oncall")
    assert p.token_expires_at == T0 + timedelta(minutes=15)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert p.token_id == payload["jti"] and len(payload["jti"]) >= 20
    assert payload["nbf"] == payload["iat"] == int(T0.timestamp())
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": issuer.key_id, "typ": "JWT"}
    assert verifier.verify("bob", issuer.issue("bob", ttl=MAX_TTL)).groups == ()
    assert issuer.issue("alice", ttl=MAX_TTL) != issuer.issue("alice", ttl=MAX_TTL)  # random jti


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-5), timedelta(milliseconds=500),
                                 MAX_TTL + timedelta(seconds=1), timedelta(days=30)])
def test_issue_refuses_ttl(issuer: TokenIssuer, ttl: timedelta) -> None:
    with pytest.raises(ValueError, match=r"max_ttl \(1:00:00\)"):
        issuer.issue("alice", ttl=ttl)


@pytest.mark.parametrize("user", ["", "a" * 81, "alice smith", "alice\x00", "al'ice", "ålice",
                                  "alice;drop"])
def test_issue_refuses_bad_user(issuer: TokenIssuer, user: str) -> None:
    with pytest.raises(ValueError, match="user name"):
        issuer.issue(user, ttl=MAX_TTL)


def test_issue_refuses_bad_groups(issuer: TokenIssuer) -> None:
    with pytest.raises(ValueError, match="group name"):
        issuer.issue("alice", ["ok", "not ok"], ttl=MAX_TTL)
    with pytest.raises(ValueError, match="not a string"):
        issuer.issue("alice", "dev", ttl=MAX_TTL)
    assert issuer.issue("a.b_c-d@example.com", ["g-1.x"], ttl=MAX_TTL)


# --- time ----------------------------------------------------------------------------------------


def test_expired_when_clock_moves(issuer: TokenIssuer, verifier: TokenVerifier,
                                  clock: Clock) -> None:
    token = issuer.issue("alice", ttl=timedelta(minutes=5))
    clock.advance(timedelta(minutes=5, seconds=29))  # inside the 30 s leeway
    assert verifier.verify("alice", token).user == "alice"
    clock.advance(timedelta(seconds=1))
    expect_refused("expired", lambda: verifier.verify("alice", token), token)


def test_not_yet_valid(signing_key: Any, verifier: TokenVerifier, clock: Clock) -> None:
    now = int(T0.timestamp())
    token = mint(signing_key, claims(nbf=now + 120))
    expect_refused("not_yet_valid", lambda: verifier.verify("alice", token), token)
    clock.advance(timedelta(seconds=90))  # nbf now 30 s ahead: within leeway
    assert verifier.verify("alice", token).user == "alice"


def test_iat_in_future_beyond_leeway(signing_key: Any, verifier: TokenVerifier) -> None:
    now = int(T0.timestamp())
    ahead = mint(signing_key, claims(iat=now + 31, nbf=_DROP, exp=now + 600))
    expect_refused("not_yet_valid", lambda: verifier.verify("alice", ahead), ahead)
    slight = mint(signing_key, claims(iat=now + 30, nbf=_DROP, exp=now + 600))
    assert verifier.verify("alice", slight).user == "alice"


def test_ttl_over_max_at_verify(signing_key: Any, verifier: TokenVerifier) -> None:
    now = int(T0.timestamp())
    long = mint(signing_key, claims(exp=now + 3601))
    expect_refused("ttl_too_long", lambda: verifier.verify("alice", long), long)
    exact = mint(signing_key, claims(exp=now + 3600))
    assert verifier.verify("alice", exact).user == "alice"
    backwards = mint(signing_key, claims(exp=now, iat=now + 10))
    expect_refused("invalid_claim", lambda: verifier.verify("alice", backwards), backwards)


@pytest.mark.parametrize("claim,value", [("exp", "soon"), ("iat", True), ("nbf", "now"),
                                         ("exp", 10**400), ("iat", None)])
def test_time_claims_must_be_numbers(signing_key: Any, verifier: TokenVerifier, claim: str,
                                     value: Any) -> None:
    token = mint(signing_key, claims(**{claim: value}))
    with pytest.raises(TokenError) as info:
        verifier.verify("alice", token)
    assert info.value.code in {"invalid_claim", "missing_claim", "malformed"}


# --- signatures and algorithms -------------------------------------------------------------------


def test_wrong_signature(verifier: TokenVerifier) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    token = mint(other, claims())
    expect_refused("bad_signature", lambda: verifier.verify("alice", token), token)


def test_tampered_payload(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue("alice", ["dev"], ttl=MAX_TTL)
    header, payload, sig = token.split(".")
    body = jwt.decode(token, options={"verify_signature": False})
    body["groups"] = ["dba"]
    forged = ".".join([header, _seg(body), sig])
    expect_refused("bad_signature", lambda: verifier.verify("alice", forged), forged)
    stripped = ".".join([header, payload, ""])
    expect_refused("bad_signature", lambda: verifier.verify("alice", stripped), stripped)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", "HS256", "RS256", "ES256", None, 7])
def test_header_alg_not_allowed(verifier: TokenVerifier, alg: Any) -> None:
    token = ".".join([_seg({"alg": alg, "typ": "JWT"}), _seg(claims()), ""])
    expect_refused("algorithm", lambda: verifier.verify("alice", token), token)


def test_alg_none_from_pyjwt(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), None, algorithm="none")
    expect_refused("algorithm", lambda: verifier.verify("alice", token), token)


def test_hmac_with_public_key_as_secret(keypair: tuple[Path, Path],
                                        verifier: TokenVerifier) -> None:
    """Key confusion: HS256 'signed' with the issuer's public PEM (PyJWT itself refuses to mint
    this, so it is built by hand)."""
    public_pem = keypair[1].read_bytes()
    signing_input = f"{_seg({'alg': 'HS256', 'typ': 'JWT'})}.{_seg(claims())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    expect_refused("algorithm", lambda: verifier.verify("alice", token), token)


# --- claims --------------------------------------------------------------------------------------


def test_wrong_issuer_and_audience(signing_key: Any, verifier: TokenVerifier) -> None:
    token = mint(signing_key, claims(iss="https://evil.test"))
    expect_refused("wrong_issuer", lambda: verifier.verify("alice", token), token,
                   ("evil.test",))
    prefix = mint(signing_key, claims(iss=ISS[:-1]))  # not a prefix match
    expect_refused("wrong_issuer", lambda: verifier.verify("alice", prefix), prefix)
    token = mint(signing_key, claims(aud="other-service"))
    expect_refused("wrong_audience", lambda: verifier.verify("alice", token), token,
                   ("other-service",))
    token = mint(signing_key, claims(aud=["other", 5]))
    expect_refused("wrong_audience", lambda: verifier.verify("alice", token), token)
    # PyJWT will not mint a non-string iss
    token = ".".join([_seg({"alg": "EdDSA"}), _seg(claims(iss=[ISS])), "c2ln"])
    expect_refused("invalid_claim", lambda: verifier.verify("alice", token), token)


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "aud", "iss"])
def test_missing_required_claim(signing_key: Any, verifier: TokenVerifier, claim: str) -> None:
    token = mint(signing_key, claims(**{claim: _DROP}))
    expect_refused("missing_claim", lambda: verifier.verify("alice", token), token)


def test_user_must_match_exactly(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue("alice", ttl=MAX_TTL)
    expect_refused("user_mismatch", lambda: verifier.verify("bob", token), token,
                   ("alice",))
    for name in ["Alice", "ALICE", "alice ", " alice", "alice\x00", ""]:
        expect_refused("user_mismatch", lambda n=name: verifier.verify(n, token), token)


def test_sub_must_be_a_valid_name(signing_key: Any, verifier: TokenVerifier) -> None:
    token = mint(signing_key, claims(sub="al ice"))
    expect_refused("invalid_claim", lambda: verifier.verify("al ice", token), token)
    token = mint(signing_key, claims(sub=42))
    expect_refused("invalid_claim", lambda: verifier.verify("42", token), token)


@pytest.mark.parametrize("groups", ["dba", {"dba": True}, ["dev", 1], [["dba"]], [""],
                                    ["dev\nroot"], ["g"] * 257])
def test_groups_must_be_list_of_strings(signing_key: Any, verifier: TokenVerifier,
                                        groups: Any) -> None:
    token = mint(signing_key, claims(groups=groups))
    expect_refused("invalid_claim", lambda: verifier.verify("alice", token), token)


def test_groups_absent_or_null(signing_key: Any, verifier: TokenVerifier) -> None:
    assert verifier.verify("alice", mint(signing_key, claims(groups=_DROP))).groups == ()
    assert verifier.verify("alice", mint(signing_key, claims(groups=None))).groups == ()
    assert verifier.verify("alice", mint(signing_key, claims(jti=_DROP))).token_id is None


def test_bad_jti(signing_key: Any, verifier: TokenVerifier) -> None:
    for jti in [5, "", "x" * 129]:
        token = mint(signing_key, claims(jti=jti))
        expect_refused("invalid_claim", lambda t=token: verifier.verify("alice", t), token)


# --- hostile input -------------------------------------------------------------------------------


def test_too_long(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue("alice", ttl=MAX_TTL)
    long = token + "A" * (MAX_TOKEN_CHARS - len(token) + 1)
    expect_refused("too_long", lambda: verifier.verify("alice", long), long)
    expect_refused("too_long", lambda: verifier.verify("alice", long.encode()), long.encode())
    huge = "." * 10_000_000
    expect_refused("too_long", lambda: verifier.verify("alice", huge), "x")
    assert verifier.verify("alice", token.encode()).user == "alice"


@pytest.mark.parametrize("garbage", [
    "", "abc", "a.b", "a.b.c", "...", "a..c", "Bearer abc.def.ghi", "abc.def.ghi ",
    "eyJhbGciOiJFZERTQSJ9.e30.", "e30.e30.e30", "W10.W10.", "bnVsbA.bnVsbA.",
    "eyJhbGciOiJFZERTQSJ9.ZGVm.abc", "é.é.é", "a.b.c.d.e", "=.=.=", "\x00\x00",
])
def test_garbage(verifier: TokenVerifier, garbage: str) -> None:
    # "{}" as header and payload: well-formed JSON, so the first failure is the missing `iss`
    empty_claims = {"e30.e30.e30", "eyJhbGciOiJFZERTQSJ9.e30."}
    code = "missing_claim" if garbage in empty_claims else "malformed"
    expect_refused(code, lambda: verifier.verify("alice", garbage), garbage)


def test_garbage_bytes(verifier: TokenVerifier) -> None:
    expect_refused("malformed", lambda: verifier.verify("alice", b"\xff\xfe.a.b"), b"\xff\xfe.a.b")
    not_text: Any = 12345
    expect_refused("malformed", lambda: verifier.verify("alice", not_text), "12345")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.from_regex(r"[A-Za-z0-9_=.-]{0,200}", fullmatch=True)))
def test_fuzz_only_token_errors(text: str) -> None:
    v = TokenVerifier([IssuerConfig(ISS, AUD, ("EdDSA",), public_key_pem=_FUZZ_PUB)],
                      max_ttl=MAX_TTL, clock=Clock())
    with pytest.raises(TokenError):
        v.verify("alice", text)


_FUZZ_PUB = _pem_public(ed25519.Ed25519PrivateKey.generate())


# --- configuration -------------------------------------------------------------------------------


def test_issuer_config_rejects_mixed_families() -> None:
    with pytest.raises(ValueError, match="mix families"):
        IssuerConfig(ISS, AUD, ("HS256", "RS256"), jwks_uri="https://idp.test/jwks")
    with pytest.raises(ValueError, match="mix families"):
        IssuerConfig(ISS, AUD, ("RS256", "EdDSA"), jwks_uri="https://idp.test/jwks")
    with pytest.raises(ValueError, match="HMAC"):
        IssuerConfig(ISS, AUD, ("HS256",), jwks_uri="https://idp.test/jwks")
    with pytest.raises(ValueError, match="'none'"):
        IssuerConfig(ISS, AUD, ("none",), jwks_uri="https://idp.test/jwks")
    with pytest.raises(ValueError, match="unknown algorithm"):
        IssuerConfig(ISS, AUD, ("RS1",), jwks_uri="https://idp.test/jwks")
    assert IssuerConfig(ISS, AUD, ("RS256", "PS256"), jwks_uri="https://idp.test/jwks")


def test_issuer_config_key_source(keypair: tuple[Path, Path]) -> None:
    pem = keypair[1].read_bytes()
    with pytest.raises(ValueError, match="exactly one"):
        IssuerConfig(ISS, AUD, ("EdDSA",))
    with pytest.raises(ValueError, match="exactly one"):
        IssuerConfig(ISS, AUD, ("EdDSA",), public_key_pem=pem, jwks_uri="https://idp.test/j")
    with pytest.raises(ValueError, match="does not fit"):
        IssuerConfig(ISS, AUD, ("RS256",), public_key_pem=pem)
    p384 = _pem_public(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError, match="ES256"):
        IssuerConfig(ISS, AUD, ("ES256",), public_key_pem=p384)
    with pytest.raises(ValueError):
        IssuerConfig(ISS, AUD, ("EdDSA",), public_key_pem=keypair[0].read_bytes())  # private
    for uri in ["http://idp.test/jwks", "file:///etc/jwks.json", "ftp://idp/jwks"]:
        with pytest.raises(ValueError, match="https"):
            IssuerConfig(ISS, AUD, ("RS256",), jwks_uri=uri)
    assert IssuerConfig(ISS, AUD, ("RS256",), jwks_uri="http://[::1]:8080/jwks")


def test_verifier_config(local_cfg: IssuerConfig) -> None:
    with pytest.raises(ValueError, match="twice"):
        TokenVerifier([local_cfg, local_cfg], max_ttl=MAX_TTL)
    with pytest.raises(ValueError, match="at least one"):
        TokenVerifier([], max_ttl=MAX_TTL)
    with pytest.raises(ValueError, match="max_ttl"):
        TokenVerifier([local_cfg], max_ttl=timedelta(0))
    assert "PUBLIC" not in repr(TokenVerifier([local_cfg], max_ttl=MAX_TTL))


# --- OIDC / JWKS ---------------------------------------------------------------------------------

OIDC_ISS = "https://idp.test/realms/dev"
OIDC_AUD = "jitproxy-oidc"


class JwksServer:
    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.hits += 1
                body = json.dumps(owner.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture
def jwks_server(rsa_key: rsa.RSAPrivateKey) -> Iterator[JwksServer]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(),
                                               as_dict=True)
    keys = [{**jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"},
            {**ec_jwk, "kid": "ec-1", "use": "sig"},
            {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "kid": "oct-1"}]
    with JwksServer({"keys": keys}) as server:
        yield server


@pytest.fixture
def oidc_verifier(jwks_server: JwksServer, clock: Clock) -> TokenVerifier:
    cfg = IssuerConfig(OIDC_ISS, OIDC_AUD, ("RS256",), jwks_uri=jwks_server.url,
                       groups_claim="roles", jwks_timeout_s=2.0)
    return TokenVerifier([cfg], max_ttl=MAX_TTL, clock=clock)


def oidc_claims(**overrides: Any) -> dict[str, Any]:
    return claims(iss=OIDC_ISS, aud=OIDC_AUD, groups=_DROP, roles=["readers"], **overrides)


def test_jwks_good_token(rsa_key: Any, oidc_verifier: TokenVerifier,
                         jwks_server: JwksServer) -> None:
    token = mint(rsa_key, oidc_claims(), "RS256", kid="rsa-1")
    for _ in range(3):
        p = oidc_verifier.verify("alice", token)
        assert (p.user, p.groups, p.token_id) == ("alice", ("readers",), "jti-1")
    assert jwks_server.hits == 1  # the key set is cached


def test_jwks_verify_async(rsa_key: Any, oidc_verifier: TokenVerifier, jwks_server: JwksServer,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    token = mint(rsa_key, oidc_claims(), "RS256", kid="rsa-1")
    assert asyncio.run(oidc_verifier.verify_async("alice", token)).groups == ("readers",)
    assert jwks_server.hits == 1

    def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cached key must not need a worker thread")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    assert asyncio.run(oidc_verifier.verify_async("alice", token)).user == "alice"
    assert jwks_server.hits == 1


def test_jwks_unknown_kid(rsa_key: Any, oidc_verifier: TokenVerifier,
                          jwks_server: JwksServer) -> None:
    token = mint(rsa_key, oidc_claims(), "RS256", kid="rotated-away")
    expect_refused("unknown_key", lambda: oidc_verifier.verify("alice", token), token)
    expect_refused("unknown_key",
                   lambda: asyncio.run(oidc_verifier.verify_async("alice", token)), token)
    no_kid = mint(rsa_key, oidc_claims(), "RS256")
    expect_refused("unknown_key", lambda: oidc_verifier.verify("alice", no_kid), no_kid)
    assert jwks_server.hits == 1  # unknown kids do not hammer the IdP (PyJWT cooldown)


def test_jwks_kid_of_other_key_type(rsa_key: Any, oidc_verifier: TokenVerifier) -> None:
    for kid in ["ec-1", "oct-1"]:
        token = mint(rsa_key, oidc_claims(), "RS256", kid=kid)
        expect_refused("algorithm", lambda t=token: oidc_verifier.verify("alice", t), token)


def test_jwks_wrong_key_and_expiry(rsa_key: Any, oidc_verifier: TokenVerifier,
                                   clock: Clock) -> None:
    other = rsa.generate_private_key(65537, 2048)
    forged = mint(other, oidc_claims(), "RS256", kid="rsa-1")
    expect_refused("bad_signature", lambda: oidc_verifier.verify("alice", forged), forged)
    token = mint(rsa_key, oidc_claims(), "RS256", kid="rsa-1")
    assert oidc_verifier.verify("alice", token).user == "alice"
    clock.advance(timedelta(minutes=11))
    expect_refused("expired", lambda: oidc_verifier.verify("alice", token), token)
    ps = mint(rsa_key, oidc_claims(), "PS256", kid="rsa-1")  # same family, not configured
    expect_refused("algorithm", lambda: oidc_verifier.verify("alice", ps), ps)


def test_jwks_server_down(rsa_key: Any, clock: Clock) -> None:
    with JwksServer({"keys": []}) as server:
        url = server.url
    cfg = IssuerConfig(OIDC_ISS, OIDC_AUD, ("RS256",), jwks_uri=url, jwks_timeout_s=2.0)
    v = TokenVerifier([cfg], max_ttl=MAX_TTL, clock=clock)
    token = mint(rsa_key, oidc_claims(), "RS256", kid="rsa-1")
    expect_refused("jwks_unavailable", lambda: v.verify("alice", token), token)


def test_two_issuers_use_their_own_keys(rsa_key: Any, signing_key: Any, local_cfg: IssuerConfig,
                                        jwks_server: JwksServer, clock: Clock) -> None:
    oidc = IssuerConfig(OIDC_ISS, OIDC_AUD, ("RS256",), jwks_uri=jwks_server.url)
    v = TokenVerifier([local_cfg, oidc], max_ttl=MAX_TTL, clock=clock)
    assert v.verify("alice", mint(signing_key, claims())).groups == ("dev",)
    assert v.verify("alice", mint(rsa_key, oidc_claims(), "RS256", kid="rsa-1")).user == "alice"
    # the local key's token claiming the OIDC issuer: EdDSA is not that issuer's algorithm
    cross = mint(signing_key, oidc_claims(), kid="rsa-1")
    expect_refused("algorithm", lambda: v.verify("alice", cross), cross)
    assert jwks_server.hits == 1
