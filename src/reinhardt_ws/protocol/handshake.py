"""Opening-handshake decisions, without I/O: what a request asks for and what the
server answers (RFC 6455 section 4.2), and who is admitted.

The server's listener factory turns picows' parsed request into a
:class:`Request` and asks these functions and objects what to do; they never see
a socket, so tests drive them directly.  Nothing here imports asyncio or picows.

The order in which :func:`check_request` and the server apply the decisions is
documented in ``docs/security.md`` ("Admission").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "SAME_ORIGIN",
    "Accept",
    "Admission",
    "Admitted",
    "ConnectionLimiter",
    "HTTPResponse",
    "HeadError",
    "OriginPolicy",
    "ParsedHead",
    "Refused",
    "Request",
    "check_request",
    "connection_has_upgrade",
    "error_response",
    "head_header_items",
    "is_upgrade",
    "negotiate_subprotocol",
    "parse_request_head",
    "render_response",
]

#: Marker for ``origins=[...]``: an ``Origin`` whose host and port equal the
#: request's ``Host`` (the page was served by this server).
SAME_ORIGIN = "same-origin"

#: picows' own cap on a request head; above it picows drops the connection before
#: any of our code runs, so our limits must stay below it.
PICOWS_MAX_REQUEST_HEAD = 16 * 1024 - 1

#: The only WebSocket version a server should speak (RFC 6455 section 4.4).
WEBSOCKET_VERSION = "13"


@dataclass(frozen=True)
class HTTPResponse:
    """A plain HTTP answer: to a plain HTTP request, or a refused handshake.

    Any status may be used; ``headers`` are added to the response (for example
    ``WWW-Authenticate`` with a 401, ``Retry-After`` with a 503).  The server adds
    ``Content-Type`` (from *content_type*), ``Content-Length`` and
    ``Connection: close``; the connection is closed after the response.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


def error_response(status: int, message: str,
                   headers: Mapping[str, str] | None = None) -> HTTPResponse:
    """A plain-text refusal: ``"<status> <message>\\n"`` as the body."""
    return HTTPResponse(status, f"{status} {message}\n".encode(), headers=dict(headers or {}))


@dataclass(frozen=True)
class Accept:
    """What a ``process_request`` hook returns to admit a handshake with details.

    - ``user``: the identity the hook established; it becomes ``conn.user``.
    - ``subprotocol``: the subprotocol to answer with, overriding the server's
      negotiation; it must be one the client offered (else the handshake fails
      with 500 and the error is logged: a server bug, not a client's).
    """

    user: Any = None
    subprotocol: str | None = None


class Request:
    """The opening request as the handshake hooks see it (read-only).

    ``method`` (``"GET"`` for every WebSocket upgrade; any method for plain
    HTTP routes),
    ``raw_path`` (the request target as sent), ``path`` (its path, %-decoded),
    ``query_string`` (undecoded, without ``?``), ``query`` (``{name: [values]}``),
    ``headers`` (case-insensitive), ``remote_address`` (the peer's
    ``(host, port, ...)``, or None when unknown), and for routes ``path_params``.
    """

    def __init__(self, method: str, raw_path: str, headers: Mapping[str, str],
                 remote_address: Any = None) -> None:
        self.method = method
        self.raw_path = raw_path
        parts = urlsplit(raw_path)
        #: The path as sent (%-encoded), what routes match segment by segment.
        self.encoded_path = parts.path or "/"
        self.path = unquote(parts.path) or "/"
        self.query_string = parts.query
        self.headers = headers
        self.remote_address = remote_address
        self.path_params: dict[str, str] = {}

    @cached_property
    def query(self) -> dict[str, list[str]]:
        """The query string's parameters, each with every value it was given."""
        return parse_qs(self.query_string, keep_blank_values=True)

    @property
    def remote_host(self) -> str | None:
        """The peer's address without its port (the key of per-IP limits)."""
        addr = self.remote_address
        if isinstance(addr, (tuple, list)) and addr:
            return str(addr[0])
        return None if addr is None else str(addr)

    @property
    def is_upgrade(self) -> bool:
        """Whether the request asks for a WebSocket (``Upgrade: websocket``)."""
        return is_upgrade(self.headers)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.raw_path!r} from {self.remote_address!r}>"


