"""The frame listener: the extension's ``Listener`` (cython axis) builds a whole
single-frame message itself and hands it to the connection; the Python twin
(``_listener.ConnectionListener``) and every other frame go through
``WebSocketConnection._on_data_frame`` and the assembler.  Both give the same
messages; the refusals (1002, 1007, 1009) are tests/io/test_bad_input.py's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import reinhardt_ws as rw
from reinhardt_ws import connection as connection_module

from ..core_helpers import BINARY, CONT, TEXT, Run
from ..fixtures import RawClient, Recorder, client_frame, running_server


class Keeper(Recorder):
    """Keeps every message (and echoes it)."""

    def __init__(self) -> None:
        super().__init__(echo=True)
        self.messages: list[rw.Message] = []

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        self.messages.append(message)
        await super().on_message(conn, message)


def test_whole_frames_take_the_listeners_shortcut_on_the_cython_axis(
        run: Run, implementation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, bool]] = []
    original = connection_module.WebSocketConnection._on_data_frame

    def counting(self: Any, opcode: int, fin: bool, rsv: int, payload: bytes) -> None:
        calls.append((opcode, bool(fin)))
        original(self, opcode, fin, rsv, payload)

    monkeypatch.setattr(connection_module.WebSocketConnection, "_on_data_frame", counting)

    async def main() -> None:
        handler = Keeper()
        async with running_server(handler, max_message_size=1000) as server:
            client = await RawClient.open(server.port)
            try:
                client.send(client_frame(TEXT, "héllo".encode()))
                client.send(client_frame(BINARY, b"\x00\xff"))
                client.send(client_frame(TEXT, b"") + client_frame(BINARY, b""))
                client.send(client_frame(TEXT, b"x" * 1000))  # at the limit: whole
                client.send(client_frame(TEXT, b"frag", fin=False)
                            + client_frame(CONT, b"mented"))
                expected = [(TEXT, "héllo".encode()), (BINARY, b"\x00\xff"), (TEXT, b""),
                            (BINARY, b""), (TEXT, b"x" * 1000), (TEXT, b"fragmented")]
                for opcode, payload in expected:
                    assert await asyncio.wait_for(client.read_frame(), 5) == (
                        opcode, True, payload)
            finally:
                await client.close()
        assert handler.messages == [
            rw.Message.text("héllo"), rw.Message.binary(b"\x00\xff"), rw.Message.text(""),
            rw.Message.binary(b""), rw.Message.text("x" * 1000),
            rw.Message.text("fragmented")]
        assert [type(m.data) for m in handler.messages] == [str, bytes, str, bytes, str, str]
        fragments = [(TEXT, False), (CONT, True)]
        if implementation == "cython":
            assert calls == fragments  # the whole frames never reached _on_data_frame
        else:
            assert calls == [(TEXT, True), (BINARY, True), (TEXT, True), (BINARY, True),
                             (TEXT, True), *fragments]

    run(main())
