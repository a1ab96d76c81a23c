"""Command line: ``python -m reinhardt_ws {serve,echo}`` (also ``reinhardt-ws``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .server import MiB, serve

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
        if name == "serve":
            cmd.add_argument("--redis", metavar="URL", default=None,
                             help="share rooms through Redis (redis://host:port/db)")
            cmd.add_argument("--workers", type=int, default=1,
                             help="processes on one port (SO_REUSEPORT); needs --redis above 1")
    return parser


async def _run(args: argparse.Namespace) -> None:
    http_handler = None
    rooms = None
    if args.command == "echo":
        from .echo import EchoHandler

        handler: object = EchoHandler()
    else:
        from .chat import ChatHandler, chat_http_handler
        from .rooms import RoomManager

        rooms = RoomManager.from_url(args.redis) if args.redis else RoomManager()
        handler = ChatHandler(rooms)
        http_handler = chat_http_handler
    server = await serve(handler, args.host, args.port,  # type: ignore[arg-type]
                         max_message_size=args.max_message_size, http_handler=http_handler,
                         reuse_port=getattr(args, "workers", 1) > 1)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    print(f"reinhardt-ws {args.command} listening on ws://{args.host}:{server.port}/ "
          f"(pid {os.getpid()})", flush=True)
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait([waiter, asyncio.ensure_future(server.serve_forever())],
                       return_when=asyncio.FIRST_COMPLETED)
    await server.close()
    if rooms is not None:
        await rooms.close()


def _worker(argv: list[str]) -> None:
    main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("reinhardt_ws.picows").setLevel(logging.WARNING)
    workers = getattr(args, "workers", 1)
    if workers < 1:
        print("reinhardt-ws: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1 and not getattr(args, "redis", None):
        print("reinhardt-ws: --workers above 1 needs --redis URL: rooms must be shared "
              "between the worker processes", file=sys.stderr)
        return 2
    if workers > 1:
        return _run_workers(args, workers, list(argv if argv is not None else sys.argv[1:]))
    try:
        asyncio.run(_run(args))
    except KeyboardInterrupt:
        pass
    return 0


def _run_workers(args: argparse.Namespace, workers: int, argv: list[str]) -> int:
    import multiprocessing

    child_argv = []
    skip = False
    for item in argv:  # each child runs one worker
        if skip:
            skip = False
            continue
        if item == "--workers":
            skip = True
            continue
        if item.startswith("--workers="):
            continue
        child_argv.append(item)
    child_argv += ["--workers", "1"]
    os.environ["REINHARDT_WS_REUSE_PORT"] = "1"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(child_argv,), daemon=False)
             for _ in range(workers)]
    for proc in procs:
        proc.start()

    def _forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.pid is not None:
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    code = 0
    for proc in procs:
        proc.join()
        code = code or (proc.exitcode or 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
