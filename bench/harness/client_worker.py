"""A bench client process: COUNT raw WebSocket clients that drain their sockets.

Run by the harness (``python client_worker.py --port P --count N``), never by hand.
It opens COUNT TCP connections, sends each the opening handshake with the fixed
key and checks the 101 answer and its Sec-WebSocket-Accept, then reads every
socket with epoll, counting bytes and (unless ``--no-verify``) checking each byte
against the expected frame stream.  Nothing is parsed per frame and nothing is
sent after the handshake: client work stays small and out of the server process.

Control: one command per line on stdin, one reply per line on stdout.
  (start)                       -> READY <count>   |  ERROR <reason>
  STALL <k>                     -> OK   (stop reading the first k sockets for good)
  EXPECT <bytes> <size> <timeout> <stall_timeout> [<record>]
                                -> ARMED, then later exactly one of
                                   DONE <client_cpu_s>
                                   SHORT <short_sockets> <missing_bytes> <closed> <corrupt> <over>
  EXPECTMSG <messages> <size> <kind> <timeout> <stall_timeout>      (--deflate only)
                                -> ARMED, then DONE <client_cpu_s> <wire_bytes> <compressed>
                                   or SHORT ... as for EXPECT
  ARRIVALS                      -> ARRIVALS <json: per recorded socket, the
                                   time.monotonic() at which each frame of the
                                   last phase was complete>
  QUIT                          -> (exit)
EXPECT arms a phase: every active socket must receive exactly <bytes> more bytes,
the stream of frames of <size>-byte payloads.  SHORT is sent when the phase times
out, makes no progress for <stall_timeout> seconds, or a socket gets a wrong byte,
too many bytes or EOF.  With <record> = k > 0, k active sockets spread evenly
over this process's sockets note
when each frame of the phase arrived whole (for the latency measurement; the
time is that of the read that completed it, so a --poll-interval adds up to
that much).

``--deflate OFFER`` (additive mode for the compression benchmark): the handshake
carries ``Sec-WebSocket-Extensions: OFFER``, READY reports what the 101 answered
(``READY <count> <extensions header or ->``, the same on every socket or it is an
error), and the sockets are parsed frame by frame: RSV1 messages are inflated with
raw deflate (``zlib`` wbits -15, which reads any smaller window), with a fresh
inflater per message when the server answered ``server_no_context_takeover`` and
one per socket otherwise (a no-context payload already inflated and matched in
this process is not inflated again: the same bytes inflate the same), and every
message is compared with the expected
payload (``<kind>``: ``json`` for wire.make_json_payload, else make_payload).
EXPECTMSG counts messages instead of bytes (compressed sizes are not known in
advance) and DONE reports the wire bytes that carried them and how many of the
messages were compressed, summed over the sockets.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire

RECV_SIZE = 256 * 1024


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def handshake_all(host: str, port: int, count: int, batch: int,
                  timeout: float, offer: str | None = None,
                  answers: list[str] | None = None, browser: bool = False) -> list[socket.socket]:
    request = wire.upgrade_request(host, port, browser=browser)
    if offer:
        request = request[:-2] + f"Sec-WebSocket-Extensions: {offer}\r\n\r\n".encode()
    socks: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    for start in range(0, count, batch):
        group = []
        for _ in range(start, min(count, start + batch)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(max(0.1, deadline - time.monotonic()))
            s.connect((host, port))
            s.sendall(request)
            group.append(s)
        for s in group:
            headers = wire.read_101(s, deadline)
            if answers is not None:
                answers.append(headers.get(b"sec-websocket-extensions", b"-").decode())
            s.setblocking(False)
        socks.extend(group)
    return socks


#: Compressed payloads (no context) that inflated to the expected message: the
#: client checks each distinct one once per process, so that verifying a shared
#: compressed frame costs what comparing a plain one does.
_INFLATED_OK: set[bytes] = set()


class DeflateStream:
    """One socket's frames in --deflate mode: parses, inflates, verifies."""

    __slots__ = ("buf", "compressed", "error", "fragments", "keep_context", "messages",
                 "rsv1", "want_opcode", "want_payload", "wire", "z")

    def __init__(self, keep_context: bool) -> None:
        self.buf = bytearray()
        self.keep_context = keep_context
        self.z = zlib.decompressobj(-15)
        self.messages = 0  # complete, verified messages since the phase was armed
        self.compressed = 0
        self.wire = 0  # bytes of those messages' frames
        self.error = ""
        self.fragments: list[bytes] = []
        self.rsv1 = False
        self.want_payload = b""
        self.want_opcode = 2

    def arm(self, payload: bytes, opcode: int) -> None:
        self.messages = self.compressed = self.wire = 0
        self.want_payload, self.want_opcode = payload, opcode

    def feed(self, data: bytes | memoryview) -> None:
        """Parse every complete frame in the buffer; sets ``error`` on a bad one."""
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b1 & 0x80:
                self.error = "masked server frame"
                return
            n = b1 & 0x7F
            start = pos + 2
            if n == 126:
                if end - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 4], "big")
                start = pos + 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                start = pos + 10
            if end - start < n:
                break
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode == 0:
                if not self.fragments:
                    self.error = "continuation without a message"
                    return
            elif self.fragments or opcode != self.want_opcode or b0 & 0x30:
                self.error = f"unexpected frame: first byte {b0:#x}"
                return
            else:
                self.rsv1 = bool(b0 & 0x40)
            self.fragments.append(bytes(buf[start:start + n]))
            frame_bytes = start + n - pos
            pos = start + n
            self.wire += frame_bytes
            if not fin:
                continue
            payload = b"".join(self.fragments)
            self.fragments = []
            if self.rsv1:
                self.compressed += 1
                if not self.keep_context and payload in _INFLATED_OK:
                    # The same compressed bytes, inflated without context, were
                    # already inflated and matched: they would again.
                    self.messages += 1
                    continue
                try:
                    inflated = self.z.decompress(payload + b"\x00\x00\xff\xff")
                except zlib.error as exc:
                    self.error = f"inflate: {exc}"
                    return
                if not self.keep_context:
                    self.z = zlib.decompressobj(-15)
                    if inflated == self.want_payload:
                        if len(_INFLATED_OK) > 64:
                            _INFLATED_OK.clear()
                        _INFLATED_OK.add(payload)
                payload = inflated
            if payload != self.want_payload:
                self.error = f"message {self.messages} differs ({len(payload)} bytes)"
                return
            self.messages += 1
        del buf[:pos]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--connect-batch", type=int, default=256)
    ap.add_argument("--connect-timeout", type=float, default=120.0)
    ap.add_argument("--no-verify", action="store_true", help="count bytes without checking them")
    ap.add_argument("--deflate", default="",
                    help="offer this Sec-WebSocket-Extensions value and parse frames (see doc)")
    ap.add_argument("--browser-headers", action="store_true",
                    help="send a browser's header fields with the upgrade (wire.BROWSER_HEADERS)")
    ap.add_argument("--poll-interval", type=float, default=0.0,
                    help="during a phase, sleep this many seconds between non-blocking polls "
                         "instead of blocking in epoll (0: block)")
    args = ap.parse_args()

    wire.raise_nofile_limit()
    answers: list[str] = []
    try:
        socks = handshake_all(args.host, args.port, args.count, args.connect_batch,
                              args.connect_timeout, args.deflate or None, answers,
                              browser=args.browser_headers)
    except (OSError, ConnectionError) as exc:
        say(f"ERROR {type(exc).__name__}: {exc}".replace("\n", " "))
        return 1
    streams: list[DeflateStream] = []
    if args.deflate:
        if len(set(answers)) != 1:
            say(f"ERROR sockets negotiated different extensions: {sorted(set(answers))}")
            return 1
        answer = answers[0]
        agreed = answer.lower().replace(" ", "").split(";")
        keep = "server_no_context_takeover" not in agreed
        streams = [DeflateStream(keep) for _ in socks]

    n = len(socks)
    max_fd = max(s.fileno() for s in socks)
    slot_of_fd: list[int] = [-1] * (max_fd + 1)
    for i, s in enumerate(socks):
        slot_of_fd[s.fileno()] = i
    received = [0] * n
    active = [True] * n  # False once stalled or closed
    closed = [False] * n
    ep = select.epoll(sizehint=n + 1)
    stdin_fd = sys.stdin.fileno()
    ep.register(stdin_fd, select.EPOLLIN)
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    say(f"READY {n} {answers[0]}" if args.deflate else f"READY {n}")

    buf = bytearray(RECV_SIZE)
    mv = memoryview(buf)
    recv_into = [s.recv_into for s in socks]
    verify = not args.no_verify
    poll_interval = args.poll_interval

    # Phase state.
    armed = False
    base = 0  # bytes every active socket had when the phase was armed
    target = 0
    remaining = 0  # active sockets still short of target
    flen = 1
    pattern = b""
    deadline = stall_deadline = 0.0
    stall_timeout = 0.0
    corrupt = over = 0
    cpu_at_arm = 0.0
    line_buf = b""
    by_message = False  # EXPECTMSG: count messages (--deflate)
    want_messages = 0
    recorded: dict[int, list[float]] = {}  # socket slot -> arrival time of each frame

    def finish_short(reason: str) -> None:
        nonlocal armed
        short = missing = 0
        for i in range(n):
            if by_message:
                if (active[i] or closed[i]) and streams[i].messages < want_messages:
                    short += 1
                    missing += want_messages - streams[i].messages
            elif (active[i] or closed[i]) and received[i] < target:
                short += 1
                missing += target - received[i]
        n_closed = sum(closed)
        say(f"SHORT {short} {missing} {n_closed} {corrupt} {over} {reason}")
        armed = False

    while True:
        if armed:
            now = time.monotonic()
            if now > deadline:
                finish_short("timeout")
            elif now > stall_deadline:
                finish_short("stalled")
        if armed and poll_interval > 0:
            # Timer-driven draining: the client is never asleep in epoll_wait while a
            # phase runs, so the server's send() never pays for waking it up.
            events = ep.poll(0, 8192)
            if not events:
                time.sleep(poll_interval)
                continue
        else:
            events = ep.poll(0.2 if armed else 1.0, 8192)
        for fd, _ev in events:
            if fd == stdin_fd:
                chunk = os.read(stdin_fd, 4096)
                if not chunk:
                    return 0
                line_buf += chunk
                while b"\n" in line_buf:
                    raw, line_buf = line_buf.split(b"\n", 1)
                    cmd = raw.decode().split()
                    if not cmd:
                        continue
                    if cmd[0] == "QUIT":
                        return 0
                    if cmd[0] == "STALL":
                        k = min(int(cmd[1]), n)
                        for i in range(k):
                            if active[i]:
                                ep.unregister(socks[i].fileno())
                                active[i] = False
                        say("OK")
                    elif cmd[0] == "EXPECTMSG" and streams:
                        want_messages, size, kind = int(cmd[1]), int(cmd[2]), cmd[3]
                        timeout, stall_timeout = float(cmd[4]), float(cmd[5])
                        if any(closed):
                            say(f"SHORT {sum(closed)} 0 {sum(closed)} 0 0 closed-before-phase")
                            continue
                        bad = sum(1 for st in streams if st.error or st.buf or st.fragments)
                        if bad:
                            say(f"SHORT {bad} 0 0 0 {bad} bytes-before-phase")
                            continue
                        if kind == "json":
                            want, want_opcode = wire.make_json_payload(size), 0x1
                        else:
                            want, want_opcode = wire.make_payload(size), 0x2
                        for st in streams:
                            st.arm(want, want_opcode)
                        remaining = sum(1 for i in range(n) if active[i]) if want_messages else 0
                        by_message = True
                        corrupt = over = 0
                        now = time.monotonic()
                        deadline = now + timeout
                        stall_deadline = now + stall_timeout
                        armed = True
                        cpu_at_arm = sum(os.times()[:2])
                        say("ARMED")
                        if remaining == 0:
                            armed = False
                            say(f"DONE {sum(os.times()[:2]) - cpu_at_arm:.3f} 0 0")
                    elif cmd[0] == "ARRIVALS":
                        say(f"ARRIVALS {json.dumps(list(recorded.values()))}")
                    elif cmd[0] == "EXPECT":
                        nbytes, size = int(cmd[1]), int(cmd[2])
                        timeout, stall_timeout = float(cmd[3]), float(cmd[4])
                        record = int(cmd[5]) if len(cmd) > 5 else 0
                        # Spread over the sockets (accept order is about the order
                        # the server writes them in): not only the first ones.
                        actives = [i for i in range(n) if active[i]]
                        step = max(1, len(actives) // record) if record else 1
                        recorded = {i: [] for i in actives[::step][:record]}
                        firsts = [received[i] for i in range(n) if active[i]]
                        base = firsts[0] if firsts else 0
                        if any(closed):
                            say(f"SHORT {sum(closed)} 0 {sum(closed)} 0 0 closed-before-phase")
                            continue
                        if any(r != base for r in firsts):
                            uneven = sum(r != base for r in firsts)
                            say(f"SHORT {uneven} 0 {sum(closed)} 0 0 uneven-before-phase")
                            continue
                        target = base + nbytes
                        by_message = False
                        remaining = sum(1 for i in range(n) if active[i]) if nbytes else 0
                        frame = wire.make_frame(size)
                        flen = len(frame)
                        pattern = frame * (RECV_SIZE // flen + 2)
                        corrupt = over = 0
                        now = time.monotonic()
                        deadline = now + timeout
                        stall_deadline = now + stall_timeout
                        armed = True
                        cpu_at_arm = sum(os.times()[:2])
                        say("ARMED")
                        if remaining == 0:
                            armed = False
                            say(f"DONE {sum(os.times()[:2]) - cpu_at_arm:.3f}")
                    else:
                        say(f"ERROR unknown command {cmd[0]}")
                continue
            i = slot_of_fd[fd]
            try:
                got = recv_into[i](buf)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                got = 0
            if got == 0:
                ep.unregister(fd)
                active[i] = False
                closed[i] = True
                if armed:
                    finish_short("eof")
                continue
            before = received[i]
            after = before + got
            received[i] = after
            if streams:
                st = streams[i]
                st.feed(mv[:got])
                if not armed:
                    st.error = st.error or "bytes outside a phase"
                    continue
                stall_deadline = time.monotonic() + stall_timeout
                if st.error:
                    corrupt += 1
                    finish_short(f"corrupt:{st.error.replace(' ', '_')}")
                    continue
                if st.messages >= want_messages:
                    if st.messages > want_messages or st.buf or st.fragments:
                        over += 1
                        finish_short("too-many-messages")
                        continue
                    remaining -= 1
                    if remaining == 0:
                        armed = False
                        wire_bytes = sum(s.wire for s in streams)
                        compressed = sum(s.compressed for s in streams)
                        say(f"DONE {sum(os.times()[:2]) - cpu_at_arm:.3f} {wire_bytes} "
                            f"{compressed}")
                continue
            if not armed:
                continue
            stall_deadline = time.monotonic() + stall_timeout
            if recorded:
                arrivals = recorded.get(i)
                if arrivals is not None:
                    done = (after - base) // flen - (before - base) // flen
                    if done > 0:
                        arrivals.extend([time.monotonic()] * done)
            if verify and not pattern.startswith(mv[:got], (before - base) % flen):
                corrupt += 1
                finish_short("corrupt")
                continue
            if after >= target:
                if after > target:
                    over += 1
                    finish_short("too-many-bytes")
                    continue
                remaining -= 1
                if remaining == 0:
                    armed = False
                    say(f"DONE {sum(os.times()[:2]) - cpu_at_arm:.3f}")


if __name__ == "__main__":
    sys.exit(main())
