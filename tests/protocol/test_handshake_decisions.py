"""The opening-handshake decisions, driven without a socket: origins, HTTP
hygiene, connection limits and routing (``reinhardt_ws.protocol``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reinhardt_ws.protocol
from reinhardt_ws.protocol.handshake import (
    SAME_ORIGIN,
    ConnectionLimiter,
    OriginPolicy,
    Request,
    check_request,
    check_upgrade,
    connection_has_upgrade,
    request_head_size,
)
from reinhardt_ws.protocol.routing import Router

PROTOCOL_DIR = Path(reinhardt_ws.protocol.__file__).parent

UPGRADE = {"host": "example.com", "upgrade": "websocket", "connection": "Upgrade",
           "sec-websocket-version": "13", "sec-websocket-key": "MDEyMzQ1Njc4OWFiY2RlZg=="}


class CI(dict[str, str]):
    """Case-insensitive enough for these tests: keys are stored lower-case."""

    def __init__(self, items: dict[str, str]) -> None:
        super().__init__({k.lower(): v for k, v in items.items()})

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


def request(path: str = "/", **headers: str) -> Request:
    merged = dict(UPGRADE)
    merged.update({k.replace("_", "-"): v for k, v in headers.items()})
    return Request("GET", path, CI({k: v for k, v in merged.items() if v != "-"}),
                   ("10.1.2.3", 5555))


def test_protocol_package_imports_no_io() -> None:
    """Every module of reinhardt_ws.protocol imports only the standard library's
    I/O-free modules, its siblings and ``reinhardt_ws.errors``: no asyncio,
    picows or sockets."""
    io_modules = {"asyncio", "picows", "socket", "ssl", "selectors", "uvloop", "aiofastnet"}
    modules = sorted(PROTOCOL_DIR.glob("*.py"))
    assert {m.name for m in modules} >= {"handshake.py", "routing.py"}
    for module in modules:
        tree = ast.parse(module.read_text(), str(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1 or (node.level == 2 and node.module == "errors"):
                    continue  # a sibling, or the library's exceptions (no I/O)
                assert node.level == 0, f"{module.name} imports outside protocol/"
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in io_modules, f"{module.name}: {name}"
                assert not name.startswith("reinhardt_ws"), f"{module.name}: {name}"


@pytest.mark.parametrize(("value", "ok"), [
    ("Upgrade", True), ("upgrade", True), ("keep-alive, Upgrade", True),
    ("Upgrade, keep-alive", True), ("  UPGRADE  ", True), ("keep-alive,upgrade", True),
    ("keep-alive", False), ("upgraded", False), ("", False), (None, False),
])
def test_connection_header_tokens(value: str | None, ok: bool) -> None:
    assert connection_has_upgrade(value) is ok


def test_request_fields() -> None:
    r = Request("GET", "/rooms/a%20b?token=x&x=1&x=2&empty=", CI({"Host": "h"}),
                ("127.0.0.1", 4000))
    assert r.path == "/rooms/a b"
    assert r.query_string == "token=x&x=1&x=2&empty="
    assert r.query == {"token": ["x"], "x": ["1", "2"], "empty": [""]}
    assert r.remote_host == "127.0.0.1"
    assert not r.is_upgrade
    assert request().is_upgrade


def test_http_hygiene_decisions() -> None:
    assert check_request(request(), max_request_line=100, max_request_head=1000) is None
    long_line = check_request(request("/" + "a" * 200), max_request_line=100,
                              max_request_head=10_000)
    assert long_line is not None and long_line.status == 414
    big = check_request(request(x_big="y" * 2000), max_request_line=100, max_request_head=1000)
    assert big is not None and big.status == 431
    no_host = check_request(request(host="-"), max_request_line=100, max_request_head=1000)
    assert no_host is not None and no_host.status == 400
    assert b"Host" in no_host.body
    for version in ("8", "7", "12", "14", "-", "13, 8"):
        answer = check_upgrade(request(sec_websocket_version=version))
        assert answer is not None and answer.status == 426, version
        assert answer.headers == {"Sec-WebSocket-Version": "13"}
    assert check_upgrade(request(connection="keep-alive, Upgrade")) is None
    bad = check_upgrade(request(connection="keep-alive"))
    assert bad is not None and bad.status == 400


def test_head_size_counts_line_and_headers() -> None:
    assert request_head_size("GET", "/", [("Host", "x")]) == len(
        "GET / HTTP/1.1\r\nHost: x\r\n")


def test_origin_exact_patterns_and_none() -> None:
    policy = OriginPolicy(["https://chat.example.com", "https://*.example.org",
                           "http://localhost:8080", None])
    allows = policy.allows
    assert allows("https://chat.example.com", "x")
    assert allows("HTTPS://Chat.Example.com", "x")
    assert allows("https://chat.example.com:443", "x")  # default port made explicit
    assert not allows("http://chat.example.com", "x")  # other scheme
    assert not allows("https://chat.example.com:8443", "x")
    assert not allows("https://chat.example.com.evil.test", "x")
    assert allows("https://a.example.org", "x")
    assert allows("https://a.b.example.org", "x")
    assert not allows("https://example.org", "x")  # * needs at least one label
    assert not allows("https://evilexample.org", "x")
    assert not allows("https://a.example.org.evil.test", "x")
    assert not allows("http://a.example.org", "x")
    assert allows("http://localhost:8080", "x")
    assert not allows("http://localhost:8081", "x")
    assert allows(None, "x")
    assert not allows("null", "x")
    assert not allows("http://evil.example", "x")
    strict = OriginPolicy(["https://chat.example.com"])
    assert not strict.allows(None, "x")  # None not listed: a missing Origin is refused


def test_same_origin() -> None:
    policy = OriginPolicy([SAME_ORIGIN])
    assert policy.allows("http://127.0.0.1:8765", "127.0.0.1:8765")
    assert policy.allows("http://example.com", "example.com")
    assert policy.allows("http://example.com", "example.com:80")
    assert policy.allows("https://example.com", "EXAMPLE.com:443")
    assert policy.allows("http://[::1]:9000", "[::1]:9000")
    assert not policy.allows("http://127.0.0.1:8766", "127.0.0.1:8765")
    assert not policy.allows("http://evil.example", "127.0.0.1:8765")
    assert not policy.allows("http://localhost:8765", "127.0.0.1:8765")
    assert not policy.allows(None, "127.0.0.1:8765")
    assert OriginPolicy(None).allows("http://evil.example", "x")


@pytest.mark.parametrize("entry", ["example.com", "https://*example.com", "https://a.*.com",
                                   "https://x.com/path", "*"])
def test_malformed_origin_entries(entry: str) -> None:
    with pytest.raises(ValueError):
        OriginPolicy([entry])


def test_limiter_counts_and_refuses() -> None:
    limits = ConnectionLimiter(3, 2)
    assert limits.refusal("a") is None
    limits.opened("a")
    limits.opened("a")
    per_ip = limits.refusal("a")
    assert per_ip is not None and per_ip.status == 429
    assert limits.refusal("b") is None
    limits.opened("b")
    full = limits.refusal("c")
    assert full is not None and full.status == 503
    limits.closed("a")
    assert limits.refusal("a") is None
    assert limits.per_host("a") == 1
    limits.closed("a")
    limits.closed("b")
    assert limits.stats()["connections"] == 0 and limits.stats()["hosts"] == 0
    limits.refused("origin")
    limits.refused("origin")
    assert limits.stats()["refused"] == {"origin": 2}
    unlimited = ConnectionLimiter(None, None)
    for _ in range(1000):
        unlimited.opened("a")
    assert unlimited.refusal("a") is None


def test_router_matches_and_reverses() -> None:
    room, files, index = object(), object(), object()

    def health(req: Request) -> None:
        return None

    router = (Router()
              .websocket("/rooms/{room}", room, name="room")
              .websocket("/files/{rest:path}", files, name="files")
              .websocket("/", index)
              .http("/healthz", health, name="health")
              .http("/submit", health, methods=("POST",)))
    m = router.match_websocket("/rooms/lobby")
    assert m.route is not None and m.route.handler is room and m.params == {"room": "lobby"}
    assert router.match_websocket("/rooms/").route is None
    assert router.match_websocket("/rooms/a/b").route is None
    f = router.match_websocket("/files/a/b.txt")
    assert f.route is not None and f.params == {"rest": "a/b.txt"}
    assert router.match_websocket("/nowhere").route is None
    h = router.match_http("GET", "/healthz")
    assert h.route is not None and h.route.fn is health
    assert router.match_http("HEAD", "/healthz").route is h.route  # HEAD where GET is
    assert router.match_http("POST", "/healthz").allowed == {"GET", "HEAD"}
    other = router.match_http("GET", "/submit")
    assert other.route is None and other.allowed == {"POST"}
    missing = router.match_http("GET", "/nowhere")
    assert missing.route is None and not missing.allowed
    assert router.url_for("room", room="a b/c") == "/rooms/a%20b%2Fc"
    assert router.url_for("files", rest="a/b c") == "/files/a/b%20c"
    assert router.url_for("health") == "/healthz"
    with pytest.raises(ValueError):
        router.url_for("room")
    with pytest.raises(ValueError):
        router.url_for("room", room="x", extra="y")
    with pytest.raises(KeyError):
        router.url_for("nope")


def test_router_refuses_bad_definitions() -> None:
    with pytest.raises(ValueError):
        Router().http("/x", lambda r: None, methods=())
    with pytest.raises(ValueError):
        Router().websocket("rooms", object())
    with pytest.raises(ValueError):
        Router().websocket("/{a}/{a}", object())
    with pytest.raises(ValueError):
        Router().websocket("/{rest:path}/x", object())
    with pytest.raises(ValueError):
        Router().websocket("/x", object(), name="n").websocket("/y", object(), name="n")


def test_parse_request_head() -> None:
    from reinhardt_ws.protocol.handshake import (
        HeadError,
        HTTPResponse,
        parse_request_head,
        render_response,
    )

    head = parse_request_head(b"HEAD /x?y=1 HTTP/1.1\r\nHost: h\r\nX-A:  b \r\nContent-Length: 0")
    assert (head.method, head.target, head.version) == ("HEAD", "/x?y=1", "HTTP/1.1")
    assert head.headers == (("Host", "h"), ("X-A", "b"), ("Content-Length", "0"))
    assert not head.has_body
    assert parse_request_head(b"PUT / HTTP/1.1\r\nContent-Length: 3").has_body
    assert parse_request_head(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked").has_body
    for bad, status in ((b"GET /", 400), (b"GET  / HTTP/1.1", 400), (b"G(T / HTTP/1.1", 400),
                        (b"GET / HTTP/2", 505), (b"GET / FTP/1", 400),
                        (b"GET / HTTP/1.1\r\nNo colon", 400),
                        (b"GET / HTTP/1.1\r\n folded: x", 400),
                        (b"GET / HTTP/1.1" + b"\r\nA: b" * 129, 431)):
        with pytest.raises(HeadError) as info:
            parse_request_head(bad)
        assert info.value.response.status == status, bad
    rendered = render_response(HTTPResponse(404, b"gone", headers={"X-Y": "z",
                                                                  "Connection": "keep"}))
    assert rendered == (b"HTTP/1.1 404 Not Found\r\nX-Y: z\r\n"
                        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 4\r\n"
                        b"Connection: close\r\n\r\ngone")
    assert render_response(HTTPResponse(200, b"body"), head_only=True).endswith(
        b"Content-Length: 4\r\nConnection: close\r\n\r\n")
    assert render_response(HTTPResponse(599)).startswith(b"HTTP/1.1 599 Unknown\r\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_request_head_raises_only_head_error(data: bytes) -> None:
    from reinhardt_ws.protocol.handshake import HeadError, parse_request_head

    try:
        head = parse_request_head(data)
    except HeadError as exc:
        assert 400 <= exc.response.status < 600
    else:
        assert head.method and head.target


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.one_of(st.none(), st.text(max_size=40)),
       st.text(max_size=120))
def test_fuzz_origin_and_routes_never_raise(origin: str, host: str | None, path: str) -> None:
    policy = OriginPolicy([SAME_ORIGIN, "https://*.example.com", "http://a.test:81", None])
    assert policy.allows(origin, host) in (True, False)
    router = Router().websocket("/rooms/{room}", object()).websocket("/f/{rest:path}", object())
    match = router.match_websocket("/" + path)
    assert match.route is None or all(match.params.values())
    request = Request("GET", "/" + path, CI({"host": host or ""}), None)
    check_request(request, max_request_line=100, max_request_head=500)


def test_admission_order() -> None:
    """Route, then Origin, then the hook, then shutdown and limits: a refusal
    earlier in the order means the later checks never run."""
    from reinhardt_ws.protocol.handshake import Accept, Admission, Admitted, Refused

    calls: list[str] = []

    def hook(req: Request) -> Accept:
        calls.append(req.path)
        return Accept(user="u")

    room = object()
    limits = ConnectionLimiter(1, None)
    admission = Admission(handler=None, router=Router().websocket("/r/{id}", room),
                          origins=OriginPolicy(["https://ok.example", None]),
                          process_request=hook, subprotocols=("v1",), limits=limits,
                          max_request_line=100, max_request_head=1000)

    def decide(path: str, closing: bool = False, **headers: str) -> Admitted | Refused:
        return admission.decide(request(path, **headers), closing=closing)

    def status(verdict: Admitted | Refused) -> int:
        return verdict.response.status if isinstance(verdict, Refused) else 101

    assert status(decide("/nope", origin="http://evil.example")) == 404
    assert status(decide("/r/1", origin="http://evil.example")) == 403
    assert calls == []
    ok = decide("/r/7", origin="https://ok.example", sec_websocket_protocol="v0, v1")
    assert ok == Admitted(room, "u", {"id": "7"}, "v1")
    assert status(decide("/r/1", closing=True)) == 503
    limits.opened("10.1.2.3")
    full = decide("/r/1")
    assert isinstance(full, Refused) and full.reason == "max_connections"
    assert calls == ["/r/7", "/r/1", "/r/1"]