class HeadError(ValueError):
    """A request head that cannot be parsed: answer :attr:`response`."""

    def __init__(self, response: HTTPResponse) -> None:
        super().__init__(response.body.decode("latin-1").strip())
        self.response = response


#: As many header lines as picows accepts.
MAX_HEADERS = 128


@dataclass(frozen=True)
class ParsedHead:
    """A request head as :func:`parse_request_head` read it."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    has_body: bool


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def parse_request_head(head: bytes) -> ParsedHead:
    """Parse an HTTP/1.x request head (without its final blank line).

    Raises :class:`HeadError` carrying 400 for a malformed request line or
    header, 505 for an HTTP version other than 1.0 and 1.1, and 431 for more
    than :data:`MAX_HEADERS` header lines.  Obsolete line folding is malformed.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[1]:
        raise HeadError(error_response(400, "Bad Request: malformed request line"))
    method, target, version = (part.decode("latin-1") for part in parts)
    if _TOKEN.fullmatch(method) is None:
        raise HeadError(error_response(400, "Bad Request: malformed method"))
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if not version.startswith("HTTP/"):
            raise HeadError(error_response(400, "Bad Request: malformed request line"))
        raise HeadError(error_response(505, "HTTP Version Not Supported"))
    if len(lines) - 1 > MAX_HEADERS:
        raise HeadError(error_response(431, "Request Header Fields Too Large"))
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        text = name.decode("latin-1")
        if not sep or _TOKEN.fullmatch(text) is None:
            raise HeadError(error_response(400, "Bad Request: malformed header"))
        headers.append((text, value.strip(b" \t").decode("latin-1")))
    has_body = False
    for field_name, field_value in headers:
        lowered = field_name.lower()
        if lowered == "transfer-encoding" or (lowered == "content-length"
                                              and field_value.strip("0") != ""):
            has_body = True
    return ParsedHead(method, target, version, tuple(headers), has_body)


def head_header_items(head: bytes) -> list[tuple[str, str]]:
    """The header fields of a request head that was already accepted (by
    :func:`parse_request_head` and picows), decoded as picows decodes them:
    names as ASCII, values as ASCII with ``surrogateescape``, so that they equal
    what the handshake hooks saw."""
    items = []
    for line in head.split(b"\r\n")[1:]:
        name, _sep, value = line.partition(b":")
        items.append((name.decode("ascii"),
                      value.strip(b" \t").decode("ascii", "surrogateescape")))
    return items


def render_response(answer: HTTPResponse, *, head_only: bool = False) -> bytes:
    """The bytes of *answer* with ``Content-Type``, ``Content-Length`` and
    ``Connection: close``; without the body when *head_only* (a HEAD request)."""
    try:
        phrase = HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {answer.status} {phrase}"]
    given = {name.lower() for name in answer.headers}
    for name, value in answer.headers.items():
        if name.lower() not in ("content-length", "connection"):
            lines.append(f"{name}: {value}")
    if "content-type" not in given:
        lines.append(f"Content-Type: {answer.content_type}")
    lines.append(f"Content-Length: {len(answer.body)}")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + answer.body


def is_upgrade(headers: Mapping[str, str]) -> bool:
    """Whether the request asks for a WebSocket upgrade (``Upgrade: websocket``)."""
    return any(token.strip().lower() == "websocket"
               for token in headers.get("upgrade", "").split(","))


def connection_has_upgrade(value: str | None) -> bool:
    """Whether a ``Connection`` value's comma-separated tokens include ``upgrade``,
    case-insensitively (RFC 6455 section 4.2.1; Firefox sends ``keep-alive, Upgrade``)."""
    if not value:
        return False
    return any(token.strip().lower() == "upgrade" for token in value.split(","))


def request_head_size(method: str, raw_path: str, headers: Iterable[tuple[str, str]]) -> int:
    """Bytes of a request head as parsed: the request line and each ``name: value``
    line with its CRLF (whitespace picows trimmed is not counted)."""
    size = len(method) + 1 + len(raw_path) + len(" HTTP/1.1\r\n")
    for name, value in headers:
        size += len(name) + 2 + len(value) + 2
    return size


