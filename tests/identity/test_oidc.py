"""jitproxy as the OIDC relying party (proxy.identity.oidc) against a real provider on loopback
(jitproxy_demo.oidc_provider): discovery, the device flow, the code flow with PKCE, the ID token's
checks (signature, key rotation, audience, expiry, issuer), the claim mapping and the token's end."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import jwt
import pytest

from jitproxy_demo.inprocess import write_keys
from jitproxy_demo.oidc_provider import LocalOidcProvider
from proxy.identity.oidc import OidcSettings, OidcSignIn, Pending, SignInError, map_groups
from proxy.identity.personal_tokens import IssuerConfig, TokenIssuer, TokenVerifier

REDIRECT = "https://127.0.0.1:8443/v1/login/callback"


@pytest.fixture()
def provider() -> Iterator[LocalOidcProvider]:
    p = LocalOidcProvider(users={"alice": {"groups": ["engineering", "DB Admins"]}, "bob": {"groups": []}},
                          interval_s=1, browser_user="alice").start()
    yield p
    p.stop()


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_keys(tmp_path / "keys")


def sign_in(provider: LocalOidcProvider, keys: tuple[Path, Path], **settings) -> OidcSignIn:
    issuer = TokenIssuer(keys[0].read_bytes(), issuer="jitproxy", audience="jitproxy", max_ttl=timedelta(hours=12))
    s = OidcSettings(issuer=provider.issuer, client_id="jitproxy", redirect_uri=REDIRECT,
                     group_map={"DB Admins": "dba"}, **settings)
    return OidcSignIn(s, issuer)


def verifier(keys: tuple[Path, Path]) -> TokenVerifier:
    return TokenVerifier([IssuerConfig("jitproxy", "jitproxy", ("EdDSA",), public_key_pem=keys[1].read_bytes())],
                         max_ttl=timedelta(hours=12))


async def device_login(rp: OidcSignIn, provider: LocalOidcProvider, user: str):
    started = await rp.start_device()
    assert set(started) >= {"device_code", "user_code", "verification_uri", "interval"}
    with pytest.raises(Pending):
        await rp.poll_device(started["device_code"])
    # the person approves at the provider's verification page
    answer = httpx.post(started["verification_uri"], data={"user_code": started["user_code"], "username": user})
    assert answer.status_code == 200
    return await rp.poll_device(started["device_code"])


def test_device_flow_issues_a_jitproxy_token_with_mapped_groups(provider, keys) -> None:
    rp = sign_in(provider, keys)
    signed_in = asyncio.run(device_login(rp, provider, "alice"))
    assert (signed_in.user, signed_in.groups) == ("alice", ("engineering", "dba"))
    principal = verifier(keys).verify("alice", signed_in.token)
    assert principal.groups == ("engineering", "dba")
    # capped by the ID token's end (1 h here), not the configured 8 h
    assert principal.token_expires_at <= datetime.now(timezone.utc) + timedelta(hours=1, seconds=5)
    assert "token" not in repr(signed_in) or signed_in.token not in repr(signed_in)


def test_groups_follow_the_idp_between_logins_and_only_mapped_groups(provider, keys) -> None:
    rp = sign_in(provider, keys)
    assert asyncio.run(device_login(rp, provider, "alice")).groups == ("engineering", "dba")
    provider.users["alice"]["groups"] = ["sales"]
    assert asyncio.run(device_login(rp, provider, "alice")).groups == ("sales",)
    only = sign_in(provider, keys, only_mapped_groups=True)
    provider.users["alice"]["groups"] = ["sales", "DB Admins"]
    assert asyncio.run(device_login(only, provider, "alice")).groups == ("dba",)
    assert map_groups(["ok", "not a name", 3, "DB Admins"], {"DB Admins": "dba"}, False) == ("ok", "dba")


def test_a_denied_device_code_is_refused(provider, keys) -> None:
    rp = sign_in(provider, keys)

    async def denied() -> None:
        started = await rp.start_device()
        httpx.post(started["verification_uri"], data={"user_code": started["user_code"], "deny": "1"})
        await rp.poll_device(started["device_code"])

    with pytest.raises(SignInError) as e:
        asyncio.run(denied())
    assert e.value.code == "access_denied"


@pytest.mark.parametrize("overrides, code", [
    ({"aud": "another-client"}, "wrong_audience"),
    ({"exp": 1_000_000_000, "iat": 999_999_000}, "expired"),
    ({"iss": "https://evil.example.com"}, "wrong_issuer"),
])
def test_bad_id_tokens_are_refused(provider, keys, overrides, code) -> None:
    rp = sign_in(provider, keys)
    provider.id_token_overrides = overrides
    with pytest.raises(SignInError) as e:
        asyncio.run(device_login(rp, provider, "alice"))
    assert e.value.code == code


def test_an_id_token_signed_by_another_key_is_refused_and_rotation_is_followed(provider, keys) -> None:
    rp = sign_in(provider, keys)
    assert asyncio.run(device_login(rp, provider, "alice")).user == "alice"  # JWKS cached now
    provider.rotate()  # a new kid: the relying party fetches the JWKS again
    assert asyncio.run(device_login(rp, provider, "alice")).user == "alice"
    forged = jwt.encode({"iss": provider.issuer, "aud": "jitproxy", "sub": "x", "iat": 1, "exp": 4_000_000_000},
                        __import__("cryptography.hazmat.primitives.asymmetric.rsa", fromlist=["rsa"])
                        .generate_private_key(public_exponent=65537, key_size=2048),
                        algorithm="RS256", headers={"kid": provider.kid})
    with pytest.raises(SignInError) as e:
        asyncio.run(rp.verify_id_token(forged, nonce=None))
    assert e.value.code == "bad_id_token"


def test_a_discovery_document_naming_another_issuer_is_refused(provider, keys) -> None:
    issuer = TokenIssuer(keys[0].read_bytes(), issuer="jitproxy", audience="jitproxy", max_ttl=timedelta(hours=12))
    rp = OidcSignIn(OidcSettings(issuer=provider.issuer + "/other", client_id="jitproxy"), issuer)
    with pytest.raises(SignInError) as e:
        asyncio.run(rp.metadata())
    assert e.value.code in ("wrong_issuer", "idp_unavailable")
    with pytest.raises(ValueError):
        OidcSettings(issuer="http://idp.example.com", client_id="x")  # plain http off loopback


def test_an_issuer_spelled_otherwise_than_its_discovery_document_is_refused(provider, keys) -> None:
    """The same provider reached as `localhost`: its discovery document names 127.0.0.1, an
    issuer other than the configured one (OIDC Discovery §4.3), so nothing it signs is taken."""
    issuer = TokenIssuer(keys[0].read_bytes(), issuer="jitproxy", audience="jitproxy", max_ttl=timedelta(hours=12))
    other = provider.issuer.replace("127.0.0.1", "localhost")
    rp = OidcSignIn(OidcSettings(issuer=other, client_id="jitproxy"), issuer)
    with pytest.raises(SignInError) as e:
        asyncio.run(rp.start_device())
    assert e.value.code == "wrong_issuer"


def test_unusable_user_claims_and_an_ending_idp_session(provider, keys) -> None:
    rp = sign_in(provider, keys)
    provider.users["bob"]["preferred_username"] = "bob smith"
    with pytest.raises(SignInError) as e:
        asyncio.run(device_login(rp, provider, "bob"))
    assert e.value.code == "user_claim"
    provider.id_token_ttl_s = 30  # the ID token ends within the minute
    with pytest.raises(SignInError) as e:
        asyncio.run(device_login(rp, provider, "alice"))
    assert e.value.code == "idp_session_ending"


def test_browser_flow_with_pkce_and_nonce(provider, keys) -> None:
    rp = sign_in(provider, keys)

    async def browser() -> object:
        url = await rp.start_browser()
        q = parse_qs(urlparse(url).query)
        assert q["code_challenge_method"] == ["S256"] and q["nonce"] and q["state"]
        async with httpx.AsyncClient() as http:
            back = await http.get(url)  # the IdP redirects the browser back with a code
        assert back.status_code == 302
        answer = parse_qs(urlparse(back.headers["location"]).query)
        with pytest.raises(SignInError):
            await rp.finish_browser(answer["code"][0], "not-the-state")
        return await rp.finish_browser(answer["code"][0], answer["state"][0])

    signed_in = asyncio.run(browser())
    assert signed_in.user == "alice"
    assert verifier(keys).verify("alice", signed_in.token).user == "alice"


def test_the_demo_provider_asks_who_signs_in_when_nobody_is(provider, keys) -> None:
    """The demo's IdP has no preset browser user: its sign-in page asks who (escaped, the code
    flow's parameters carried through), and the code it then gives signs that person in."""
    provider.browser_user = None
    provider.known_users_only = True
    rp = sign_in(provider, keys)

    async def browser() -> object:
        url = await rp.start_browser()
        async with httpx.AsyncClient() as http:
            page = await http.get(url + "&x=%3Cscript%3E")
            assert page.status_code == 200 and "User name (alice, bob)" in page.text
            assert "<script>" not in page.text and "&lt;script&gt;" in page.text
            form = dict(re.findall(r'type=hidden name="([^"]+)" value="([^"]*)"', page.text))
            form = {k: html.unescape(v) for k, v in form.items()}
            assert (await http.post(f"{provider.issuer}/authorize", data={**form, "username": "mallory"})).status_code == 403
            back = await http.post(f"{provider.issuer}/authorize", data={**form, "username": "bob"})
        assert back.status_code == 302
        answer = parse_qs(urlparse(back.headers["location"]).query)
        return await rp.finish_browser(answer["code"][0], answer["state"][0])

    assert asyncio.run(browser()).user == "bob"
