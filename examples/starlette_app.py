"""A Starlette application beside reinhardt-ws: HTTP handlers broadcasting to rooms.

Needs the examples extra (``pip install 'reinhardt-ws[examples]'``: Starlette and
uvicorn)::

    python examples/starlette_app.py --http-port 8000 --ws-port 8765
    # a WebSocket client in room "news":   ws://127.0.0.1:8765/rooms/news
    curl -X POST localhost:8000/rooms/news/messages -H 'content-type: application/json' \\
         -d '{"text": "breaking"}'                 # -> {"room": "news", "delivered": 1}
    curl localhost:8000/rooms                       # -> {"news": 1}

The application keeps its HTTP routes (here: post to a room, list the rooms) and
hands its WebSocket traffic to reinhardt-ws on another port, so the broadcast to
every member of a room runs in our fan-out, not in a Python loop over ASGI
websockets. Both servers run in one process, on one event loop: the
application's lifespan starts ``rw.serve()`` and closes it (clients get 1001), and
the HTTP handlers call the same ``RoomManager`` directly. The same file also
runs under the uvicorn command (``uvicorn examples.starlette_app:app``; the
WebSocket port is then ``WS_PORT``, 8765 by default).

A room is named by the WebSocket path ``/rooms/<name>``; another path is closed
with 1008. A POST whose body is not a JSON object answers 400.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import reinhardt_ws as rw

ROOM_PATH = re.compile(r"/rooms/([A-Za-z0-9_.-]{1,64})")

rooms = rw.RoomManager()


class RoomSockets(rw.WebSocketHandler):
    """WebSocket side: a client joins the room its path names, and only listens."""

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        match = ROOM_PATH.fullmatch(conn.path.partition("?")[0])
        if match is None:
            await conn.close(rw.CloseCode.POLICY_VIOLATION, "connect to /rooms/<name>")
            return
        await rooms.join(match.group(1), conn)

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        await conn.send_json({"error": "post to the HTTP API to broadcast"})


# -- the HTTP side: ordinary Starlette handlers --------------------------------------
async def post_message(request: Request) -> JSONResponse:
    room = request.path_params["room"]
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"error": "the body must be JSON"}, status_code=400)
    if not isinstance(body, dict):
        return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
    result = await rooms.broadcast(room, rw.Message.json({"room": room, **body}))
    return JSONResponse({"room": room, "delivered": result.delivered})


async def list_rooms(request: Request) -> JSONResponse:
    return JSONResponse({room: await rooms.room_size(room) for room in await rooms.list_rooms()})


def create_app(ws_host: str = "127.0.0.1", ws_port: int = 8765) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Started on uvicorn's loop, stopped (clients get 1001) when uvicorn stops.
        async with rw.serve(RoomSockets(), ws_host, ws_port) as ws_server:
            app.state.ws_server = ws_server
            print(f"websockets on ws://{ws_host}:{ws_server.port}/rooms/<name>", flush=True)
            yield

    return Starlette(routes=[Route("/rooms/{room}/messages", post_message, methods=["POST"]),
                             Route("/rooms", list_rooms)],
                     lifespan=lifespan)


#: For ``uvicorn examples.starlette_app:app``.
app = create_app(os.environ.get("WS_HOST", "127.0.0.1"), int(os.environ.get("WS_PORT", "8765")))


async def serve(host: str, http_port: int, ws_port: int) -> None:
    config = uvicorn.Config(create_app(host, ws_port), host=host, port=http_port,
                            lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    # uvicorn handles SIGINT and SIGTERM (a graceful shutdown: the lifespan closes
    # our WebSocket clients with 1001), then puts back the handlers it found and
    # raises the signal again; with these no-op handlers that ends nothing, and the
    # program returns normally.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: None)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        print(f"http on http://{host}:{http_port}/rooms", flush=True)
    await task
    print("stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Starlette + reinhardt-ws in one process.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--ws-port", type=int, default=8765)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.http_port, args.ws_port))


if __name__ == "__main__":
    main()
