"""An echo contestant's server process, driven by bench/test_echo.py.

``python echo_server.py --contestant reinhardt [--loop uvloop|asyncio]``

Every contestant is its library's echo as its documentation writes it: each text
or binary message is sent back as it came.  Pings are off everywhere (a ping frame
would be an unexpected byte for the clients), and so is compression.

The control channel is a thread reading stdin, so that it works the same for the
asyncio servers and for socketify, whose libuv loop is not asyncio's:
  (start)   -> PORT <port> <json info>
  STATS     -> STATS <utime_s> <stime_s> <maxrss_kb>   (getrusage of this process)
  QUIT      -> (exit)
The thread sleeps in ``readline`` between commands, so it adds nothing to the
CPU time it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire

__all__ = ["ECHO_SERVERS"]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def control(quit_: Callable[[], None]) -> None:
    """Answer STATS until QUIT or EOF, then call *quit_* (from this thread)."""
    for raw in sys.stdin:
        cmd = raw.split()
        if not cmd:
            continue
        if cmd[0] == "STATS":
            ru = resource.getrusage(resource.RUSAGE_SELF)
            say(f"STATS {ru.ru_utime:.6f} {ru.ru_stime:.6f} {ru.ru_maxrss}")
        elif cmd[0] == "QUIT":
            break
        else:
            say(f"ERROR unknown command {cmd[0]}")
    quit_()


def _asyncio_main(start: Callable[[], Any], loop_name: str, info: dict[str, Any]) -> None:
    """Run the coroutine *start()* (which returns the port) on *loop_name*, then
    serve until QUIT."""
    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    port = loop.run_until_complete(start())
    say(f"PORT {port} {json.dumps({'loop': loop_name, **info})}")
    threading.Thread(target=control, args=(lambda: loop.call_soon_threadsafe(stop.set),),
                     daemon=True).start()
    loop.run_until_complete(stop.wait())
    loop.close()


def reinhardt(loop_name: str) -> None:
    """reinhardt_ws: the ``EchoHandler`` that ``reinhardt-ws echo`` runs."""
    import reinhardt_ws
    from reinhardt_ws import serve
    from reinhardt_ws.apps.echo import EchoHandler

    async def start() -> int:
        server = await serve(EchoHandler(), "127.0.0.1", 0, ping_interval=None,
                             compression=None)
        return int(server.port)

    _asyncio_main(start, loop_name, {
        "implementation": reinhardt_ws.IMPLEMENTATION, "version": reinhardt_ws.__version__})


def picows_echo(loop_name: str) -> None:
    """picows' own echo listener (its README's example): the floor of our stack."""
    import picows
    from picows import WSListener, ws_create_server

    class Echo(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            transport.send(frame.msg_type, frame.get_payload_as_memoryview())

        def pause_writing(self) -> None:
            pass

        def resume_writing(self) -> None:
            pass

    async def start() -> int:
        server = await ws_create_server(lambda _request: Echo(), "127.0.0.1", 0)
        return int(server.sockets[0].getsockname()[1])

    _asyncio_main(start, loop_name, {"version": picows.__version__})


def websockets_echo(loop_name: str) -> None:
    """python-websockets: ``async for message in ws: await ws.send(message)``."""
    import websockets
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    servers: list[Any] = []

    async def start() -> int:
        server = await serve(handler, "127.0.0.1", 0, ping_interval=None, compression=None)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    _asyncio_main(start, loop_name, {"version": websockets.__version__})


def socketify_echo(loop_name: str) -> None:
    """socketify (uWebSockets from Python, on libuv): its documentation's echo."""
    from socketify import App, CompressOptions

    # socketify takes a port, not port 0: take a free one from the kernel.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def ws_message(ws: Any, message: Any, opcode: Any) -> None:
        ws.send(message, opcode)

    app = App()
    app.ws("/*", {
        "compression": CompressOptions.DISABLED,
        "max_payload_length": 16 * 1024 * 1024,
        "idle_timeout": 0,  # no idle close and no automatic pings between phases
        "send_pings_automatically": False,
        "message": ws_message,
    })
    def on_listen(config: Any) -> None:
        import importlib.metadata

        version = importlib.metadata.version("socketify")
        say(f"PORT {port} {json.dumps({'loop': 'libuv (socketify)', 'version': version})}")
        threading.Thread(target=control, args=(lambda: os._exit(0),), daemon=True).start()

    app.listen(port, on_listen)
    app.run()


ECHO_SERVERS: dict[str, Callable[[str], None]] = {
    "reinhardt": reinhardt,
    "picows": picows_echo,
    "websockets": websockets_echo,
    "socketify": socketify_echo,
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contestant", required=True, choices=sorted(ECHO_SERVERS))
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    args = ap.parse_args()
    wire.raise_nofile_limit()
    ECHO_SERVERS[args.contestant](args.loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
