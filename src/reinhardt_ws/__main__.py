"""The command line: ``reinhardt-ws serve`` (the chat server) and ``reinhardt-ws echo``
(an echo server); ``python -m reinhardt_ws`` is the same program.

A bad argument is one line on stderr and exit status 2; a server that cannot start
(port in use, Redis unreachable) one line and exit status 1; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit

from . import __version__
from ._logging import LEVELS, JsonFormatter, client_fault
from .apps.chat import MAX_ROOMS_PER_CONNECTION
from .options import MiB, ServerOptions
from .server import SAME_ORIGIN, serve

__all__ = ["main"]

DESCRIPTION = ("Run a WebSocket server. 'serve' runs the chat server: clients join rooms "
               "and every message to a room reaches all its members; with --redis the "
               "rooms are shared between processes. 'echo' runs a server that sends every "
               "message back.")
EPILOG = "Run 'reinhardt-ws serve --help' or 'reinhardt-ws echo --help' for their options."

#: The environment variable that holds the chat server's token secret.
TOKEN_SECRET_ENV = "REINHARDT_WS_TOKEN_SECRET"


#: The choices of ``--loop``.
LOOPS = ("auto", "uvloop", "asyncio")


def loop_factory(kind: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The event loop ``--loop`` *kind* means, as (name, factory): ``auto`` is uvloop
    when it imports (it does not exist on Windows), else asyncio's own loop, as
    uvicorn chooses; ``uvloop`` raises ImportError without it."""
    if kind not in LOOPS:
        raise ValueError(f"unknown event loop {kind!r}: use one of {', '.join(LOOPS)}")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def _run_on(factory: Callable[[], asyncio.AbstractEventLoop],
            main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)`` on a loop made by *factory*."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
        return
    loop = factory()  # pragma: no cover - Python 3.10
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


