"""How a message reaches ``on_message``: on Python 3.12+, when nothing is ahead of
it (no callback running, nothing queued), in an eager task started in the read
callback; otherwise, and always on 3.11, through the connection's worker task.
The handler's promises hold on both paths: always inside a task, one call at a
time, arrival order, a failing call closes with 1011, a context variable set by
one connection is never seen by another's callbacks (and, on 3.11+, is seen by
the same connection's later ones), and the loop gets its turn at least every
max_queue messages.  On 3.11 a worker that handled a message lingers for the
next one, and ends once idle."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import sys
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsClosed

import reinhardt_ws as rw
from reinhardt_ws import connection as connection_module

from ..core_helpers import Run
from ..fixtures import Recorder, eventually, running_server, url_of

TAG: contextvars.ContextVar[str] = contextvars.ContextVar("TAG", default="unset")


async def one_at_a_time(ws: Any, count: int) -> None:
    """Send m0, m1, ... each after the echo of the one before."""
    for i in range(count):
        await ws.send(f"m{i}")
        assert await asyncio.wait_for(ws.recv(), 5) == f"m{i}"


class Mixed(Recorder):
    """Messages named ``wait*`` suspend (twice); the others complete at once.
    Records the order of starts and ends and any overlap on a connection."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []
        self.active = 0
        self.overlaps = 0
        self.tasks: list[asyncio.Task[Any] | None] = []

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        self.active += 1
        if self.active > 1:
            self.overlaps += 1
        text = str(message.data)
        self.log.append(f"start {text}")
        try:
            if text.startswith("wait"):
                await asyncio.sleep(0.01)
                await asyncio.sleep(0)
                self.tasks.append(asyncio.current_task())
            else:
                self.tasks.append(asyncio.current_task())
            await conn.send(text)
        finally:
            self.active -= 1
            self.log.append(f"end {text}")


def test_order_and_one_call_at_a_time_across_both_paths(run: Run) -> None:
    async def main() -> None:
        handler = Mixed()
        names = ["a", "wait1", "b", "c", "wait2", "wait3", "d", "e"]
        async with running_server(handler) as server, ws_connect(url_of(server)) as ws:
            for name in names:
                await ws.send(name)
            echoes = [await asyncio.wait_for(ws.recv(), 5) for _ in names]
            assert echoes == names
            # Then one at a time: a message that completes at once, after a pause.
            await ws.send("f")
            assert await asyncio.wait_for(ws.recv(), 5) == "f"
        assert handler.overlaps == 0
        expected = [f"{kind} {n}" for n in [*names, "f"] for kind in ("start", "end")]
        assert handler.log == expected
        # Every call ran inside a task (on 3.12+ "f", which had nothing ahead of
        # it, ran in an eager one), so current_task() and timeouts work in it.
        assert all(isinstance(task, asyncio.Task) for task in handler.tasks)

    run(main())


class Raiser(Recorder):
    def __init__(self, after_await: bool) -> None:
        super().__init__()
        self.after_await = after_await

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        await super().on_message(conn, message)
        if message.data == "boom":
            if self.after_await:
                await asyncio.sleep(0.01)
            raise RuntimeError("handler bug")
        await conn.send(message)


