"""Serve until told to stop: :func:`run` for programs, :func:`serve_until_signal`
for code that already runs an event loop."""

from __future__ import annotations

import asyncio
import inspect
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .handler import WebSocketHandler
from .options import ServerOptions
from .protocol.messages import CloseCode
from .server import Server, serve

__all__ = ["run", "serve_until_signal"]

#: The signals that stop :func:`run` by default.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def serve_until_signal(server: Server,
                             signals: Iterable[signal.Signals] = STOP_SIGNALS, *,
                             close_code: int = CloseCode.GOING_AWAY,
                             close_timeout: float = 5.0) -> signal.Signals | None:
    """Serve *server* (starting it if need be) until one of *signals* arrives or
    the server is closed, then close it: every client gets a close frame with
    *close_code* (1001, Going Away), ``on_disconnect`` runs for each, and the
    call returns the signal that stopped it (None if the server was closed
    otherwise).  The previous handlers of *signals* are restored on return.

    Signal handlers belong to the main thread: elsewhere this raises
    RuntimeError.  A second signal while closing does not interrupt the close
    (it is bounded by *close_timeout*, see :meth:`Server.close`).
    """
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []
    stop = asyncio.Event()

    def _on_signal(sig: signal.Signals) -> None:
        if not received:
            received.append(sig)
        stop.set()

    installed: list[signal.Signals] = []
    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in signals:
            try:
                loop.add_signal_handler(sig, _on_signal, sig)
                installed.append(sig)
            except NotImplementedError:  # Windows' loops: plain signal handlers
                previous[sig] = signal.signal(
                    sig, lambda signum, _frame: loop.call_soon_threadsafe(
                        _on_signal, signal.Signals(signum)))
            except (RuntimeError, ValueError) as exc:
                raise RuntimeError("serve_until_signal() needs the main thread "
                                   f"(signal handlers): {exc}") from None
        await server.start()
        waiter = asyncio.ensure_future(stop.wait())
        serving = asyncio.ensure_future(server.serve_forever())
        try:
            await asyncio.wait([waiter, serving], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            serving.cancel()
        await server.close(close_code, close_timeout)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0] if received else None


def run(handler: WebSocketHandler, host: str | None = "127.0.0.1", port: int = 8765, *,
        options: ServerOptions | None = None,
        on_start: Callable[[Server], Awaitable[object] | object] | None = None,
        on_stop: Callable[[Server], Awaitable[object] | object] | None = None,
        signals: Iterable[signal.Signals] = STOP_SIGNALS,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        **settings: Any) -> None:
    """Serve *handler* on *host*:*port* until SIGINT (Ctrl-C) or SIGTERM, then close
    every connection with 1001 (Going Away), wait for the closing handshakes and
    the ``on_disconnect`` callbacks (5 s at most each), and return normally.

    The settings are :func:`serve`'s: :class:`ServerOptions` fields as keyword
    arguments, or *options*.  *on_start* is called (and awaited if it returns an
    awaitable) once the server listens, with the :class:`Server` (its ``port``
    tells the port chosen for ``port=0``); *on_stop* after it has closed, for
    closing what the handler uses (a ``RoomManager``'s Redis connections).
    *loop_factory* makes the event loop (``uvloop.new_event_loop``, say); by
    default asyncio's.  Call it from the main thread of a program, with no event
    loop running (else RuntimeError); a failure to listen (port in use) raises
    OSError before anything is served.
    """
    server = serve(handler, host, port, options=options, **settings)

    async def _main() -> None:
        await server.start()
        try:
            if on_start is not None:
                started = on_start(server)
                if inspect.isawaitable(started):
                    await started
            await serve_until_signal(server, signals)
        finally:
            await server.close()
            if on_stop is not None:
                stopped = on_stop(server)
                if inspect.isawaitable(stopped):
                    await stopped

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("run() starts its own event loop: inside one, await "
                           "serve_until_signal(serve(...)) instead")
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_main())
        return
    if loop_factory is None:
        asyncio.run(_main())
        return
    loop = loop_factory()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_main())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
