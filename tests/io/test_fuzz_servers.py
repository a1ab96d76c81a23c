"""Fuzzing through real servers (both fan-out implementations): any close payload gets
the close code RFC 6455 asks for; any input to the chat server gets an event, never a
1011 or a traceback.  The pure properties are in tests/protocol/test_fuzz.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

import reinhardt_ws as rw
from reinhardt_ws.apps.chat import ChatHandler
from reinhardt_ws.protocol.messages import (
    is_valid_close_code,
)
from tests.hostile.harness import CLOSE, TEXT, Closed, SyncClient, close_payload, frame
from tests.protocol.test_fuzz import FUZZ_IO, chat_inputs, valid_utf8_prefix


class ThreadServer:
    """A real server on 127.0.0.1 in a thread with its own loop (so that blocking
    clients can drive it from hypothesis examples); collects the tracebacks the
    library logs."""

    def __init__(self, handler: rw.WebSocketHandler) -> None:
        self.handler = handler
        self.loop = asyncio.new_event_loop()
        self.server: rw.Server | None = None
        self.tracebacks: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._log = _TracebackCatcher(self.tracebacks)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            rw.serve(self.handler, "127.0.0.1", 0, ping_interval=None))
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> ThreadServer:
        logging.getLogger("reinhardt_ws").addHandler(self._log)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        asyncio.run_coroutine_threadsafe(self.server.close(timeout=1), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
        logging.getLogger("reinhardt_ws").removeHandler(self._log)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port


class _TracebackCatcher(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None and record.exc_info[0] is not None:
            self.sink.append(f"{record.name}: {record.getMessage()} "
                             f"({record.exc_info[0].__name__}: {record.exc_info[1]})")


@contextlib.contextmanager
def thread_server(handler: rw.WebSocketHandler) -> Iterator[ThreadServer]:
    with ThreadServer(handler) as server:
        yield server


def expected_close_answer(payload: bytes) -> set[int | None]:
    """The close codes RFC 6455 lets a server answer *payload* with."""
    if len(payload) > 125 or len(payload) == 1:
        return {1002}
    if not payload:
        return {1000, None}
    answers: set[int | None] = set()
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_close_code(code):
        answers.add(1002)
    if not valid_utf8_prefix(payload[2:], True):
        answers.add(1007)
    return answers or {code}


close_payloads = st.one_of(
    st.binary(max_size=130),
    st.tuples(st.integers(0, 65535), st.binary(max_size=20)).map(
        lambda p: p[0].to_bytes(2, "big") + p[1]),
    st.tuples(st.sampled_from([1000, 1001, 1004, 1005, 1006, 1012, 1015, 2999, 3000, 4999,
                               5000]), st.text(max_size=30)).map(
        lambda p: p[0].to_bytes(2, "big") + p[1].encode("utf-8", "surrogatepass")),
)


def test_server_answers_every_close_payload(implementation: str) -> None:
    with thread_server(rw.WebSocketHandler()) as server:

        @FUZZ_IO
        @given(payload=close_payloads)
        def answers(payload: bytes) -> None:
            client = SyncClient.connect(server.port)
            try:
                client.send(frame(CLOSE, payload))
                answer = client.read_until_close(5)
            finally:
                client.close()
            assert answer in expected_close_answer(payload), (payload, answer)

        answers()
        assert not server.tracebacks, server.tracebacks


# -- the Redis envelope -------------------------------------------------------------------

SENTINEL = json.dumps({"type": "leave", "room": "__sentinel__"}).encode()


def test_chat_protocol_survives_any_input(implementation: str) -> None:
    with thread_server(ChatHandler()) as server:
        client = SyncClient.connect(server.port)
        try:

            @FUZZ_IO
            @given(inputs=st.lists(chat_inputs, min_size=1, max_size=3))
            def survives(inputs: list[tuple[int, bytes]]) -> None:
                client.send(b"".join(frame(op, payload) for op, payload in inputs)
                            + frame(TEXT, SENTINEL))
                while True:  # every answer is an event, up to the sentinel's error
                    try:
                        opcode, payload = client.recv_frame(5)
                    except (Closed, TimeoutError) as exc:
                        raise AssertionError(f"after {inputs!r}: {exc!r}") from exc
                    assert opcode == TEXT, (inputs, opcode, payload[:40])
                    event = json.loads(payload)["data"]
                    assert event["event"] in ("joined", "left", "message", "error"), event
                    if event["event"] == "error" and "__sentinel__" in event["error"]:
                        return

            survives()
        finally:
            client.send(frame(CLOSE, close_payload(1000)))
            client.close()
        assert not server.tracebacks, server.tracebacks