@pytest.mark.parametrize("after_await", [False, True], ids=["at-once", "after-await"])
def test_a_failing_on_message_closes_with_1011_and_nothing_after_it_is_handled(
        run: Run, caplog: pytest.LogCaptureFixture, after_await: bool) -> None:
    async def main() -> None:
        handler = Raiser(after_await)
        async with running_server(handler) as server:
            async with ws_connect(url_of(server)) as other, ws_connect(url_of(server)) as ws:
                await ws.send("ok")
                assert await asyncio.wait_for(ws.recv(), 5) == "ok"
                await ws.send("boom")
                await ws.send("never")
                with pytest.raises(WsClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == 1011
                assert ws.close_reason == "on_message failed"
                # The other connection goes on.
                await other.send("still")
                assert await asyncio.wait_for(other.recv(), 5) == "still"
            await eventually(lambda: sum(k == "disconnect" for k, _c, _m in handler.events) == 2)
        sent = [str(m.data) for kind, _cid, m in handler.events if kind == "message"]
        assert "never" not in sent
        assert any("on_message of" in r.getMessage() and r.exc_info for r in caplog.records)

    with caplog.at_level(logging.ERROR, logger="reinhardt_ws"):
        run(main())


class ContextUser(Recorder):
    """Sets a context variable in on_connect (the connection's name) and in every
    on_message (the message), and notes what each call found first."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, list[str]] = collections.defaultdict(list)

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        TAG.set(f"connect {conn.path}")

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        text = str(message.data)
        self.seen[conn.path].append(TAG.get())
        TAG.set(f"{conn.path} {text}")
        if text.startswith("wait"):
            await asyncio.sleep(0.01)
        assert TAG.get() == f"{conn.path} {text}"  # survives a suspension
        await conn.send(text)


def test_a_connections_callbacks_share_its_context_and_no_other_sees_it(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.11+: every callback of a connection runs in the connection's own
    context, whichever task runs it (a worker, a lingering one, a new one after
    the last ended, an eager one); on 3.10 each task has a copy.  Either way no
    connection ever sees another's values."""
    monkeypatch.setattr(connection_module, "LINGER_PERIOD", 0.02)

    async def main() -> None:
        handler = ContextUser()
        async with running_server(handler) as server, \
                ws_connect(url_of(server, "/a")) as a, ws_connect(url_of(server, "/b")) as b:
            for ws, name in ((a, "1"), (b, "1"), (a, "wait-2"), (b, "2"), (a, "3")):
                await ws.send(name)
                assert await asyncio.wait_for(ws.recv(), 5) == name
            await asyncio.sleep(0.1)  # past any linger: the next worker is a new task
            for ws in (a, b):
                await ws.send("4")
                assert await asyncio.wait_for(ws.recv(), 5) == "4"
        for path, seen in handler.seen.items():
            assert all(value == "unset" or value.startswith(("connect " + path, path))
                       for value in seen), handler.seen
        if sys.version_info >= (3, 11):
            assert handler.seen == {"/a": ["connect /a", "/a 1", "/a wait-2", "/a 3"],
                                    "/b": ["connect /b", "/b 1", "/b 2"]}
        else:
            assert handler.seen["/a"][0] == "unset"

    run(main())


class TaskNoter(Recorder):
    """Notes the task that runs each on_message, and echoes."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.conns: list[rw.WebSocketConnection] = []

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        await super().on_message(conn, message)
        self.tasks.append(asyncio.current_task())
        self.conns.append(conn)
        await conn.send(message)


lingering_only = pytest.mark.skipif(not connection_module.LINGER,
                                    reason="workers linger on Python 3.11 only")


@lingering_only
def test_a_conversation_is_handled_by_one_lingering_worker_that_ends_when_idle(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """One message at a time, each after the last echo: one task handles them all
    (no task per message); once the connection is idle a whole linger period the
    task ends, and the next message gets a new one."""
    monkeypatch.setattr(connection_module, "LINGER_PERIOD", 0.05)

    async def main() -> None:
        handler = TaskNoter()
        async with running_server(handler) as server, ws_connect(url_of(server)) as ws:
            await one_at_a_time(ws, 20)
            assert len(set(map(id, handler.tasks))) == 1
            worker = handler.tasks[0]
            assert worker is not None and not worker.done()  # waiting for the next
            conn = handler.conns[0]
            await eventually(lambda: worker.done(), timeout=2)
            assert conn._worker is None and conn._wakeup is None
            await ws.send("again")
            assert await asyncio.wait_for(ws.recv(), 5) == "again"
            assert handler.tasks[-1] is not worker
        assert [k for k, _c, _m in handler.events].count("disconnect") == 1

    run(main())


@lingering_only
@pytest.mark.parametrize("how", ["client closes", "server closes"])
def test_a_lingering_worker_runs_on_disconnect_once(run: Run, how: str) -> None:
    async def main() -> None:
        handler = TaskNoter()
        server = await rw.serve(handler, "127.0.0.1", 0, ping_interval=None)
        try:
            async with ws_connect(url_of(server)) as ws:
                await ws.send("x")
                assert await asyncio.wait_for(ws.recv(), 5) == "x"
                worker = handler.tasks[0]
                assert worker is not None and not worker.done()
                if how == "server closes":
                    await server.close(timeout=2)
        finally:
            await server.close(timeout=2)
        await eventually(lambda: worker.done())
        assert not worker.cancelled()
        assert [k for k, _c, _m in handler.events].count("disconnect") == 1
        assert handler.conns[0]._worker is None

    run(main())


class NotACoroutine(Recorder):
    def on_message(self, conn: rw.WebSocketConnection,  # type: ignore[override]
                   message: rw.Message) -> None:
        self.events.append(("message", conn.id, message))


class Awaitable(Recorder):
    """on_message returns a plain awaitable (a Future), not a coroutine."""

    def on_message(self, conn: rw.WebSocketConnection,  # type: ignore[override]
                   message: rw.Message) -> asyncio.Future[None]:
        self.events.append(("message", conn.id, message))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, fut.set_result, None)
        asyncio.get_running_loop().call_later(0.005, lambda: asyncio.ensure_future(
            conn.send(f"echo {message.data}")))
        return fut


def test_an_on_message_that_is_not_awaitable_closes_with_1011(run: Run) -> None:
    async def main() -> None:
        handler = NotACoroutine()
        async with running_server(handler) as server, ws_connect(url_of(server)) as ws:
            await ws.send("x")
            with pytest.raises(WsClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1011

    run(main())


def test_an_on_message_returning_another_awaitable_is_awaited(run: Run) -> None:
    async def main() -> None:
        handler = Awaitable()
        async with running_server(handler) as server, ws_connect(url_of(server)) as ws:
            for name in ("p", "q"):
                await ws.send(name)
                assert await asyncio.wait_for(ws.recv(), 5) == f"echo {name}"

    run(main())


class Stuck(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.cancelled = 0

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        await super().on_message(conn, message)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def test_shutdown_cancels_a_suspended_first_message_and_on_disconnect_runs(run: Run) -> None:
    async def main() -> None:
        handler = Stuck()
        server = await rw.serve(handler, "127.0.0.1", 0, ping_interval=None)
        async with ws_connect(url_of(server)) as ws:
            await ws.send("hang")
            await eventually(lambda: any(k == "message" for k, _c, _m in handler.events))
            await server.close(timeout=0.2)
        assert handler.cancelled == 1
        assert [k for k, _c, _m in handler.events].count("disconnect") == 1

    run(main())


class Ticks(Recorder):
    """Notes, per message, how many loop iterations a self-rescheduling callback
    has seen, and whether it runs inside a task."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0
        self.ticking = True
        self.seen: list[int] = []
        self.in_task: list[bool] = []

    def tick(self) -> None:
        self.ticks += 1
        if self.ticking:
            asyncio.get_running_loop().call_soon(self.tick)

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        self.seen.append(self.ticks)
        self.in_task.append(asyncio.current_task() is not None)
        await conn.send(message)


def test_the_loop_gets_its_turn_at_least_every_max_queue_messages(run: Run) -> None:
    """One read full of small messages must not run them all in one go, eager or
    not: no more than max_queue of them are handled within one loop iteration."""
    async def main() -> None:
        handler = Ticks()
        async with running_server(handler, max_queue=4) as server, \
                ws_connect(url_of(server)) as ws:
            handler.tick()
            await one_at_a_time(ws, 10)  # nothing is ever queued
            flood = [f"f{i}" for i in range(40)]
            for name in flood:  # back to back: most arrive in one read
                await ws.send(name)
            assert [await asyncio.wait_for(ws.recv(), 5) for _ in flood] == flood
            handler.ticking = False
        assert all(handler.in_task), handler.in_task
        same = collections.Counter(handler.seen[10:])
        assert max(same.values()) <= 4, handler.seen

    run(main())


class TimeoutFirst(Recorder):
    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        async with asyncio.timeout(5):  # needs a current task, before any await
            await conn.send(message)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
def test_asyncio_timeout_works_before_the_first_await(run: Run) -> None:
    async def main() -> None:
        handler = TimeoutFirst()
        async with running_server(handler) as server, ws_connect(url_of(server)) as ws:
            await one_at_a_time(ws, 5)

    run(main())
