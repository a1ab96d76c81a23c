"""Command line: ``python -m reinhardt_ws {serve,echo}`` (also ``reinhardt-ws``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from .options import MiB
from .server import serve

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reinhardt-ws", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the chat server (rooms over WebSocket)"),
                       ("echo", "run an echo server")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
        cmd.add_argument("--port", type=int, default=8765, help="port to bind (8765; 0 picks one)")
        cmd.add_argument("--max-message-size", type=int, default=MiB,
                         help="largest message accepted, in bytes (1 MiB)")
        cmd.add_argument("--log-level", default="INFO")
        cmd.add_argument("--no-compression", action="store_true",
                         help="decline permessage-deflate (negotiated by default)")
        cmd.add_argument("--reuse-port", action="store_true",
                         help="bind with SO_REUSEPORT, so that several processes share the "
                              "port (--workers sets it)")
        if name == "serve":
            cmd.add_argument("--redis", metavar="URL", default=None,
                             help="share rooms through Redis (redis://host:port/db)")
            cmd.add_argument("--workers", type=int, default=1,
                             help="processes on one port (SO_REUSEPORT); needs --redis above 1")
            cmd.add_argument("--redis-prefix", metavar="PREFIX", default="rws",
                             help="namespace of the Redis keys and channels (rws)")
            cmd.add_argument("--redis-ttl", metavar="SECONDS", type=float, default=6.0,
                             help="a dead worker's members stop counting this long after its "
                                  "last heartbeat (6; heartbeats every third of it)")
    return parser


def _redis_options(args: argparse.Namespace) -> dict[str, Any]:
    ttl = float(args.redis_ttl)
    return {"prefix": args.redis_prefix, "ttl": ttl, "heartbeat_interval": ttl / 3}


async def _run(args: argparse.Namespace) -> None:
    http_handler = None
    rooms = None
    if args.command == "echo":
        from .apps.echo import EchoHandler

        handler: object = EchoHandler()
    else:
        from .apps.chat import ChatHandler, chat_http_handler
        from .rooms import RoomManager

        rooms = (RoomManager.from_url(args.redis, **_redis_options(args)) if args.redis
                 else RoomManager())
        handler = ChatHandler(rooms)
        http_handler = chat_http_handler
    server = await serve(handler, args.host, args.port,  # type: ignore[arg-type]
                         max_message_size=args.max_message_size, http_handler=http_handler,
                         reuse_port=args.reuse_port,
                         compression=None if args.no_compression else "deflate")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    # One write per line: with --workers, several processes share this stdout.
    sys.stdout.write(f"reinhardt-ws {args.command} listening on ws://{args.host}:"
                     f"{server.port}/ (pid {os.getpid()})\n")
    sys.stdout.flush()
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait([waiter, asyncio.ensure_future(server.serve_forever())],
                       return_when=asyncio.FIRST_COMPLETED)
    await server.close()
    if rooms is not None:
        await rooms.close()


def _configure_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    logging.getLogger("reinhardt_ws.picows").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args)
    workers = getattr(args, "workers", 1)
    if workers < 1:
        print("reinhardt-ws: --workers must be at least 1", file=sys.stderr)
        return 2
    if getattr(args, "redis", None) is not None:
        if getattr(args, "redis_ttl", 1.0) <= 0:
            print("reinhardt-ws: --redis-ttl must be positive", file=sys.stderr)
            return 2
        try:
            import redis  # noqa: F401
        except ImportError:
            print("reinhardt-ws: --redis needs the redis extra: "
                  "pip install 'reinhardt-ws[redis]'", file=sys.stderr)
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
        return _run_workers(workers, list(argv if argv is not None else sys.argv[1:]))
    try:
        asyncio.run(_run(args))
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