def check_request(request: Request, *, max_request_line: int, max_request_head: int,
                  header_items: Iterable[tuple[str, str]] | None = None) -> HTTPResponse | None:
    """The HTTP-level refusals every request gets before routing, or None.

    - a request target longer than *max_request_line* bytes: 414;
    - a head (request line plus headers) over *max_request_head* bytes: 431;
    - no ``Host`` header (HTTP/1.1 requires one, RFC 9112 section 3.2): 400.

    WebSocket upgrades are then checked by :func:`check_upgrade`.
    """
    if len(request.raw_path) > max_request_line:
        return error_response(414, "URI Too Long")
    items = header_items if header_items is not None else request.headers.items()
    if request_head_size(request.method, request.raw_path, items) > max_request_head:
        return error_response(431, "Request Header Fields Too Large")
    if not request.headers.get("host", "").strip():
        return error_response(400, "Bad Request: no Host header")
    return None


def check_upgrade(request: Request) -> HTTPResponse | None:
    """The refusals specific to a WebSocket upgrade request, or None.

    - ``Sec-WebSocket-Version`` other than 13 (7 and 8 included, drafts we do not
      speak): 426 with ``Sec-WebSocket-Version: 13`` (RFC 6455 section 4.2.2);
    - a ``Connection`` header without the ``upgrade`` token: 400.

    The key's validity is left to picows, which answers 400 after this.
    """
    headers = request.headers
    version = headers.get("sec-websocket-version", "").strip()
    if version != WEBSOCKET_VERSION:
        shown = version or "none"
        return HTTPResponse(426, f"426 Upgrade Required: WebSocket version {shown[:20]} is "
                                 f"not supported, use {WEBSOCKET_VERSION}\n".encode(),
                            headers={"Sec-WebSocket-Version": WEBSOCKET_VERSION})
    if not connection_has_upgrade(headers.get("connection")):
        return error_response(400, "Bad Request: the Connection header lacks 'upgrade'")
    return None


def negotiate_subprotocol(offered: str | None, supported: tuple[str, ...]) -> str | None:
    """The first of the server's *supported* subprotocols the client *offered*."""
    if not offered or not supported:
        return None
    wanted = offered_subprotocols(offered)
    for proto in supported:  # the server's order of preference
        if proto in wanted:
            return proto
    return None


def offered_subprotocols(offered: str | None) -> set[str]:
    """The subprotocols a ``Sec-WebSocket-Protocol`` value offers."""
    return {p.strip() for p in (offered or "").split(",") if p.strip()}


def _host_port(value: str, default_port: int | None) -> tuple[str, int | None]:
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            host, port = value, ""
    return host, (int(port) if port.isdigit() else default_port)


#: What ``*`` matches in an origin pattern: one or more DNS labels.
_LABELS = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


