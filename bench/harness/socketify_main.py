"""The socketify contestant (uWebSockets from Python), in its own server process.

``python socketify_main.py [--loop uvloop|asyncio] [--option key=value]``

socketify drives its own libuv loop (uWebSockets') from an asyncio loop: its
``Loop`` calls libuv's ``run_nowait`` once per asyncio iteration while there is
work, and backs off to a timer when idle.  So this process reads its commands with
asyncio (``connect_read_pipe`` on stdin), which never blocks the libuv side, and
one broadcast *iteration* is what it is for the other Python contestants: ``batch``
calls of ``app.publish``, then ``await asyncio.sleep(0)``; the libuv pass that
follows writes what was published (uWebSockets queues a publish in its topic tree
and drains it, corked per socket, at the end of the libuv iteration).

The broadcast is the one socketify documents: every connection subscribes to a
topic on open and the server calls ``app.publish(topic, payload, OpCode.BINARY)``.
``ROOMS k`` subscribes connection i (in accept order) to topic ``room<i % k>``.

Speaks the line protocol of server_main.py and floor.c:
  (start)                    -> PORT <port> <json info>
  WAIT <n> <timeout>         -> CONNECTED <count>
  BCAST <m> <size> <b>       -> SENT <wall_s> <delivered> <dropped> <failed>
  ROOMS <k>                  -> OK
  BCASTROOMS <m> <size> <b>  -> SENT ... (message j to room j % k)
  STATS                      -> STATS <utime_s> <stime_s> <maxrss_kb>
  GC                         -> OK
  QUIT                       -> (exit)

Options (``--option key=value``):
  max_backpressure   bytes uWebSockets buffers per socket before it skips that
                     socket in a publish (default 64 MiB here: healthy bench clients
                     must never be skipped; socketify's own default is 64 KiB)
  compression        "shared" (CompressOptions.SHARED_COMPRESSOR) or "off" (default)
  payload            "json" for the compression benchmark's JSON message (text
                     frames), else the binary bench payload
  driver             "asyncio" (default): socketify's own Loop, as ``App.run()`` runs
                     it; "libuv": libuv alone (``uv_run``), stdin read on a libuv timer
                     every ``stdin_poll_ms`` (5) ms, one iteration per libuv iteration
                     (a cross-check that the asyncio integration is not what costs)

Delivered counts are the subscribers at each publish; uWebSockets reports no
per-socket outcome of a publish, so dropped and failed are always 0 (a skipped
socket shows up as missing bytes at the client).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def payload_for(size: int, kind: str) -> bytes:
    if kind == "json":
        return wire.make_json_payload(size)
    return wire.make_payload(size)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("--option", action="append", default=[], help="key=value")
    args = ap.parse_args()
    options = dict(item.split("=", 1) for item in args.option)
    wire.raise_nofile_limit()

    # socketify's Loop makes its asyncio loop with the policy's new_event_loop().
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    try:
        import socketify
        from socketify import App, AppListenOptions, CompressOptions, OpCode
    except Exception as exc:  # libuv1 missing, no wheel for this platform, ...
        say(f"ERROR socketify is not importable: {type(exc).__name__}: {exc}".replace("\n", " "))
        return 2

    driver = options.get("driver", "asyncio")
    compression = options.get("compression", "off")
    kind = options.get("payload", "binary")
    opcode = OpCode.TEXT if kind == "json" else OpCode.BINARY
    compress = compression == "shared"
    behavior: dict[str, Any] = {
        "compression": CompressOptions.SHARED_COMPRESSOR if compress else CompressOptions.DISABLED,
        "max_payload_length": 16 * 1024,
        "idle_timeout": 0,  # 0 disables it: idle bench clients stay connected
        "max_backpressure": int(options.get("max_backpressure", 64 << 20)),
        "close_on_backpressure_limit": False,
        "send_pings_automatically": False,  # a ping would be an unexpected byte
    }

    conns: dict[int, Any] = {}  # native pointer -> WebSocket, in accept order
    rooms: list[str] = []

    def key(ws: Any) -> int:
        return int(socketify.native.ffi.cast("uintptr_t", ws.ws))

    def on_open(ws: Any) -> None:
        ws.subscribe("bench")
        conns[key(ws)] = ws

    def on_close(ws: Any, code: int, message: Any) -> None:
        conns.pop(key(ws), None)

    app = App(idle_relaxation_time=0.001)
    loop = app.loop.loop
    behavior.update(open=on_open, close=on_close)
    app.ws("/*", behavior)
    bound: list[int] = []
    app.listen(AppListenOptions(port=0, host="127.0.0.1"),
               lambda config: bound.append(config.port))
    if not bound:
        say("ERROR socketify did not report a listening port")
        return 2

    async def serve() -> None:
        info = {"loop": f"{args.loop} ({type(loop).__module__})", "version": _version(),
                "compression": compression, "max_backpressure": behavior["max_backpressure"],
                "payload": kind}
        say(f"PORT {bound[0]} {json.dumps(info)}")
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        tasks: set[asyncio.Task[None]] = set()
        publish = app.publish

        async def wait_for(n: int, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while len(conns) < n and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            say(f"CONNECTED {len(conns)}")

        async def broadcast(m: int, size: int, batch: int, by_room: bool) -> None:
            payload = payload_for(size, kind)
            k = len(rooms)
            if by_room and (k == 0 or m % k):
                say(f"ERROR BCASTROOMS needs ROOMS first and m a multiple of k (k={k})")
                return
            sizes = [app.num_subscribers(topic) for topic in rooms] if by_room else []
            everyone = len(conns)
            delivered = 0
            t0 = time.perf_counter()
            j = 0
            for _ in range(m // batch):
                for _ in range(batch):
                    if by_room:
                        publish(rooms[j % k], payload, opcode, compress)
                        delivered += sizes[j % k]
                        j += 1
                    else:
                        publish("bench", payload, opcode, compress)
                        delivered += everyone
                await asyncio.sleep(0)
            say(f"SENT {time.perf_counter() - t0:.6f} {delivered} 0 0")

        def spawn(coro: Any) -> None:
            task = asyncio.ensure_future(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        while True:
            raw = await reader.readline()
            if not raw:
                break
            cmd = raw.decode().split()
            if not cmd:
                continue
            if cmd[0] == "WAIT":
                spawn(wait_for(int(cmd[1]), float(cmd[2]) if len(cmd) > 2 else 60.0))
            elif cmd[0] in ("BCAST", "BCASTROOMS"):
                spawn(broadcast(int(cmd[1]), int(cmd[2]), int(cmd[3]), cmd[0] == "BCASTROOMS"))
            elif cmd[0] == "ROOMS":
                k = int(cmd[1])
                for topic in rooms:
                    for ws in conns.values():
                        ws.unsubscribe(topic)
                rooms[:] = [f"room{j}" for j in range(k)]
                for i, ws in enumerate(conns.values()):
                    ws.subscribe(rooms[i % k])
                say("OK")
            elif cmd[0] == "STATS":
                ru = resource.getrusage(resource.RUSAGE_SELF)
                say(f"STATS {ru.ru_utime:.6f} {ru.ru_stime:.6f} {ru.ru_maxrss}")
            elif cmd[0] == "GC":
                gc.collect()
                say("OK")
            elif cmd[0] == "QUIT":
                break
            else:
                say(f"ERROR unknown command {cmd[0]}")
        for task in tasks:
            task.cancel()

    try:
        if driver == "asyncio":
            # socketify's own integration (what App.run() does): asyncio runs, and
            # polls libuv (run_nowait) every iteration while busy.
            app.loop.run_until_complete(serve())
        else:
            serve_on_libuv(app, conns, rooms, bound[0], options, say_info=lambda: {
                "loop": "libuv (socketify's uv loop run directly)", "version": _version(),
                "compression": compression, "max_backpressure": behavior["max_backpressure"],
                "payload": kind}, kind=kind, opcode=opcode, compress=compress)
    finally:
        app.close()
    return 0


def serve_on_libuv(app: Any, conns: dict[int, Any], rooms: list[str], port: int,
                   options: dict[str, str], say_info: Any, kind: str, opcode: int,
                   compress: bool) -> None:
    """The same protocol with libuv alone in charge (no asyncio): libuv blocks in
    epoll when there is nothing to do, a 2 ms libuv timer reads stdin without
    blocking, and a broadcast iteration is one libuv timer callback (``batch``
    publishes) re-armed at 0 ms, so that libuv polls and uWebSockets drains its
    topic tree (its post-poll handler) between iterations."""
    uv = app.loop.uv_loop
    os.set_blocking(sys.stdin.fileno(), False)
    say(f"PORT {port} {json.dumps(say_info())}")
    state: dict[str, Any] = {"buf": b"", "waits": [], "next": None, "armed": False}
    keep: list[Any] = []  # timers stay referenced until they have fired and a later one runs

    def later(ms: int, fn: Any) -> None:
        keep.append(uv.create_timer(ms, 0, lambda _data: fn(), None))
        if len(keep) > 4:
            del keep[:-4]

    def run_broadcast(m: int, size: int, batch: int, by_room: bool) -> None:
        payload = payload_for(size, kind)
        k = len(rooms)
        if by_room and (k == 0 or m % k):
            say(f"ERROR BCASTROOMS needs ROOMS first and m a multiple of k (k={k})")
            return
        sizes = [app.num_subscribers(topic) for topic in rooms] if by_room else []
        everyone = len(conns)
        publish = app.publish
        progress = {"left": m // batch, "delivered": 0, "j": 0}
        t0 = time.perf_counter()

        def iteration() -> None:
            state["armed"] = False
            for _ in range(batch):
                if by_room:
                    j = progress["j"]
                    publish(rooms[j % k], payload, opcode, compress)
                    progress["delivered"] += sizes[j % k]
                    progress["j"] = j + 1
                else:
                    publish("bench", payload, opcode, compress)
                    progress["delivered"] += everyone
            progress["left"] -= 1
            if progress["left"] <= 0:
                state["next"] = None
                say(f"SENT {time.perf_counter() - t0:.6f} {progress['delivered']} 0 0")

        if progress["left"] > 0:
            state["next"] = iteration
            arm()
        else:
            say("SENT 0.0 0 0 0")

    def arm() -> None:
        # A 0 ms timer armed here fires in the *next* libuv iteration (one armed
        # from a timer callback would fire in the same timer pass), and its being
        # due keeps that iteration's poll from blocking.
        if state["next"] is not None and not state["armed"]:
            state["armed"] = True
            later(0, state["next"])

    def on_check(_data: Any) -> None:  # after every poll (uWS drained its topics already
        arm()                           # or does so in this same check phase)

    def poll(_data: Any) -> None:
        now = time.monotonic()
        for w in list(state["waits"]):
            n, deadline = w
            if len(conns) >= n or now > deadline:
                say(f"CONNECTED {len(conns)}")
                state["waits"].remove(w)
        try:
            chunk = os.read(sys.stdin.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:
            uv.stop()
            return
        state["buf"] += chunk
        while b"\n" in state["buf"]:
            raw, state["buf"] = state["buf"].split(b"\n", 1)
            cmd = raw.decode().split()
            if not cmd:
                continue
            if cmd[0] == "WAIT":
                timeout = float(cmd[2]) if len(cmd) > 2 else 60.0
                state["waits"].append((int(cmd[1]), now + timeout))
            elif cmd[0] in ("BCAST", "BCASTROOMS"):
                run_broadcast(int(cmd[1]), int(cmd[2]), int(cmd[3]), cmd[0] == "BCASTROOMS")
            elif cmd[0] == "ROOMS":
                k = int(cmd[1])
                for topic in rooms:
                    for ws in conns.values():
                        ws.unsubscribe(topic)
                rooms[:] = [f"room{j}" for j in range(k)]
                for i, ws in enumerate(conns.values()):
                    ws.subscribe(rooms[i % k])
                say("OK")
            elif cmd[0] == "STATS":
                ru = resource.getrusage(resource.RUSAGE_SELF)
                say(f"STATS {ru.ru_utime:.6f} {ru.ru_stime:.6f} {ru.ru_maxrss}")
            elif cmd[0] == "GC":
                gc.collect()
                say("OK")
            elif cmd[0] == "QUIT":
                uv.stop()
                return
            else:
                say(f"ERROR unknown command {cmd[0]}")

    interval = int(options.get("stdin_poll_ms", 5))
    stdin_timer = uv.create_timer(interval, interval, poll, None)
    check = uv.create_check(on_check, None)
    uv.run()
    check.stop()
    stdin_timer.stop()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("socketify")
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