class StartError(Exception):
    """The server cannot start; the message is the one line the user sees (exit 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0-65535 "
                                         "(0 picks a free port)")
    return port


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {text!r}: use one of "
                                         f"{', '.join(LEVELS)}")
    return level


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reinhardt-ws", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"reinhardt-ws {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("serve", "run the chat server (rooms over WebSocket)"),
                       ("echo", "run an echo server")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (127.0.0.1; 0.0.0.0 for every interface)")
        cmd.add_argument("--port", type=_port, default=8765,
                         help="port to listen on (8765; 0 picks a free one)")
        cmd.add_argument("--max-message-size", type=int, default=MiB,
                         help="largest message accepted, in bytes (1 MiB)")
        cmd.add_argument("--max-write-buffer", type=int, default=MiB,
                         help="bytes a connection may have waiting to be written before "
                              "it counts as a slow consumer (1 MiB)")
        cmd.add_argument("--max-queue-bytes", type=int, default=None,
                         help="bytes of received messages waiting for the handler before the "
                              "server stops reading that connection (default: "
                              "--max-message-size)")
        cmd.add_argument("--message-rate", type=float, default=None, metavar="PER_SECOND",
                         help="messages a second one connection may send on average; over "
                              "it the connection is closed with 1008 (default: no limit)")
        cmd.add_argument("--message-burst", type=float, default=None, metavar="COUNT",
                         help="messages one connection may send at once within "
                              "--message-rate (default: the rate, at least 1)")
        cmd.add_argument("--log-level", type=_log_level, default="INFO", metavar="LEVEL",
                         help="DEBUG (every connection opened and closed), INFO (the "
                              "default: start, stop, misbehaving clients), WARNING, ERROR "
                              "or CRITICAL")
        cmd.add_argument("--log-format", choices=("text", "json"), default="text",
                         help="text lines (the default), or one JSON object per line "
                              "(time, level, logger, message, exc_info)")
        cmd.add_argument("--max-connections", type=int, default=10_000, metavar="N",
                         help="open connections allowed; more get 503 (10000; 0: no limit)")
        cmd.add_argument("--max-connections-per-ip", type=int, default=256, metavar="N",
                         help="open connections allowed from one address; more get 429 "
                              "(256; 0: no limit)")
        cmd.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                         help="admit browser pages from ORIGIN (https://app.example.com "
                              "or https://*.example.com); repeatable.  By default only "
                              "pages this server served (same origin) and clients that "
                              "send no Origin are admitted")
        cmd.add_argument("--allow-any-origin", action="store_true",
                         help="admit pages from any site (no Origin check: only for "
                              "servers whose every action is public)")
        cmd.add_argument("--no-compression", action="store_true",
                         help="decline permessage-deflate (negotiated by default)")
        cmd.add_argument("--no-metrics", action="store_true",
                         help="do not answer GET /metrics (Prometheus metrics, on the "
                              "same port; on by default)")
        cmd.add_argument("--loop", choices=LOOPS, default="auto",
                         help="event loop: uvloop when it is installed (auto, the default; "
                              "pip install 'reinhardt-ws[uvloop]'), uvloop (and fail "
                              "without it), or asyncio (the standard library's)")
        cmd.add_argument("--reuse-port", action="store_true",
                         help="bind with SO_REUSEPORT, so that several processes share the "
                              "port (--workers sets it)")
        if name == "serve":
            cmd.add_argument("--redis", metavar="URL", default=None,
                             help="share rooms through Redis (redis://host:port/db)")
            cmd.add_argument("--workers", type=int, default=1,
                             help="processes on one port (SO_REUSEPORT); needs --redis above 1")
            cmd.add_argument("--redis-wait", metavar="SECONDS", type=float, default=0.0,
                             help="wait this long for Redis to answer before giving up "
                                  "(0: refuse to start at once if it does not)")
            cmd.add_argument("--max-rooms", type=int, default=MAX_ROOMS_PER_CONNECTION,
                             help="rooms one connection may be in "
                                  f"({MAX_ROOMS_PER_CONNECTION})")
            cmd.add_argument("--redis-prefix", metavar="PREFIX", default="rws",
                             help="namespace of the Redis keys and channels (rws)")
            cmd.add_argument("--redis-ttl", metavar="SECONDS", type=float, default=6.0,
                             help="a dead worker's members stop counting this long after its "
                                  "last heartbeat (6; heartbeats every third of it)")
            cmd.add_argument("--token-secret", metavar="SECRET",
                             default=os.environ.get(TOKEN_SECRET_ENV) or None,
                             help="require signed tokens (HMAC-SHA256, at least 32 bytes; "
                                  f"default: ${TOKEN_SECRET_ENV}, which unlike this option "
                                  "does not show in the process list); GET /token then mints "
                                  "DEMO tokens for anyone")
            cmd.add_argument("--token-ttl", metavar="SECONDS", type=float, default=600.0,
                             help="lifetime of the tokens GET /token mints (600)")
    return parser


def _admission_options(args: argparse.Namespace) -> dict[str, Any]:
    """The handshake limits and the Origin policy from the command line."""
    # Same-origin pages and non-browser clients (no Origin), plus the listed ones.
    origins: list[str | None] | None = (
        None if args.allow_any_origin else [SAME_ORIGIN, None, *args.allow_origin])
    return {"origins": origins,
            "max_connections": args.max_connections or None,
            "max_connections_per_ip": args.max_connections_per_ip or None}


def _redis_options(args: argparse.Namespace) -> dict[str, Any]:
    ttl = float(args.redis_ttl)
    # Compressed once per cluster with the server's parameters; not at all
    # when the server does not compress.
    compression = None if getattr(args, "no_compression", False) else "deflate"
    return {"prefix": args.redis_prefix, "ttl": ttl, "heartbeat_interval": ttl / 3,
            "compression": compression}


def _redacted(url: str) -> str:
    """*url* without its password (it goes to the terminal and the logs)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def _redis_url_error(url: str) -> str | None:
    """Why *url* is not a Redis URL, or None."""
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        return (f"--redis needs a redis://, rediss:// or unix:// URL, not "
                f"{_redacted(url)!r} (for example redis://127.0.0.1:6379/0)")
    from redis.connection import parse_url

    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        return f"--redis {_redacted(url)!r} is not a valid Redis URL: {exc}"
    return None


