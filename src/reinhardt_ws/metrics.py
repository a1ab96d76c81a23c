"""Prometheus metrics: ``GET /metrics`` in the text exposition format 0.0.4,
written by hand (no dependency), and the same figures as a dict for code.

Everything is read at scrape time from counters the server, the fan-out hub of
the server's event loop, the room manager and its backend keep anyway: a
scrape costs a few dict reads; serving traffic costs nothing more than the
integer increments those counters already are.  The metrics are listed in
``docs/metrics.md``.

Library use::

    rooms = RoomManager()
    metrics = Metrics(rooms=rooms)
    router = Router().websocket("/chat", handler).http("/metrics", metrics)
    server = await serve(router)    # a Metrics route is bound to its server

With a single handler (no router), pass ``http_handler=metrics.http_handler`` to
:func:`~reinhardt_ws.serve` and call ``metrics.bind(server)`` once it is made.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from . import _fanout
from .protocol.handshake import HTTPResponse
from .rooms import _compression

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .rooms import RoomManager
    from .server import Server

__all__ = ["CONTENT_TYPE", "Metrics", "metrics_handler"]

#: The Content-Type of the text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

PREFIX = "reinhardt_ws_"

#: (stats key, metric name, help) of the fan-out hub's counters.
_HUB = (
    ("fanouts", "broadcasts_total", "Fan-outs (room broadcasts and multi-peer sends)."),
    ("delivered", "deliveries_total",
     "Messages queued to a peer by fan-outs (one per peer reached)."),
    ("pushed", "frames_pushed_total",
     "Data frames queued to one peer by a single send (conn.send)."),
    ("bytes_queued", "bytes_sent_total",
     "Bytes of every frame queued to a peer (fan-outs and single sends)."),
    ("dropped", "messages_dropped_total",
     "Messages not queued to a peer: its write budget was full or it was closing."),
    ("overflows", "slow_consumer_overflows_total",
     "Peers closed by the fan-out's close policy (slow consumers)."),
    ("failed", "send_failures_total", "Sends and pushes refused by a peer."),
    ("flushes", "flushes_total", "Peer queues written out."),
    ("syscalls", "write_syscalls_total", "Direct socket writes by the fan-out."),
    ("write_failures", "write_failures_total",
     "Peers failed by a write or a closing transport."),
)

#: (stats key, metric name, help, type) of the Redis backend.
_REDIS = (
    ("connected", "redis_connected", "1 while the Redis backend is connected.", "gauge"),
    ("published", "redis_published_total", "Publications sent to Redis.", "counter"),
    ("dropped_publications", "redis_dropped_publications_total",
     "Broadcasts and sends whose remote part never reached Redis.", "counter"),
    ("received", "redis_received_total", "Messages received from other processes.",
     "counter"),
    ("reconnects", "redis_reconnects_total", "Reconnections to Redis.", "counter"),
    ("failed_queries", "redis_failed_queries_total", "Redis queries that failed.", "counter"),
    ("bad_messages", "redis_bad_messages_total", "Undecodable messages from Redis.",
     "counter"),
    ("pending", "redis_pending_publications", "Publications queued for Redis.", "gauge"),
)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Writer:
    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Mapping[tuple[tuple[str, str], ...], float]) -> None:
        full = PREFIX + name
        self.lines.append(f"# HELP {full} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples.items():
            text = (",".join(f'{k}="{_escape_label(v)}"' for k, v in labels))
            number = repr(float(value)) if isinstance(value, float) else str(int(value))
            self.lines.append(f"{full}{{{text}}} {number}" if text else f"{full} {number}")

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text, {(): value})

    def labelled(self, name: str, kind: str, help_text: str, label: str,
                 counts: Mapping[Any, int]) -> None:
        self.family(name, kind, help_text,
                    {((label, str(k)),): v for k, v in sorted(counts.items(),
                                                               key=lambda kv: str(kv[0]))})


class Metrics:
    """The metrics of one server (and optionally its :class:`RoomManager`).

    Call it with a request to get the ``/metrics`` answer (it is a ``Router.http``
    route function); :meth:`render` gives the text, :meth:`snapshot` the dict.
    The fan-out figures are those of the hub of the event loop the scrape runs
    on, which every server and client of that loop share.
    """

    def __init__(self, server: Server | None = None, rooms: RoomManager | None = None,
                 ) -> None:
        self.server = server
        self.rooms = rooms

    def bind(self, server: Server) -> None:
        """Report on *server* (what ``serve`` does for a ``Metrics`` route)."""
        self.server = server

    def snapshot(self) -> dict[str, Any]:
        """Every figure, read now, as a fresh dict::

            {"server": Server.stats() (absent while unbound),
             "fanout": the hub's stats() (absent outside an event loop),
             "rooms": RoomManager.stats() (if rooms), "redis": the Redis
             backend's stats() (if it has one), "compression": {"bytes_in",
             "bytes_out", "reused"} of the shared room compressors}
        """
        out: dict[str, Any] = {}
        if self.server is not None:
            out["server"] = self.server.stats()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            out["fanout"] = _fanout.get_hub(loop).stats()
        if self.rooms is not None:
            out["rooms"] = self.rooms.stats()
            backend_stats = getattr(self.rooms.backend, "stats", None)
            if backend_stats is not None:
                out["redis"] = backend_stats()
        out["compression"] = _compression.stats()
        return out

    def render(self) -> str:
        """The exposition text (format 0.0.4), read now."""
        snap = self.snapshot()
        w = _Writer()
        server = snap.get("server")
        if server is not None:
            closed: dict[int, int] = server["closed"]
            w.one("connections", "gauge", "Open WebSocket connections.",
                  server["connections"])
            w.one("connection_hosts", "gauge", "Distinct remote addresses connected.",
                  server["hosts"])
            w.one("connections_opened_total", "counter",
                  "WebSocket connections opened (handshake completed).",
                  server["connections"] + sum(closed.values()))
            w.labelled("connections_closed_total", "counter",
                       "WebSocket connections closed, by close code (1006: no close "
                       "frame).", "code", closed)
            w.labelled("handshakes_refused_total", "counter",
                       "Opening handshakes and plain requests refused, by reason.",
                       "reason", server["refused"])
            w.one("http_responses_total", "counter",
                  "Plain HTTP requests answered by a route.", server["http_responses"])
            w.labelled("limits_hit_total", "counter",
                       "Connection limits hit, by limit.", "limit", server["limits"])
            w.one("messages_received_total", "counter",
                  "Whole messages received from clients.", server["messages_received"])
            w.one("bytes_received_total", "counter",
                  "Payload bytes of the messages received from clients.",
                  server["bytes_received"])
        fanout = snap.get("fanout")
        if fanout is not None:
            for key, name, help_text in _HUB:
                w.one(name, "counter", help_text, fanout[key])
        rooms = snap.get("rooms")
        if rooms is not None:
            w.one("rooms", "gauge", "Rooms with at least one member.", rooms["rooms"])
            w.one("room_connections", "gauge", "Connections in at least one room.",
                  rooms["connections"])
            w.one("memberships", "gauge", "Room memberships (connection, room pairs).",
                  rooms["memberships"])
            w.one("room_limit_refusals_total", "counter",
                  "Joins refused by max_rooms_per_connection.", rooms["room_limit_refusals"])
        redis = snap.get("redis")
        if redis is not None:
            for key, name, help_text, kind in _REDIS:
                if key in redis:
                    w.one(name, kind, help_text, redis[key])
        comp = snap["compression"]
        w.one("compression_bytes_in_total", "counter",
              "Payload bytes given to the shared room compressors.", comp["bytes_in"])
        w.one("compression_bytes_out_total", "counter",
              "Compressed bytes out of the shared room compressors.", comp["bytes_out"])
        w.one("compression_reused_total", "counter",
              "Room fan-outs that sent a frame compressed once for the cluster (here or "
              "in the publishing process) instead of compressing it here.", comp["reused"])
        if comp["bytes_in"]:
            w.one("compression_ratio", "gauge",
                  "Compressed bytes out per payload byte in (lower is better).",
                  comp["bytes_out"] / comp["bytes_in"])
        return "\n".join(w.lines) + "\n"

    def __call__(self, request: Any) -> HTTPResponse:
        """The ``/metrics`` answer: 200 with the exposition text."""
        return HTTPResponse(200, self.render().encode(), CONTENT_TYPE)

    def http_handler(self, path: str, headers: Any) -> HTTPResponse | None:
        """For ``ServerOptions.http_handler``: answers ``/metrics`` (query ignored),
        None for any other path."""
        if path.split("?", 1)[0] != "/metrics":
            return None
        return self(None)


def metrics_handler(server: Server | None = None, rooms: RoomManager | None = None
                    ) -> Metrics:
    """A :class:`Metrics` (a route function for ``Router.http("/metrics", ...)``)."""
    return Metrics(server, rooms)