class OriginPolicy:
    """Which ``Origin`` headers a server admits (cross-site WebSocket hijacking).

    Built from a list of entries:

    - an exact origin, ``"https://chat.example.com"`` (scheme, host and port;
      case-insensitive; the default port may be omitted);
    - a pattern with ``*`` in the host, ``"https://*.example.com"`` (``*``
      matches one or more labels, never the bare ``example.com``);
    - :data:`SAME_ORIGIN`: the Origin's host and port equal the ``Host`` header's
      (the page came from this server);
    - ``None``: requests without an ``Origin`` header (non-browser clients;
      browsers always send one).

    ``OriginPolicy(None)`` admits everything.
    """

    __slots__ = ("_any", "_exact", "_no_origin", "_patterns", "_same_origin")

    def __init__(self, origins: Sequence[str | None] | None) -> None:
        self._any = origins is None
        self._no_origin = False
        self._same_origin = False
        self._exact: set[str] = set()
        self._patterns: list[tuple[str, str, int | None]] = []
        for entry in origins or ():
            if entry is None:
                self._no_origin = True
            elif not isinstance(entry, str):
                raise TypeError(f"origins entries are strings or None, not {entry!r}")
            elif entry == SAME_ORIGIN:
                self._same_origin = True
            elif "*" in entry:
                scheme, sep, host = entry.partition("://")
                if not sep or "/" in host.rstrip("/") or not host.startswith("*.") \
                        or "*" in host[1:]:
                    raise ValueError(f"bad origin pattern {entry!r}: "
                                     "expected scheme://*.domain[:port]")
                scheme = scheme.lower()
                suffix, port = _host_port(host[2:].rstrip("/"), _DEFAULT_PORTS.get(scheme))
                self._patterns.append((scheme, "." + suffix, port))
            else:
                if "://" not in entry or entry.rstrip("/").count("/") > 2:
                    raise ValueError(f"bad origin {entry!r}: expected scheme://host[:port]")
                self._exact.add(self._normal(entry))

    @staticmethod
    def _normal(origin: str) -> str:
        scheme, _, rest = origin.strip().rstrip("/").partition("://")
        scheme = scheme.lower()
        host, port = _host_port(rest, _DEFAULT_PORTS.get(scheme))
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"

    @property
    def allows_any(self) -> bool:
        return self._any

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Whether a request with this ``Origin`` (None: absent) and ``Host`` is admitted."""
        if self._any:
            return True
        if origin is None:
            return self._no_origin
        origin = origin.strip()
        if not origin or origin == "null":
            return False  # opaque origins (sandboxed frames, file:) are never trusted
        if self._same_origin and host:
            scheme, _, rest = origin.partition("://")
            default = _DEFAULT_PORTS.get(scheme.lower())
            if _host_port(rest, default) == _host_port(host, default):
                return True
        if self._exact and self._normal(origin) in self._exact:
            return True
        if not self._patterns:
            return False
        scheme, _, rest = origin.lower().rstrip("/").partition("://")
        if "/" in rest or "@" in rest:
            return False
        o_host, o_port = _host_port(rest, _DEFAULT_PORTS.get(scheme))
        return any(scheme == p_scheme and o_port == p_port and o_host.endswith(suffix)
                   and _LABELS.fullmatch(o_host[:-len(suffix)]) is not None
                   for p_scheme, suffix, p_port in self._patterns)


class ConnectionLimiter:
    """Counts open connections, in total and per remote host, against limits.

    The server asks :meth:`refusal` during the handshake and calls :meth:`opened`
    / :meth:`closed` for each connection it adopts and loses, so a handshake that
    is refused later (picows' own 400) never counts.  ``None`` limits are
    unlimited.  :meth:`refused` counts refusals by reason; :meth:`stats` reports.
    """

    __slots__ = ("_per_host", "_refusals", "max_connections", "max_per_host", "open")

    def __init__(self, max_connections: int | None, max_per_host: int | None) -> None:
        self.max_connections = max_connections
        self.max_per_host = max_per_host
        self.open = 0
        self._per_host: dict[str, int] = {}
        self._refusals: dict[str, int] = {}

    def refusal(self, host: str | None) -> HTTPResponse | None:
        """503 when the server is full, 429 when *host* holds its share, else None."""
        if self.max_connections is not None and self.open >= self.max_connections:
            return error_response(503, "Service Unavailable: too many connections",
                                  {"Retry-After": "1"})
        if (self.max_per_host is not None and host is not None
                and self._per_host.get(host, 0) >= self.max_per_host):
            return error_response(429, "Too Many Requests: too many connections from "
                                       "your address", {"Retry-After": "1"})
        return None

    def opened(self, host: str | None) -> None:
        self.open += 1
        if host is not None:
            self._per_host[host] = self._per_host.get(host, 0) + 1

    def closed(self, host: str | None) -> None:
        self.open -= 1
        if host is not None:
            left = self._per_host.get(host, 0) - 1
            if left > 0:
                self._per_host[host] = left
            else:
                self._per_host.pop(host, None)

    def refused(self, reason: str) -> None:
        self._refusals[reason] = self._refusals.get(reason, 0) + 1

    def per_host(self, host: str) -> int:
        return self._per_host.get(host, 0)

    def stats(self) -> dict[str, Any]:
        return {"connections": self.open, "hosts": len(self._per_host),
                "refused": dict(self._refusals),
                "refused_total": sum(self._refusals.values())}


@dataclass(frozen=True)
class Admitted:
    """An upgrade the server should answer with 101: which handler runs it, who
    the client is (``conn.user``), the path parameters and the subprotocol."""

    handler: Any
    user: Any
    path_params: dict[str, str]
    subprotocol: str | None


@dataclass(frozen=True)
class Refused:
    """An upgrade refused with *response*; *reason* is the ``stats()`` key and
    *error* the exception of a faulty hook (to be logged), if any."""

    response: HTTPResponse
    reason: str
    error: BaseException | None = None


class Admission:
    """Every decision about a WebSocket upgrade request, in the documented order
    (docs/security.md, "Admission"): size limits and ``Host``, version and
    ``Connection``, route, Origin, the ``process_request`` hook, shutdown, and
    connection limits.  Pure: the server feeds it requests and its counters.

    *target* is the server's one handler, or a router (anything with
    ``match_websocket(encoded_path)``, see :class:`~reinhardt_ws.Router`).
    """

    __slots__ = (
        "handler",
        "limits",
        "max_request_head",
        "max_request_line",
        "origins",
        "process_request",
        "router",
        "subprotocols",
    )

    def __init__(self, *, handler: Any, router: Any, origins: OriginPolicy,
                 process_request: Any, subprotocols: tuple[str, ...],
                 limits: ConnectionLimiter, max_request_line: int,
                 max_request_head: int) -> None:
        self.handler = handler
        self.router = router
        self.origins = origins
        self.process_request = process_request
        self.subprotocols = subprotocols
        self.limits = limits
        self.max_request_line = max_request_line
        self.max_request_head = max_request_head

    def decide(self, request: Request, *, closing: bool = False,
               header_items: Iterable[tuple[str, str]] | None = None) -> Admitted | Refused:
        """Admit or refuse the upgrade *request* (``request.path_params`` is set
        from the route).  Never raises: a hook's exception becomes a 500.
        *header_items*, when given, are the request's headers as parsed, which
        :func:`check_request` sizes instead of ``request.headers``."""
        refusal = check_request(request, max_request_line=self.max_request_line,
                                max_request_head=self.max_request_head,
                                header_items=header_items)
        if refusal is not None:
            return Refused(refusal, "bad_request" if refusal.status == 400
                           else "request_too_large")
        if not request.is_upgrade:
            return Refused(error_response(400, "Bad Request: not a WebSocket upgrade"),
                           "bad_request")
        refusal = check_upgrade(request)
        if refusal is not None:
            return Refused(refusal, "unsupported_version" if refusal.status == 426
                           else "bad_request")
        headers = request.headers
        handler = self.handler
        if self.router is not None:
            match = self.router.match_websocket(request.encoded_path)
            if match.route is None:
                return Refused(error_response(404, "Not Found"), "not_found")
            handler = match.route.handler
            request.path_params = dict(match.params)
        if not self.origins.allows(headers.get("origin"), headers.get("host")):
            return Refused(error_response(403, "Forbidden: origin not allowed"), "origin")
        offered = headers.get("sec-websocket-protocol")
        user: Any = None
        subprotocol = negotiate_subprotocol(offered, self.subprotocols)
        if self.process_request is not None:
            try:
                verdict = self.process_request(request)
                if isinstance(verdict, HTTPResponse):
                    if verdict.status < 400:
                        raise ValueError("process_request refused with status "
                                         f"{verdict.status}: use a 4xx or 5xx status")
                    return Refused(verdict, "process_request")
                if isinstance(verdict, Accept):
                    user = verdict.user
                    if verdict.subprotocol is not None:
                        if verdict.subprotocol not in offered_subprotocols(offered):
                            raise ValueError(f"process_request chose subprotocol "
                                             f"{verdict.subprotocol!r}, which the client "
                                             "did not offer")
                        subprotocol = verdict.subprotocol
                elif verdict is not None:
                    raise TypeError("process_request must return None, an Accept or an "
                                    f"HTTPResponse, not {type(verdict).__name__}")
            except Exception as exc:
                return Refused(error_response(500, "Internal Server Error"), "error", exc)
        if closing:
            return Refused(error_response(503, "Service Unavailable: shutting down"),
                           "shutting_down")
        refusal = self.limits.refusal(request.remote_host)
        if refusal is not None:
            return Refused(refusal, "max_connections" if refusal.status == 503
                           else "max_connections_per_ip")
        return Admitted(handler, user, request.path_params, subprotocol)
