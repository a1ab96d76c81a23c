"""Built-in authenticators, without I/O: where a bearer token rides in the opening
handshake, how it is checked, and short-lived signed tokens.

A token can ride in three places (``source``):

- ``"header"``: ``Authorization: Bearer <token>``.  Browsers cannot set it on a
  WebSocket; other clients can.
- ``"query"``: ``?token=<token>`` (the parameter name is ``param``).  Works
  everywhere, but URLs end up in access logs and proxies' logs: use short-lived
  tokens there.
- ``"subprotocol"``: a ``Sec-WebSocket-Protocol`` entry ``bearer.<token>``
  (:data:`TOKEN_SUBPROTOCOL_PREFIX`), the one header a browser's
  ``new WebSocket(url, protocols)`` lets a page set.  The client offers it next
  to a real subprotocol the server lists (``["chat", "bearer." + token]``); the
  server answers with one of *its own* subprotocols, so the token is never echoed
  back (a browser refuses a 101 that selects none of the offered entries, hence
  the real one).  Tokens must then be HTTP token characters, which
  :class:`TokenSigner`'s tokens are.

:class:`BearerTokenAuth` checks static tokens in constant time;
:class:`SignedTokenAuth` checks tokens a :class:`TokenSigner` minted (HMAC-SHA256,
with an expiry, no shared database).  Both are ``authenticate`` hooks
(``serve(authenticate=BearerTokenAuth(...))``: ``await auth(conn)`` returns the
identity that becomes ``conn.user``), and both offer the same decision
synchronously, ``auth.check(headers, query)``, for a hook that runs before the
101.  Every refusal is :class:`~reinhardt_ws.AuthenticationFailed` (close code
3000) with a precise reason; nothing here raises anything else on bad input.

Nothing here imports asyncio or picows: tests drive these with plain mappings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson

from ..errors import AuthenticationFailed

__all__ = [
    "TOKEN_SUBPROTOCOL_PREFIX",
    "BearerTokenAuth",
    "SignedTokenAuth",
    "TokenSigner",
    "bearer_subprotocol",
    "extract_token",
    "parse_query",
]

TOKEN_SUBPROTOCOL_PREFIX = "bearer."
"""A ``Sec-WebSocket-Protocol`` entry carrying a token: ``bearer.<token>``."""

#: Where a token may ride; see the module's docstring.
TOKEN_SOURCES = ("header", "query", "subprotocol")

#: A :class:`TokenSigner` secret is at least this long (HMAC-SHA256's output size).
MIN_SECRET_BYTES = 32

#: Longer tokens are refused unread ("malformed token").
MAX_TOKEN_LENGTH = 4096

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_RESERVED_CLAIMS = frozenset({"sub", "iat", "exp"})


class HandshakeInfo(Protocol):
    """What the ``authenticate`` callables read from a connection: its request
    target (path and query string) and its handshake headers."""

    path: str
    headers: Mapping[str, str]


# -- where the token rides ----------------------------------------------------------


def parse_query(target: str) -> dict[str, str]:
    """The query parameters of a request target (``/ws?token=x``; for a bare query
    string pass ``"?" + qs``): the first value of each name, percent-decoded."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(target.partition("?")[2], keep_blank_values=True):
        params.setdefault(name, value)
    return params


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Every value of header *name*, joined with ", " (RFC 9110 section 5.3);
    case-insensitive whether *headers* is a multidict or a plain dict."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        values = [str(v) for v in getall(name, [])]
    else:
        values = [str(v) for k, v in headers.items() if str(k).lower() == name]
    return ", ".join(values) if values else None


