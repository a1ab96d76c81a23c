"""A contestant server process, driven by the harness over stdin/stdout.

``python server_main.py --contestant picows [--loop uvloop] [--option key=value]``

Speaks the same line protocol as floor.c:
  (start)                 -> PORT <port> <json info>
  WAIT <n> <timeout>      -> CONNECTED <count>      (when n are connected, or at timeout)
  BCAST <m> <size> <b>    -> SENT <wall_s> <delivered> <dropped> <failed>   (when the loop ends)
  STATS                   -> STATS <utime_s> <stime_s> <maxrss_kb>
  ROOMS <k>               -> OK                     (connection i in accept order: room i % k)
  BCASTROOMS <m> <size> <b> -> SENT ...             (like BCAST; message j goes to room j % k only)
  PACE <m> <size> <rate>  -> SENT <wall_s> <delivered> <dropped> <failed> <late_p99_s> <late_max_s>
                             (open loop: message j broadcast alone once due at t0 + j/rate,
                              harness/pacer.py; late = start of its broadcast - due time;
                              SENDTIMES then gives the due times)
  GC                      -> OK                     (gc.collect(), before memory readings)
  SET <key> <value>       -> OK | ERROR             (a contestant setting between phases)
  SENDTIMES               -> SENDTIMES <json list>  (monotonic time of each broadcast of the
                                                     last BCAST, after SET record 1)
  QUIT                    -> (exit)
BCAST runs as a task, so STATS is answered even while a broadcast is stuck.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire
from contestants import CONTESTANTS


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def serve(name: str, options: dict[str, str], loop_name: str) -> None:
    contestant = CONTESTANTS[name](options)
    port = await contestant.start("127.0.0.1")
    info = {"loop": loop_name, **contestant.info()}
    say(f"PORT {port} {json.dumps(info)}")

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()

    async def wait_for(n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while contestant.count() < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        say(f"CONNECTED {contestant.count()}")

    async def broadcast(m: int, size: int, batch: int, to_rooms: bool = False) -> None:
        # Option payload=json (the compression benchmark): a JSON text message.
        payload: bytes | str = (wire.make_json_payload(size).decode()
                                if options.get("payload") == "json" else wire.make_payload(size))
        t0 = time.perf_counter()
        try:
            run = contestant.run_rooms if to_rooms else contestant.run
            delivered, dropped, failed = await run(payload, m, batch)  # type: ignore[arg-type]
        except Exception as exc:  # report, do not die: the harness fails the run
            say(f"ERROR broadcast raised {type(exc).__name__}: {exc}".replace("\n", " "))
            return
        say(f"SENT {time.perf_counter() - t0:.6f} {delivered} {dropped} {failed}")

    async def paced(m: int, size: int, rate: float) -> None:
        payload: bytes | str = (wire.make_json_payload(size).decode()
                                if options.get("payload") == "json" else wire.make_payload(size))
        t0 = time.perf_counter()
        try:
            delivered, dropped, failed, late = await contestant.run_paced(
                payload, m, rate)  # type: ignore[arg-type]
        except Exception as exc:
            say(f"ERROR PACE raised {type(exc).__name__}: {exc}".replace("\n", " "))
            return
        ordered = sorted(late) or [float("nan")]
        p99 = ordered[min(len(ordered) - 1, max(0, -(-99 * len(ordered) // 100) - 1))]
        say(f"SENT {time.perf_counter() - t0:.6f} {delivered} {dropped} {failed} "
            f"{p99:.6f} {ordered[-1]:.6f}")

    async def set_rooms(k: int) -> None:
        try:
            await contestant.set_rooms(k)
        except Exception as exc:
            say(f"ERROR ROOMS raised {type(exc).__name__}: {exc}".replace("\n", " "))
            return
        say("OK")

    def spawn(coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
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
        elif cmd[0] == "BCAST":
            m, size, batch = int(cmd[1]), int(cmd[2]), int(cmd[3])
            spawn(broadcast(m, size, batch))
        elif cmd[0] == "BCASTROOMS":
            m, size, batch = int(cmd[1]), int(cmd[2]), int(cmd[3])
            spawn(broadcast(m, size, batch, to_rooms=True))
        elif cmd[0] == "PACE":
            m, size, rate = int(cmd[1]), int(cmd[2]), float(cmd[3])
            spawn(paced(m, size, rate))
        elif cmd[0] == "ROOMS":
            spawn(set_rooms(int(cmd[1])))
        elif cmd[0] == "STATS":
            ru = resource.getrusage(resource.RUSAGE_SELF)
            say(f"STATS {ru.ru_utime:.6f} {ru.ru_stime:.6f} {ru.ru_maxrss}")
        elif cmd[0] == "GC":
            gc.collect()
            say("OK")
        elif cmd[0] == "SET" and len(cmd) == 3:
            try:
                contestant.set(cmd[1], cmd[2])
            except (KeyError, ValueError, TypeError) as exc:
                say(f"ERROR SET {cmd[1]}: {exc!r}")
            else:
                say("OK")
        elif cmd[0] == "SENDTIMES":
            try:
                say(f"SENDTIMES {json.dumps(contestant.send_times())}")
            except KeyError:
                say("ERROR SENDTIMES is not supported by this contestant")
        elif cmd[0] == "QUIT":
            break
        else:
            say(f"ERROR unknown command {cmd[0]}")
    for task in tasks:
        task.cancel()
    await contestant.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contestant", required=True, choices=sorted(CONTESTANTS))
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("--option", action="append", default=[], help="key=value for the contestant")
    args = ap.parse_args()
    options = dict(item.split("=", 1) for item in args.option)
    wire.raise_nofile_limit()
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    else:
        loop_factory = asyncio.new_event_loop
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(args.contestant, options, args.loop))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
