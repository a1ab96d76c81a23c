"""Path routing, without I/O: WebSocket routes and plain-HTTP routes on one port,
with path parameters, names and reverse lookup (:meth:`Router.url_for`).

A pattern is a path whose segments may be parameters: ``/rooms/{room}`` matches
``/rooms/lobby`` with ``{"room": "lobby"}``; ``{name}`` matches one non-empty
segment, ``{name:path}`` (last segment only) matches the rest of the path,
slashes included.  Matching is segment by segment on the %-decoded segments (an
encoded ``%2F`` stays inside its segment), exactly (no trailing-slash folding),
in the order routes were added.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

__all__ = ["HTTPMatch", "HTTPRoute", "Router", "WebSocketMatch", "WebSocketRoute"]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}")


#: A compiled pattern: per segment, a literal string, ("param", name) or
#: ("path", name) for a trailing ``{name:path}``.
_Segment = str | tuple[str, str]


def _compile(pattern: str) -> tuple[tuple[_Segment, ...], tuple[str, ...]]:
    if not pattern.startswith("/"):
        raise ValueError(f"route pattern must start with '/': {pattern!r}")
    segments: list[_Segment] = []
    names: list[str] = []
    parts = pattern[1:].split("/")
    for i, part in enumerate(parts):
        m = _PARAM.fullmatch(part)
        if m is None:
            if "{" in part or "}" in part:
                raise ValueError(f"bad parameter in route pattern {pattern!r}: a parameter "
                                 "is a whole segment, {name} or {name:path}")
            segments.append(part)
            continue
        name, kind = m.group(1), m.group(2)
        if name in names:
            raise ValueError(f"parameter {name!r} repeated in {pattern!r}")
        if kind == "path" and i != len(parts) - 1:
            raise ValueError(f"{{{name}:path}} must end the pattern {pattern!r}")
        names.append(name)
        segments.append(("path" if kind else "param", name))
    return tuple(segments), tuple(names)


def split_path(encoded_path: str) -> list[str]:
    """A request's path (still %-encoded) as decoded segments: an encoded ``/``
    (``%2F``) stays inside its segment."""
    return [unquote(seg) for seg in (encoded_path or "/")[1:].split("/")]


@dataclass(frozen=True)
class _Route:
    pattern: str
    name: str | None
    segments: tuple[_Segment, ...]
    params: tuple[str, ...]

    def match(self, parts: list[str]) -> dict[str, str] | None:
        found: dict[str, str] = {}
        for i, seg in enumerate(self.segments):
            if isinstance(seg, str):
                if i >= len(parts) or parts[i] != seg:
                    return None
                continue
            kind, name = seg
            if kind == "path":
                rest = "/".join(parts[i:])
                if not rest:
                    return None
                found[name] = rest
                return found
            if i >= len(parts) or not parts[i]:
                return None
            found[name] = parts[i]
        return found if len(parts) == len(self.segments) else None


@dataclass(frozen=True)
class WebSocketRoute(_Route):
    """A WebSocket endpoint: upgrades on matching paths run *handler*."""

    handler: Any


@dataclass(frozen=True)
class HTTPRoute(_Route):
    """A plain-HTTP endpoint: ``fn(request) -> HTTPResponse`` for the listed methods."""

    fn: Callable[[Any], Any]
    methods: frozenset[str]


@dataclass(frozen=True)
class WebSocketMatch:
    """What :meth:`Router.match_websocket` found: the route (None: 404) and the
    path parameters."""

    route: WebSocketRoute | None
    params: Mapping[str, str]


@dataclass(frozen=True)
class HTTPMatch:
    """What :meth:`Router.match_http` found: the route (or None) and, when the
    path matched only routes of other methods, the methods it does allow (405)."""

    route: HTTPRoute | None
    params: Mapping[str, str]
    allowed: frozenset[str] = frozenset()


class Router:
    """WebSocket and plain-HTTP routes on one port::

        router = (Router()
                  .websocket("/rooms/{room}", RoomHandler(), name="room")
                  .http("/healthz", lambda request: HTTPResponse(200, b"ok\\n")))
        server = await serve(router, "127.0.0.1", 8765)
        router.url_for("room", room="lobby")      # "/rooms/lobby"

    A WebSocket upgrade whose path matches no WebSocket route is refused with
    404 at the handshake; a plain request whose path matches no HTTP route gets
    404 (426 if a WebSocket route has that path), and a method a path's routes
    do not take gets 405 with ``Allow``.  HTTP handlers may be plain functions
    or coroutine functions.
    """

    def __init__(self) -> None:
        self._ws: list[WebSocketRoute] = []
        self._http: list[HTTPRoute] = []
        self._names: dict[str, _Route] = {}

    def _name(self, name: str | None, route: _Route) -> None:
        if name is None:
            return
        if name in self._names:
            raise ValueError(f"route name {name!r} is already used")
        self._names[name] = route

    def websocket(self, pattern: str, handler: Any, *, name: str | None = None) -> Router:
        """Route WebSocket upgrades on *pattern* to *handler* (a ``WebSocketHandler``);
        the path parameters become ``conn.path_params``.  Returns the router."""
        regex, params = _compile(pattern)
        route = WebSocketRoute(pattern, name, regex, params, handler)
        self._name(name, route)
        self._ws.append(route)
        return self

    def http(self, pattern: str, fn: Callable[[Any], Any], *,
             methods: Iterable[str] = ("GET",), name: str | None = None) -> Router:
        """Answer plain HTTP on *pattern* with ``fn(request) -> HTTPResponse``
        (``request.path_params`` holds the parameters); *fn* may be a coroutine
        function.  ``HEAD`` is allowed wherever ``GET`` is (the body is then not
        sent).  Requests with a body get 413: handlers see no body.  Returns the
        router."""
        wanted = frozenset(m.upper() for m in methods)
        if not wanted:
            raise ValueError("an HTTP route needs at least one method")
        if "GET" in wanted:
            wanted |= {"HEAD"}
        regex, params = _compile(pattern)
        route = HTTPRoute(pattern, name, regex, params, fn, wanted)
        self._name(name, route)
        self._http.append(route)
        return self

    @property
    def websocket_routes(self) -> tuple[WebSocketRoute, ...]:
        return tuple(self._ws)

    @property
    def http_routes(self) -> tuple[HTTPRoute, ...]:
        return tuple(self._http)

    def match_websocket(self, encoded_path: str) -> WebSocketMatch:
        """The first WebSocket route matching *encoded_path* (the request's path,
        still %-encoded; parameters come out decoded).  ``route`` None: 404."""
        parts = split_path(encoded_path)
        for route in self._ws:
            params = route.match(parts)
            if params is not None:
                return WebSocketMatch(route, params)
        return WebSocketMatch(None, {})

    def match_http(self, method: str, encoded_path: str) -> HTTPMatch:
        """The first HTTP route matching *method* and *encoded_path*; with ``route``
        None, ``allowed`` lists the methods other routes on that path accept
        (empty: 404)."""
        allowed: set[str] = set()
        parts = split_path(encoded_path)
        for route in self._http:
            params = route.match(parts)
            if params is None:
                continue
            if method in route.methods:
                return HTTPMatch(route, params)
            allowed |= route.methods
        return HTTPMatch(None, {}, frozenset(allowed))

    def url_for(self, name: str, **params: object) -> str:
        """The path of the route called *name* with *params* filled in, %-encoded
        (``/`` is kept only in ``{x:path}`` parameters).  ``KeyError`` for an unknown
        name; ``ValueError`` for missing or unexpected parameters."""
        route = self._names[name]
        given, needed = set(params), set(route.params)
        if given != needed:
            raise ValueError(f"route {name!r} takes {sorted(needed)}, got {sorted(given)}")

        def fill(m: re.Match[str]) -> str:
            value = str(params[m.group(1)])
            if not value:
                raise ValueError(f"parameter {m.group(1)!r} must not be empty")
            return quote(value, safe="/" if m.group(2) == "path" else "")

        return _PARAM.sub(fill, route.pattern)

    @classmethod
    def from_mapping(cls, routes: Mapping[str, Any]) -> Router:
        """``{pattern: handler}`` as WebSocket routes (what ``serve({...})`` takes)."""
        router = cls()
        for pattern, handler in routes.items():
            router.websocket(pattern, handler)
        return router