def _from_header(headers: Mapping[str, str]) -> str | None:
    value = _header(headers, "authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None  # another scheme (Basic...): no bearer token here
    token = token.strip()
    if not token or " " in token or "," in token:
        raise AuthenticationFailed("malformed Authorization header")
    return token


def _from_subprotocol(headers: Mapping[str, str]) -> str | None:
    value = _header(headers, "sec-websocket-protocol")
    if value is None:
        return None
    tokens = [entry.strip()[len(TOKEN_SUBPROTOCOL_PREFIX):] for entry in value.split(",")
              if entry.strip().startswith(TOKEN_SUBPROTOCOL_PREFIX)]
    if len(tokens) > 1:
        raise AuthenticationFailed("more than one bearer subprotocol offered")
    if tokens and not tokens[0]:
        raise AuthenticationFailed("empty bearer subprotocol")
    return tokens[0] if tokens else None


def _sources(source: str | Sequence[str]) -> tuple[str, ...]:
    sources = (source,) if isinstance(source, str) else tuple(source)
    if not sources:
        raise ValueError("source: name at least one of " + ", ".join(TOKEN_SOURCES))
    for name in sources:
        if name not in TOKEN_SOURCES:
            raise ValueError(f"source {name!r} is not one of " + ", ".join(TOKEN_SOURCES))
    return sources


def extract_token(headers: Mapping[str, str], query: Mapping[str, str] | None = None, *,
                  source: str | Sequence[str] = "header", param: str = "token") -> str:
    """The bearer token of a handshake, from the first of *source* that has one.

    *headers* is any mapping of the request headers (case-insensitive lookup
    either way); *query* the query parameters (see :func:`parse_query`).  Raises
    :class:`~reinhardt_ws.AuthenticationFailed`: "token required" when no source
    has one, or a reason naming what is malformed.
    """
    for name in _sources(source):
        if name == "header":
            token = _from_header(headers)
        elif name == "subprotocol":
            token = _from_subprotocol(headers)
        else:
            token = (query or {}).get(param)
            if token is not None and not token:
                raise AuthenticationFailed(f"empty {param} parameter")
        if token is not None:
            if len(token) > MAX_TOKEN_LENGTH:
                raise AuthenticationFailed("malformed token")
            return token
    raise AuthenticationFailed("token required")


def bearer_subprotocol(token: str) -> str:
    """The ``Sec-WebSocket-Protocol`` entry that carries *token* (``bearer.<token>``)."""
    return TOKEN_SUBPROTOCOL_PREFIX + token


# -- static tokens --------------------------------------------------------------------


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class BearerTokenAuth:
    """An ``authenticate`` hook that accepts a fixed set of tokens.

    *tokens* maps each accepted token to the identity it stands for (which
    becomes ``conn.user``; it must not be None).  *source* names where the token
    rides (``"header"``, ``"query"``, ``"subprotocol"``, or several, tried in
    order); *param* the query parameter.  The comparison takes the same time
    whichever token (if any) matches: each candidate's SHA-256 is compared with
    every known token's by :func:`hmac.compare_digest`, without stopping early.

    ``check(headers, query)`` decides synchronously (before the 101);
    ``await auth(conn)`` decides for a connection.  Both return the identity or
    raise :class:`~reinhardt_ws.AuthenticationFailed` ("token required",
    "unknown token", or what is malformed).
    """

    def __init__(self, tokens: Mapping[str, object], *, source: str | Sequence[str] = "header",
                 param: str = "token") -> None:
        entries: list[tuple[bytes, object]] = []
        for token, identity in tokens.items():
            if not isinstance(token, str) or not token:
                raise ValueError("tokens must be non-empty strings")
            if identity is None:
                raise ValueError("a token's identity must not be None (None means anonymous)")
            entries.append((_digest(token), identity))
        if not entries:
            raise ValueError("BearerTokenAuth needs at least one token")
        self._entries = tuple(entries)
        self.sources = _sources(source)
        self.param = param

    def check(self, headers: Mapping[str, str], query: Mapping[str, str] | None = None
              ) -> object:
        """The identity of the handshake's token; AuthenticationFailed otherwise."""
        candidate = _digest(extract_token(headers, query, source=self.sources,
                                          param=self.param))
        found: object = None
        for digest, identity in self._entries:
            if hmac.compare_digest(digest, candidate):
                found = identity
        if found is None:
            raise AuthenticationFailed("unknown token")
        return found

    async def __call__(self, conn: HandshakeInfo) -> object:
        return self.check(conn.headers, parse_query(conn.path))


# -- signed tokens ---------------------------------------------------------------------


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict base64url without padding; ValueError for anything else (other
    characters, impossible lengths, non-canonical trailing bits)."""
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc
    if _b64encode(raw) != text:
        raise ValueError("non-canonical base64url")
    return raw


class TokenSigner:
    """Mints and verifies short-lived signed tokens: HMAC-SHA256 over a JSON claim
    set, URL-safe, with a subject and an expiry.

    A token is ``base64url(claims) "." base64url(HMAC-SHA256(secret, first part))``
    with claims ``{"sub": subject, "iat": issued, "exp": expires, ...}`` (Unix
    seconds).  It is signed, not encrypted: anyone holding it can read its claims.
    Any process holding *secret* verifies it without a shared database; it is
    valid until it expires (there is no revocation: keep ``ttl`` short).

    *secret* is at least 32 bytes (a ``str`` counts its UTF-8 bytes).  *previous*
    secrets still verify (never sign) tokens, for key rotation.  *leeway* seconds
    of clock skew are tolerated on expiry.  *clock* returns the current Unix time.
    """

    def __init__(self, secret: str | bytes, *, previous: Iterable[str | bytes] = (),
                 leeway: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self._keys = tuple(self._key(s) for s in (secret, *previous))
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        self.leeway = float(leeway)
        self.clock = clock

    @staticmethod
    def _key(secret: str | bytes) -> bytes:
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"a token secret needs at least {MIN_SECRET_BYTES} bytes "
                             f"(got {len(key)}); e.g. secrets.token_urlsafe(32)")
        return key

    def sign(self, subject: str, /, ttl: float = 300.0, **claims: Any) -> str:
        """A token for *subject*, valid *ttl* seconds from now, carrying *claims*
        (JSON values; ``sub``, ``iat`` and ``exp`` are reserved, and ``ttl`` is
        this call's argument, not a claim).

        ``ValueError`` for an empty subject, a non-positive ttl or a reserved
        claim; ``TypeError`` for a claim that is not JSON.
        """
        if not isinstance(subject, str) or not subject:
            raise ValueError("subject must be a non-empty string")
        if not ttl > 0 or not math.isfinite(ttl):
            raise ValueError("ttl must be a positive number of seconds")
        reserved = _RESERVED_CLAIMS.intersection(claims)
        if reserved:
            raise ValueError(f"reserved claim names: {', '.join(sorted(reserved))}")
        now = self.clock()
        body = {"sub": subject, "iat": int(now), "exp": math.ceil(now + ttl), **claims}
        try:
            payload = _b64encode(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
        except TypeError as exc:
            raise TypeError(f"claims must be JSON values: {exc}") from exc
        return f"{payload}.{_b64encode(self._mac(self._keys[0], payload))}"

    @staticmethod
    def _mac(key: bytes, payload: str) -> bytes:
        return hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest()

    def verify(self, token: object) -> dict[str, Any]:
        """The claims of a valid, unexpired token (``sub``, ``iat``, ``exp`` and the
        rest).

        Raises :class:`~reinhardt_ws.AuthenticationFailed` and nothing else, with
        reason "malformed token" (not a token of this format, or too long),
        "bad token signature" (not signed by this secret, or altered) or
        "token expired".  The signature is checked (in constant time) before the
        claims are parsed.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise AuthenticationFailed("malformed token")
        payload, dot, signature = token.partition(".")
        try:
            if not dot or not payload:
                raise ValueError("not two parts")
            mac = _b64decode(signature)
            _b64decode(payload)
        except ValueError:
            raise AuthenticationFailed("malformed token") from None
        if len(mac) != hashlib.sha256().digest_size:
            raise AuthenticationFailed("malformed token")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(self._mac(key, payload), mac)
        if not matched:
            raise AuthenticationFailed("bad token signature")
        try:
            claims = orjson.loads(_b64decode(payload))
        except (ValueError, orjson.JSONDecodeError):
            raise AuthenticationFailed("malformed token") from None
        if (not isinstance(claims, dict) or not isinstance(claims.get("sub"), str)
                or not claims["sub"] or not _is_number(claims.get("exp"))):
            raise AuthenticationFailed("malformed token")
        if self.clock() >= claims["exp"] + self.leeway:
            raise AuthenticationFailed("token expired")
        return claims


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too big for a float
        return False


class SignedTokenAuth:
    """An ``authenticate`` hook that accepts tokens *signer* minted; the identity
    (``conn.user``) is the token's claims, a dict with ``"sub"``.

    *source* and *param* as for :class:`BearerTokenAuth` (default: the query
    string, then the subprotocol: the two ways a browser page can carry it).
    ``check(headers, query)`` decides synchronously, ``await auth(conn)`` for a
    connection; both raise :class:`~reinhardt_ws.AuthenticationFailed` ("token
    required", "malformed token", "bad token signature", "token expired").
    """

    def __init__(self, signer: TokenSigner, *,
                 source: str | Sequence[str] = ("query", "subprotocol"),
                 param: str = "token") -> None:
        if not isinstance(signer, TokenSigner):
            raise TypeError("signer must be a TokenSigner")
        self.signer = signer
        self.sources = _sources(source)
        self.param = param

    def check(self, headers: Mapping[str, str], query: Mapping[str, str] | None = None
              ) -> dict[str, Any]:
        """The claims of the handshake's token; AuthenticationFailed otherwise."""
        return self.signer.verify(extract_token(headers, query, source=self.sources,
                                                param=self.param))

    async def __call__(self, conn: HandshakeInfo) -> dict[str, Any]:
        return self.check(conn.headers, parse_query(conn.path))