async def _reach_redis(url: str, wait: float) -> None:
    """Return once Redis at *url* answers PING; raise StartError if it has not
    within *wait* seconds (a single try when *wait* is 0)."""
    import redis
    import redis.asyncio as aioredis

    deadline = time.monotonic() + wait
    warned = False
    while True:
        client = aioredis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
        try:
            await client.ping()
            return
        except (redis.RedisError, OSError, asyncio.TimeoutError) as exc:
            error = str(exc) or type(exc).__name__
        finally:
            await client.aclose()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            advice = (f"it did not answer within --redis-wait {wait:g} s" if wait > 0 else
                      "start it, or pass --redis-wait SECONDS to wait for it")
            raise StartError(f"cannot reach Redis at {_redacted(url)} ({error}): not "
                             f"starting, rooms would not be shared; {advice}")
        if not warned:
            logging.getLogger("reinhardt_ws").warning(
                "Redis at %s does not answer (%s); waiting up to %g s", _redacted(url),
                error, wait)
            warned = True
        await asyncio.sleep(min(0.5, remaining))


def _bind_failure(exc: OSError, host: str, port: int) -> str:
    """The one line that says why listening on *host*:*port* failed, and what to do."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve --host {host!r}: {exc.strerror}"
    if exc.errno == errno.EADDRINUSE:
        other = port + 1 if port < 65535 else port - 1
        return (f"port {port} on {host} is already in use: stop what holds it, choose "
                f"another (for example --port {other}), or --port 0 to pick a free one")
    if exc.errno == errno.EACCES:
        return (f"not allowed to listen on port {port} on {host} ({exc.strerror}): ports "
                "below 1024 need privileges; choose --port 1024 or above")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: it is not an address of this machine"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def _host_error(host: str) -> str | None:
    """Why *host* cannot be listened on (it does not resolve), or None."""
    try:
        socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve --host {host!r}: {exc.strerror}"
    except UnicodeError:
        return f"--host {host!r} is not a valid host name"
    return None


def _probe_port(host: str, port: int) -> None:
    """Raise StartError if *port* on *host* cannot be bound with SO_REUSEPORT (the
    supervisor checks before it starts workers that would each fail)."""
    for family, kind, proto, _name, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise StartError(_bind_failure(exc, host, port)) from None


async def _run(args: argparse.Namespace) -> None:
    if getattr(args, "redis", None):
        await _reach_redis(args.redis, args.redis_wait)
    rooms = None
    settings: dict[str, Any] = {}
    target: Any
    if args.command == "echo":
        from .apps.echo import EchoHandler

        target = EchoHandler()
    else:
        from .apps.chat import CHAT_HISTORY, CHAT_SUBPROTOCOL, ChatHandler, chat_router
        from .policy import ClaimsPolicy
        from .protocol.auth import SignedTokenAuth, TokenSigner
        from .rooms import RoomManager

        limit = args.max_rooms
        rooms = (RoomManager.from_url(args.redis, max_rooms_per_connection=limit,
                                      history=CHAT_HISTORY, presence=True,
                                      **_redis_options(args)) if args.redis
                 else RoomManager(max_rooms_per_connection=limit, history=CHAT_HISTORY,
                                  presence=True))
        signer = TokenSigner(args.token_secret) if args.token_secret else None
        handler = ChatHandler(rooms, max_message_size=args.max_message_size,
                              policy=ClaimsPolicy() if signer is not None else None)
        target = chat_router(handler, signer=signer, token_ttl=args.token_ttl)
        settings["subprotocols"] = (CHAT_SUBPROTOCOL,)
        if signer is not None:
            settings["authenticate"] = SignedTokenAuth(signer, source=("query", "subprotocol"))
    metrics = None
    if not args.no_metrics:
        from .metrics import Metrics

        metrics = Metrics(rooms=rooms)
        if args.command == "echo":
            settings["http_handler"] = metrics.http_handler
        else:
            target.http("/metrics", metrics, name="metrics")
    try:
        server = await serve(target, args.host, args.port,
                             max_message_size=args.max_message_size,
                             max_write_buffer=args.max_write_buffer,
                             max_queue_bytes=args.max_queue_bytes,
                             message_rate=args.message_rate,
                             message_burst=args.message_burst, reuse_port=args.reuse_port,
                             compression=None if args.no_compression else "deflate",
                             **_admission_options(args), **settings)
    except OSError as exc:
        if rooms is not None:
            await rooms.close()
        raise StartError(_bind_failure(exc, args.host, args.port)) from None
    if metrics is not None:
        metrics.bind(server)
    if args.file_limit is not None:
        logging.getLogger("reinhardt_ws").info(
            "file descriptor limit %d: room for about %d connections", args.file_limit,
            max(0, args.file_limit - 64))
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_accept_errors)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    # One write per line: with --workers, several processes share this stdout.
    sys.stdout.write(f"reinhardt-ws {args.command} listening on ws://{args.host}:"
                     f"{server.port}/ (pid {os.getpid()}, event loop {args.loop_name})\n")
    sys.stdout.flush()
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait([waiter, asyncio.ensure_future(server.serve_forever())],
                       return_when=asyncio.FIRST_COMPLETED)
    await server.close()
    if rooms is not None:
        await rooms.close()


def _configure_logging(args: argparse.Namespace) -> None:
    """Logs to stderr at ``--log-level``, as text lines or (``--log-format json``) one
    JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, args.log_level), handlers=[handler], force=True)


