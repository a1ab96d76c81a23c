"""Authorization: who may join which room, and publish to it.

A :class:`Policy` answers two questions about an authenticated connection
(``conn.user`` is what the ``authenticate`` hook returned): ``can_join(conn,
room)`` and ``can_publish(conn, room)``.  Each returns a bool or an awaitable of
one (so a policy may look rights up in a database), or raises
:class:`~reinhardt_ws.PermissionDenied` with the reason to give the client.
:func:`authorize` asks the question and turns "no" into ``PermissionDenied``.

The chat app (:class:`~reinhardt_ws.apps.chat.ChatHandler`) consults its policy
on every join and every message; a refusal is an ``error`` event to the client
and the connection stays open.  :class:`ClaimsPolicy` reads the rights from the
identity's claims, such as those of a signed token
(:class:`~reinhardt_ws.TokenSigner`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Literal, Protocol

from .errors import PermissionDenied

if TYPE_CHECKING:
    from .connection import WebSocketConnection

__all__ = ["AllowAll", "ClaimsPolicy", "Policy", "authorize"]

Decision = bool | Awaitable[bool]


class Policy(Protocol):
    """What a connection may do with a room.  Each method returns a bool, or an
    awaitable of one, or raises :class:`~reinhardt_ws.PermissionDenied` whose
    reason is shown to the client.  An exception of any other kind is a bug in
    the policy: the chat app then closes that connection with 1011."""

    def can_join(self, conn: WebSocketConnection, room: str) -> Decision: ...

    def can_publish(self, conn: WebSocketConnection, room: str) -> Decision: ...


class AllowAll:
    """Everyone may join and publish everywhere (the default)."""

    def can_join(self, conn: WebSocketConnection, room: str) -> bool:
        return True

    def can_publish(self, conn: WebSocketConnection, room: str) -> bool:
        return True


class ClaimsPolicy:
    """Rights written in the identity's claims, as room-name patterns
    (:func:`fnmatch.fnmatchcase`: ``"team-*"``, ``"*"``).

    ``conn.user`` is a mapping of claims (what :class:`~reinhardt_ws.SignedTokenAuth`
    returns).  Claim *join_claim* (``"rooms"``) lists the patterns of the rooms
    the user may join; claim *publish_claim* (``"publish"``) those it may publish
    to, and defaults to the join patterns.  A token without the join claim gets
    *default* (every room).  A connection without claims (anonymous, or an
    identity that is not a mapping) gets *anonymous* (no room).  A claim that is
    not a list of strings grants nothing.
    """

    def __init__(self, *, join_claim: str = "rooms", publish_claim: str = "publish",
                 default: Sequence[str] = ("*",), anonymous: Sequence[str] = ()) -> None:
        self.join_claim = join_claim
        self.publish_claim = publish_claim
        self.default = _patterns(list(default))
        self.anonymous = _patterns(list(anonymous))

    def _granted(self, conn: WebSocketConnection, claim: str, fallback: tuple[str, ...]
                 ) -> tuple[str, ...]:
        claims = conn.user
        if not isinstance(claims, Mapping):
            return self.anonymous
        if claim not in claims:
            return fallback
        return _patterns(claims[claim])

    def _join_patterns(self, conn: WebSocketConnection) -> tuple[str, ...]:
        return self._granted(conn, self.join_claim, self.default)

    def can_join(self, conn: WebSocketConnection, room: str) -> bool:
        return _matches(room, self._join_patterns(conn))

    def can_publish(self, conn: WebSocketConnection, room: str) -> bool:
        return _matches(room, self._granted(conn, self.publish_claim,
                                            self._join_patterns(conn)))


def _patterns(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        return ()
    return tuple(value)


def _matches(room: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(room, pattern) for pattern in patterns)


async def authorize(policy: Policy, action: Literal["join", "publish"],
                    conn: WebSocketConnection, room: str) -> None:
    """Ask *policy* whether *conn* may *action* (``"join"`` or ``"publish"``)
    *room*; return if so, else raise :class:`~reinhardt_ws.PermissionDenied`
    ("may not join room 'x'", or the policy's own reason)."""
    if action == "join":
        decision = policy.can_join(conn, room)
        refusal = f"may not join room {room!r}"
    elif action == "publish":
        decision = policy.can_publish(conn, room)
        refusal = f"may not publish to room {room!r}"
    else:
        raise ValueError(f"unknown action {action!r}")
    if inspect.isawaitable(decision):
        decision = await decision
    if decision is not True:
        if decision is not False:
            raise TypeError(f"{type(policy).__name__}.can_{action} must return a bool, "
                            f"got {type(decision).__name__}")
        raise PermissionDenied(refusal)
