"""The echo bench client: COUNT raw WebSocket clients, each in a send-and-wait loop.

Run by bench/test_echo.py (``python echo_client.py --port P --count C``), never by
hand.  Standard library only.  It opens COUNT connections and completes the
opening handshake (checking the 101 and its Sec-WebSocket-Accept), then per phase
each connection sends one masked text frame of SIZE bytes, waits for the exact
echo (one unmasked text frame carrying the same bytes), records the round trip
and sends again, until the phase's duration is over; then it waits for the echoes
still in flight (one per connection at most).  A wrong byte, an extra byte, a
closed socket or an echo that does not come within the stall timeout ends the
phase as FAILED: a lossy run is a failed run, not a fast one.

Control: one command per line on stdin, one reply per line on stdout.
  (start)                       -> READY <count>   |  ERROR <reason>
  RUN <seconds> <size> <stall_s> -> DONE <messages> <p50_us> <p99_us> <client_cpu_s> <wall_s>
                                   |  FAILED <reason>
  QUIT                          -> (exit)
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire

__all__ = ["masked_text_frame", "text_frame"]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def masked_text_frame(payload: bytes, mask: bytes) -> bytes:
    """A client's text frame (FIN, opcode 1) carrying *payload*, masked with *mask*."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, 0x80 | size))
    elif size < 65536:
        header = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def text_frame(payload: bytes) -> bytes:
    """The server's unmasked text frame carrying *payload*: the exact echo expected."""
    size = len(payload)
    return wire.make_frame(size, opcode=0x1)[:wire.frame_header_len(size)] + payload


def text_payload(size: int) -> bytes:
    """*size* bytes of printable ASCII (valid UTF-8, so a text frame may carry them)."""
    return bytes(0x21 + i % 94 for i in range(size))


def handshake_all(host: str, port: int, count: int, timeout: float) -> list[socket.socket]:
    request = wire.upgrade_request(host, port)
    socks: list[socket.socket] = []
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(request)
        wire.read_101(s)
        s.setblocking(False)
        socks.append(s)
    return socks


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index] / 1000.0  # ns -> us


def run_phase(socks: list[socket.socket], seconds: float, size: int,
              stall: float) -> str:
    payload = text_payload(size)
    expected = text_frame(payload)
    want = len(expected)
    ep = select.epoll()
    by_fd: dict[int, socket.socket] = {}
    frames: dict[int, bytes] = {}
    got: dict[int, bytes] = {}
    sent_at: dict[int, int] = {}
    for i, s in enumerate(socks):
        fd = s.fileno()
        by_fd[fd] = s
        frames[fd] = masked_text_frame(payload, (i * 2654435761 & 0xFFFFFFFF).to_bytes(4, "big"))
        got[fd] = b""
        ep.register(fd, select.EPOLLIN)
    latencies: list[int] = []
    record = latencies.append
    clock = time.perf_counter_ns
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = clock()
    end = t0 + int(seconds * 1e9)
    in_flight = 0
    for fd, s in by_fd.items():
        sent_at[fd] = clock()
        s.send(frames[fd])
        in_flight += 1
    last_progress = t0
    stall_ns = int(stall * 1e9)
    failure = ""
    try:
        while in_flight:
            events = ep.poll(0.5)
            now = clock()
            if not events:
                if now - last_progress > stall_ns:
                    failure = f"no echo for {stall:.0f}s ({in_flight} in flight)"
                    break
                continue
            last_progress = now
            sending = now < end
            for fd, _mask in events:
                s = by_fd[fd]
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    failure = "the server closed a connection"
                    break
                data = got[fd] + chunk if got[fd] else chunk
                if len(data) < want:
                    if not expected.startswith(data):
                        failure = f"wrong bytes in an echo: {data[:16]!r}"
                        break
                    got[fd] = data
                    continue
                if data != expected:
                    failure = (f"wrong or extra bytes: {len(data)} bytes, expected {want}: "
                               f"{data[:16]!r}")
                    break
                got[fd] = b""
                record(now - sent_at[fd])
                if sending:
                    sent_at[fd] = clock()
                    s.send(frames[fd])
                else:
                    in_flight -= 1
            if failure:
                break
    finally:
        ep.close()
    wall = (clock() - t0) / 1e9
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if failure:
        return f"FAILED {failure}"
    latencies.sort()
    client_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return (f"DONE {len(latencies)} {percentile(latencies, 0.5):.1f} "
            f"{percentile(latencies, 0.99):.1f} {client_cpu:.4f} {wall:.4f}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--connect-timeout", type=float, default=60.0)
    args = ap.parse_args()
    wire.raise_nofile_limit()
    try:
        socks = handshake_all(args.host, args.port, args.count, args.connect_timeout)
    except (OSError, ConnectionError) as exc:
        say(f"ERROR {type(exc).__name__}: {exc}".replace("\n", " "))
        return 1
    say(f"READY {len(socks)}")
    for raw in sys.stdin:
        cmd = raw.split()
        if not cmd:
            continue
        if cmd[0] == "RUN":
            say(run_phase(socks, float(cmd[1]), int(cmd[2]), float(cmd[3])))
        elif cmd[0] == "QUIT":
            break
        else:
            say(f"ERROR unknown command {cmd[0]}")
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