def _raise_file_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each connection is one
    descriptor); returns the limit now in force (None where there is none)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: an accept that fails for want of descriptors
    or memory (asyncio retries it after a pause) is one rate-limited warning, not a
    traceback per attempt."""
    message = str(context.get("message", ""))
    if "out of system resource" in message:
        exc = context.get("exception")
        client_fault(logging.getLogger("reinhardt_ws"),
                     "cannot accept connections: %s (%s); retrying", message, exc)
        return
    loop.default_exception_handler(context)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default: ``sys.argv[1:]``); returns the exit
    status: 0 after a clean stop (SIGINT or SIGTERM), 2 for a bad argument, 1 when
    the server cannot start.  Each error is one line on stderr."""
    args = _parser().parse_args(argv)
    _configure_logging(args)
    host_error = _host_error(args.host)
    if host_error is not None:
        print(f"reinhardt-ws: {host_error}", file=sys.stderr)
        return 2
    for flag in ("max_message_size", "max_write_buffer", "max_rooms", "max_queue_bytes",
                 "message_rate", "message_burst"):
        value = getattr(args, flag, None)
        if value is not None and not value >= (1 if flag != "message_rate" else 1e-9):
            what = "positive" if flag == "message_rate" else "at least 1"
            print(f"reinhardt-ws: --{flag.replace('_', '-')} must be {what}", file=sys.stderr)
            return 2
    if args.max_connections < 0 or args.max_connections_per_ip < 0:
        print("reinhardt-ws: --max-connections and --max-connections-per-ip must not be "
              "negative", file=sys.stderr)
        return 2
    try:
        ServerOptions(**_admission_options(args))
    except ValueError as exc:
        print(f"reinhardt-ws: {exc}", file=sys.stderr)
        return 2
    workers = getattr(args, "workers", 1)
    if workers < 1:
        print("reinhardt-ws: --workers must be at least 1", file=sys.stderr)
        return 2
    secret = getattr(args, "token_secret", None)
    if secret is not None and len(secret.encode("utf-8")) < 32:
        print(f"reinhardt-ws: --token-secret (or ${TOKEN_SECRET_ENV}) needs at least 32 "
              "bytes; e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'",
              file=sys.stderr)
        return 2
    if not getattr(args, "token_ttl", 1.0) > 0:
        print("reinhardt-ws: --token-ttl must be positive", file=sys.stderr)
        return 2
    try:
        args.loop_name, factory = loop_factory(args.loop)
    except ImportError:
        print("reinhardt-ws: --loop uvloop needs uvloop: pip install 'reinhardt-ws[uvloop]' "
              "(or --loop auto, which falls back to asyncio's loop)", file=sys.stderr)
        return 2
    if getattr(args, "redis", None) is not None:
        if getattr(args, "redis_ttl", 1.0) <= 0:
            print("reinhardt-ws: --redis-ttl must be positive", file=sys.stderr)
            return 2
        if not args.redis_wait >= 0:
            print("reinhardt-ws: --redis-wait must be 0 or more seconds", file=sys.stderr)
            return 2
        try:
            import redis  # noqa: F401
        except ImportError:
            print("reinhardt-ws: --redis needs the redis extra: "
                  "pip install 'reinhardt-ws[redis]'", file=sys.stderr)
            return 2
        url_error = _redis_url_error(args.redis)
        if url_error is not None:
            print(f"reinhardt-ws: {url_error}", file=sys.stderr)
            return 2
    if workers > 1:
        if not getattr(args, "redis", None):
            print("reinhardt-ws: --workers above 1 needs --redis URL: rooms must be shared "
                  "between the worker processes", file=sys.stderr)
            return 2
        if args.port == 0:
            print("reinhardt-ws: --workers above 1 needs a fixed --port (0 would give each "
                  "worker a different port)", file=sys.stderr)
            return 2
        if not hasattr(socket, "SO_REUSEPORT"):
            print("reinhardt-ws: --workers above 1 needs SO_REUSEPORT, which this platform "
                  "lacks", file=sys.stderr)
            return 2
        # Checked here, before any worker starts: a cluster never starts split
        # (workers without Redis) nor half bound.
        try:
            _probe_port(args.host, args.port)
            asyncio.run(_reach_redis(args.redis, args.redis_wait))
        except StartError as exc:
            print(f"reinhardt-ws: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 1
        return _run_workers(workers, list(argv if argv is not None else sys.argv[1:]))
    args.file_limit = _raise_file_limit()
    try:
        _run_on(factory, _run(args))
    except StartError as exc:
        print(f"reinhardt-ws: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _die_with_parent() -> None:
    """In a worker, before exec: SIGTERM when the supervising process dies (even by
    SIGKILL), so that no worker is left holding the port.  Linux only."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _run_workers(workers: int, argv: list[str]) -> int:
    """Start *workers* processes listening on one port with SO_REUSEPORT (the
    kernel spreads new connections over them) and wait for them all.  SIGINT and
    SIGTERM are passed on, so that each closes its connections and leaves Redis.
    Exits non-zero if a worker did."""
    import subprocess

    # Each worker is this command again, as one process: for repeated options
    # argparse keeps the last value.
    command = [sys.executable, "-m", "reinhardt_ws", *argv, "--workers", "1", "--reuse-port"]
    procs: list[subprocess.Popen[bytes]] = []

    def _forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    for _ in range(workers):
        procs.append(subprocess.Popen(command, preexec_fn=_die_with_parent))
    code = 0
    for proc in procs:
        proc.wait()
        if proc.returncode:
            logging.getLogger("reinhardt_ws").warning("worker pid %d exited with %d",
                                                      proc.pid, proc.returncode)
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
