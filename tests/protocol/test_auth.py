"""The sans-I/O authenticators (``reinhardt_ws.protocol.auth``) driven with plain
mappings: where a token rides, static tokens, signed tokens and their refusals."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

import reinhardt_ws as rw
from reinhardt_ws.protocol.auth import (
    MAX_TOKEN_LENGTH,
    BearerTokenAuth,
    SignedTokenAuth,
    TokenSigner,
    bearer_subprotocol,
    extract_token,
    parse_query,
)

SECRET = "s" * 32


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refused(reason: str) -> Any:
    return pytest.raises(rw.AuthenticationFailed, match=f"^{reason}$")


# -- extraction ------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer abc"},
    {"authorization": "bearer abc"},
    {"AUTHORIZATION": "  BEARER   abc  "},
    CIMultiDict([("Authorization", "Bearer abc")]),
])
def test_token_from_the_authorization_header(headers: Any) -> None:
    assert extract_token(headers) == "abc"


@pytest.mark.parametrize(("value", "reason"), [
    ("Bearer", "malformed Authorization header"),
    ("Bearer ", "malformed Authorization header"),
    ("Bearer a b", "malformed Authorization header"),
    ("Basic dXNlcjpwYXNz", "token required"),  # another scheme: no bearer token
])
def test_bad_authorization_headers(value: str, reason: str) -> None:
    with refused(reason):
        extract_token({"Authorization": value})


def test_token_from_the_query() -> None:
    assert parse_query("/ws?room=a&token=t%2Bx&token=second") == {"room": "a", "token": "t+x"}
    assert parse_query("/ws") == {}
    assert extract_token({}, {"token": "abc"}, source="query") == "abc"
    assert extract_token({}, {"t": "abc"}, source="query", param="t") == "abc"
    with refused("empty token parameter"):
        extract_token({}, {"token": ""}, source="query")
    with refused("token required"):
        extract_token({}, None, source="query")


def test_token_from_the_subprotocol() -> None:
    offered = {"Sec-WebSocket-Protocol": f"chat, {bearer_subprotocol('abc')}"}
    assert extract_token(offered, source="subprotocol") == "abc"
    split = CIMultiDict([("Sec-WebSocket-Protocol", "chat"),
                         ("Sec-WebSocket-Protocol", "bearer.abc")])
    assert extract_token(split, source="subprotocol") == "abc"
    with refused("more than one bearer subprotocol offered"):
        extract_token({"Sec-WebSocket-Protocol": "bearer.a, bearer.b"}, source="subprotocol")
    with refused("empty bearer subprotocol"):
        extract_token({"Sec-WebSocket-Protocol": "chat, bearer."}, source="subprotocol")
    with refused("token required"):
        extract_token({"Sec-WebSocket-Protocol": "chat"}, source="subprotocol")


def test_sources_are_tried_in_order() -> None:
    headers = {"Authorization": "Bearer from-header", "Sec-WebSocket-Protocol": "bearer.sub"}
    query = {"token": "from-query"}
    assert extract_token(headers, query, source=("query", "header")) == "from-query"
    assert extract_token(headers, query, source=("subprotocol", "query")) == "sub"
    assert extract_token({}, query, source=("header", "subprotocol", "query")) == "from-query"
    with pytest.raises(ValueError, match="cookie"):
        extract_token({}, source="cookie")
    with pytest.raises(ValueError):
        extract_token({}, source=())


def test_an_oversized_token_is_refused_unread() -> None:
    with refused("malformed token"):
        extract_token({}, {"token": "x" * (MAX_TOKEN_LENGTH + 1)}, source="query")


# -- static tokens -------------------------------------------------------------------------


@dataclass
class FakeHandshake:
    """What the async hooks read from a connection: its path and headers."""

    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)


def test_bearer_token_auth() -> None:
    auth = BearerTokenAuth({"tok-a": "alice", "tok-b": {"name": "bob"}})
    assert auth.check({"Authorization": "Bearer tok-a"}) == "alice"
    assert auth.check({"Authorization": "Bearer tok-b"}) == {"name": "bob"}
    with refused("unknown token"):
        auth.check({"Authorization": "Bearer tok-c"})
    with refused("unknown token"):
        auth.check({"Authorization": "Bearer tok-"})  # a prefix of a known token
    with refused("token required"):
        auth.check({})
    by_query = BearerTokenAuth({"tok-a": "alice"}, source="query")
    assert asyncio.run(by_query(FakeHandshake("/ws?token=tok-a"))) == "alice"
    with refused("token required"):
        by_query.check({"Authorization": "Bearer tok-a"}, {})


def test_bearer_token_auth_validates_its_table() -> None:
    with pytest.raises(ValueError):
        BearerTokenAuth({})
    with pytest.raises(ValueError):
        BearerTokenAuth({"": "x"})
    with pytest.raises(ValueError, match="None"):
        BearerTokenAuth({"t": None})
    with pytest.raises(ValueError):
        BearerTokenAuth({"t": "x"}, source="body")


# -- signed tokens ----------------------------------------------------------------------


def test_sign_and_verify() -> None:
    clock = Clock()
    signer = TokenSigner(SECRET, clock=clock)
    token = signer.sign("alice", ttl=60, rooms=["lobby"], admin=False)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    claims = signer.verify(token)
    assert claims == {"sub": "alice", "iat": int(clock.now), "exp": int(clock.now) + 60,
                      "rooms": ["lobby"], "admin": False}
    # Another signer with the same secret (another process) verifies it too.
    assert TokenSigner(SECRET.encode(), clock=clock).verify(token) == claims


def test_expiry() -> None:
    clock = Clock()
    signer = TokenSigner(SECRET, clock=clock)
    token = signer.sign("alice", ttl=10)
    clock.now += 9.5
    assert signer.verify(token)["sub"] == "alice"
    clock.now += 0.5
    with refused("token expired"):
        signer.verify(token)
    assert TokenSigner(SECRET, clock=clock, leeway=5).verify(token)["sub"] == "alice"


def test_bad_signature() -> None:
    token = TokenSigner(SECRET).sign("alice")
    with refused("bad token signature"):
        TokenSigner("t" * 32).verify(token)
    # A payload altered by hand, re-encoded cleanly: the signature no longer fits.
    payload, _, mac = token.partition(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "root"
    forged = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    with refused("bad token signature"):
        TokenSigner(SECRET).verify(f"{forged}.{mac}")


def test_key_rotation() -> None:
    old = TokenSigner("o" * 32).sign("alice")
    rotated = TokenSigner("n" * 32, previous=["o" * 32])
    assert rotated.verify(old)["sub"] == "alice"
    assert TokenSigner("n" * 32).verify(rotated.sign("bob"))["sub"] == "bob"  # signs with new


@pytest.mark.parametrize("token", [
    "", ".", "abc", "abc.", ".abc", "a.b.c", "abc.def", "ab$c.def", "abc.d=ef",
    "x" * (MAX_TOKEN_LENGTH + 1), 12, None, b"abc.def",
])
def test_malformed(token: Any) -> None:
    with refused("malformed token"):
        TokenSigner(SECRET).verify(token)


def test_a_signed_payload_that_is_not_a_claim_set_is_malformed() -> None:
    import hashlib
    import hmac

    def signed(body: bytes) -> str:
        payload = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
        mac = hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).digest()
        return f"{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"

    signer = TokenSigner(SECRET)
    for body in (b"not json", b"[1]", b'{"exp": 1e300}', b'{"sub": "", "exp": 1}',
                 b'{"sub": "a", "exp": true}', b'{"sub": "a"}', b'{"sub": 1, "exp": 1}'):
        with refused("malformed token"):
            signer.verify(signed(body))
    assert signer.verify(signed(b'{"sub": "a", "exp": 1e12}'))["sub"] == "a"


def test_signer_validates_its_input() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TokenSigner("short")
    with pytest.raises(ValueError, match="32 bytes"):
        TokenSigner(SECRET, previous=["short"])
    signer = TokenSigner(SECRET)
    with pytest.raises(ValueError):
        signer.sign("")
    with pytest.raises(ValueError):
        signer.sign("a", ttl=0)
    with pytest.raises(ValueError):
        signer.sign("a", ttl=float("nan"))
    with pytest.raises(ValueError, match="exp"):
        signer.sign("a", exp=1)
    with pytest.raises(TypeError):
        signer.sign("a", obj=object())
    assert signer.verify(signer.sign("a", subject="b"))["subject"] == "b"  # a claim like any


def test_signed_token_auth() -> None:
    signer = TokenSigner(SECRET)
    auth = SignedTokenAuth(signer)  # query, then subprotocol
    token = signer.sign("alice", ttl=60)
    assert auth.check({}, {"token": token})["sub"] == "alice"
    assert auth.check({"Sec-WebSocket-Protocol": f"chat, bearer.{token}"})["sub"] == "alice"
    conn = FakeHandshake(f"/ws?token={token}")
    assert asyncio.run(auth(conn))["sub"] == "alice"
    with refused("token required"):
        auth.check({"Authorization": f"Bearer {token}"})  # not a source it reads
    assert SignedTokenAuth(signer, source="header").check(
        {"Authorization": f"Bearer {token}"})["sub"] == "alice"
    with refused("bad token signature"):
        auth.check({}, {"token": TokenSigner("x" * 32).sign("alice")})
    with pytest.raises(TypeError):
        SignedTokenAuth(SECRET)  # type: ignore[arg-type]


# -- properties --------------------------------------------------------------------------

B64_AND_DOTS = st.text(alphabet="ABCabcxyz0189-_.=", max_size=200)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=300), B64_AND_DOTS, st.binary(max_size=50), st.integers(),
                 st.none(), st.lists(st.text(max_size=5), max_size=3)))
def test_verify_raises_only_authentication_failed(candidate: Any) -> None:
    try:
        TokenSigner(SECRET).verify(candidate)
    except rw.AuthenticationFailed as exc:
        assert exc.code == 3000
        assert str(exc) in ("malformed token", "bad token signature", "token expired")
    else:
        raise AssertionError(f"accepted {candidate!r}")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_altered_character_is_refused(data: st.DataObject) -> None:
    signer = TokenSigner(SECRET)
    token = signer.sign(data.draw(st.text(min_size=1, max_size=20)), ttl=60,
                        note=data.draw(st.text(max_size=20)))
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters().filter(lambda c: c != token[index]))
    with pytest.raises(rw.AuthenticationFailed):
        signer.verify(token[:index] + replacement + token[index + 1:])


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=50),
       st.dictionaries(st.text(max_size=10).filter(lambda k: k not in ("sub", "iat", "exp",
                                                                       "ttl")),
                       st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53),
                                 st.text(max_size=20)), max_size=5))
def test_round_trip(subject: str, claims: dict[str, Any]) -> None:
    signer = TokenSigner(SECRET)
    token = signer.sign(subject, ttl=60, **claims)
    got = signer.verify(token)
    assert got["sub"] == subject
    assert {k: got[k] for k in claims} == claims
    assert extract_token({"Sec-WebSocket-Protocol": f"chat, {bearer_subprotocol(token)}"},
                         source="subprotocol") == token


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["Authorization", "authorization",
                                        "Sec-WebSocket-Protocol", "X-Other"]),
                       st.text(max_size=60), max_size=3),
       st.dictionaries(st.sampled_from(["token", "t"]), st.text(max_size=60), max_size=2))
def test_authenticators_raise_only_authentication_failed(headers: dict[str, str],
                                                         query: dict[str, str]) -> None:
    for auth in (BearerTokenAuth({"known": "k"}, source=("header", "subprotocol", "query")),
                 SignedTokenAuth(TokenSigner(SECRET), source=("header", "subprotocol",
                                                                "query"))):
        try:
            auth.check(headers, query)
        except rw.AuthenticationFailed:
            pass


def test_refusal_codes() -> None:
    assert (rw.AuthenticationFailed().code, rw.PermissionDenied().code) == (3000, 3003)
    assert rw.AuthenticationFailed("x", code=4401).code == 4401
    assert rw.PermissionDenied("x", code=1008).code == 1008
    for code in (1005, 1006, 2999, 5000, 999):
        with pytest.raises(ValueError, match=str(code)):
            rw.AuthenticationFailed("x", code=code)
