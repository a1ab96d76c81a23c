"""The chat protocol's history, recovery and presence, over a real server and
real clients: positions in every message, a killed socket recovering exactly
what it missed, recent messages for a new joiner, members and their changes."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

import reinhardt_ws as rw
from reinhardt_ws.apps.chat import CHAT_RECENT, ChatHandler

from ..fixtures import running_server, url_of
from ..peer_clients import WebsocketsClient
from .test_chat import Run, event_with_position, join_room


class Chat(ChatHandler):
    def __init__(self) -> None:
        super().__init__()
        self.connected: asyncio.Queue[rw.WebSocketConnection] = asyncio.Queue()

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        self.connected.put_nowait(conn)


async def say(client: WebsocketsClient, room: str, data: Any) -> None:
    await client.send(orjson.dumps({"type": "message", "room": room, "data": data}).decode())


async def messages(client: WebsocketsClient, count: int) -> list[dict[str, Any]]:
    got = []
    while len(got) < count:
        item = event_with_position(await client.recv())
        if item["event"] == "message":
            got.append(item)
    return got


def test_killed_socket_recovers_through_the_chat_protocol(run: Run) -> None:
    async def main() -> None:
        handler = Chat()
        async with running_server(handler) as server:
            url = url_of(server)
            sender = await WebsocketsClient.open(url)
            await join_room(sender, "lobby")
            reader = await WebsocketsClient.open(url)
            joined, replayed = await join_room(reader, "lobby")
            assert replayed == [] and joined["offset"] == 0
            await say(sender, "lobby", "first")
            (first,) = await messages(reader, 1)
            assert first["offset"] == 1 and first["epoch"] == joined["epoch"]
            await reader.abort()
            # The size of the chat's history (100) bounds what can be recovered.
            for i in range(60):
                await say(sender, "lobby", i)
            await messages(sender, 61)  # the sender sees its own messages (and "first")
            again = await WebsocketsClient.open(url)
            joined, replayed = await join_room(
                again, "lobby", since={"epoch": first["epoch"], "offset": first["offset"]})
            assert joined["recovered"] is True
            assert [m["data"] for m in replayed] == list(range(60))
            assert [m["offset"] for m in replayed] == list(range(2, 62))
            assert joined["offset"] == 61
            # Too far back (another epoch): nothing replayed, recovered false.
            other = await WebsocketsClient.open(url)
            joined, replayed = await join_room(other, "lobby",
                                               since={"epoch": "00000000", "offset": 3})
            assert joined["recovered"] is False and replayed == []
            # A plain join gets the room's recent messages first.
            fresh = await WebsocketsClient.open(url)
            joined, replayed = await join_room(fresh, "lobby")
            assert len(replayed) == CHAT_RECENT and replayed[-1]["offset"] == 61
            assert joined["recovered"] is False
            # A malformed since is an error event.
            await fresh.send('{"type": "join", "room": "x", "since": {"epoch": 1}}')
            bad = event_with_position(await fresh.recv())
            assert bad["event"] == "error" and "since" in bad["error"]
            for client in (sender, again, other, fresh):
                await client.close()

    run(main())


def test_members_and_their_changes(run: Run) -> None:
    async def main() -> None:
        handler = Chat()
        async with running_server(handler) as server:
            url = url_of(server)
            a = await WebsocketsClient.open(url)
            a_id = (await handler.connected.get()).id
            joined, _ = await join_room(a, "r", presence=True)
            assert joined["members"] == [{"id": a_id, "user": None}]
            b = await WebsocketsClient.open(url)
            b_id = (await handler.connected.get()).id
            joined, _ = await join_room(b, "r", presence=True)
            assert sorted(m["id"] for m in joined["members"]) == sorted([a_id, b_id])
            change = event_with_position(await a.recv())
            assert change == {"event": "presence", "room": "r", "change": "join",
                              "id": b_id, "user": None}
            await b.close()  # closing leaves the room: a is told
            change = event_with_position(await a.recv())
            assert change["change"] == "leave" and change["id"] == b_id
            await a.close()

    run(main())
