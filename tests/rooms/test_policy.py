"""The authorization policies (``reinhardt_ws.policy``) on their own: what
``ClaimsPolicy`` grants from claims, and what ``authorize`` makes of a policy's
answers (bools, awaitables, reasons, bugs)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

import reinhardt_ws as rw

pytestmark = pytest.mark.pure  # no sockets, no fan-out: runs once


@dataclass
class Identified:
    """What a policy reads of a connection: ``conn.user``."""

    user: Any = None


def decide(policy: rw.Policy, action: str, user: Any, room: str) -> bool:
    try:
        asyncio.run(rw.authorize(policy, action, Identified(user), room))
    except rw.PermissionDenied:
        return False
    return True


def test_claims_policy() -> None:
    policy = rw.ClaimsPolicy()
    everyone = {"sub": "a"}
    assert decide(policy, "join", everyone, "any") and decide(policy, "publish", everyone, "x")
    scoped = {"sub": "b", "rooms": ["lobby", "team-*"]}
    assert decide(policy, "join", scoped, "team-red")
    assert decide(policy, "publish", scoped, "lobby")  # publish defaults to the join rights
    assert not decide(policy, "join", scoped, "team")  # "team-*" needs the dash
    assert not decide(policy, "join", scoped, "LOBBY")  # case matters
    reader = {"sub": "c", "rooms": ["*"], "publish": []}
    assert decide(policy, "join", reader, "news") and not decide(policy, "publish", reader, "news")
    # Anonymous, or an identity that is not claims: nothing by default.
    for user in (None, "just-a-name"):
        assert not decide(policy, "join", user, "lobby")
    assert decide(rw.ClaimsPolicy(anonymous=["public-*"]), "join", None, "public-1")
    # A malformed claim grants nothing; it does not fall back to the default.
    for bad in ("lobby", [1, 2], {"lobby": True}, None):
        assert not decide(policy, "join", {"sub": "d", "rooms": bad}, "lobby")
    assert not decide(rw.ClaimsPolicy(default=()), "join", everyone, "any")
    custom = rw.ClaimsPolicy(join_claim="can_join", publish_claim="can_say")
    assert decide(custom, "join", {"can_join": ["a"], "can_say": []}, "a")
    assert not decide(custom, "publish", {"can_join": ["a"], "can_say": []}, "a")


class Answers:
    """A policy whose answers the test picks: values or coroutines."""

    def __init__(self, join: Any, publish: Any = True) -> None:
        self.join, self.publish = join, publish

    def can_join(self, conn: Any, room: str) -> Any:
        return self.join() if callable(self.join) else self.join

    def can_publish(self, conn: Any, room: str) -> Any:
        return self.publish() if callable(self.publish) else self.publish


def test_authorize() -> None:
    async def later(value: bool) -> bool:
        await asyncio.sleep(0)
        return value

    assert decide(Answers(True), "join", None, "r")
    assert not decide(Answers(False), "join", None, "r")
    assert decide(Answers(lambda: later(True)), "join", None, "r")
    assert not decide(Answers(True, lambda: later(False)), "publish", None, "r")
    with pytest.raises(rw.PermissionDenied, match=r"^may not join room 'r'$") as refused:
        asyncio.run(rw.authorize(Answers(False), "join", Identified(), "r"))
    assert refused.value.code == 3003
    with pytest.raises(rw.PermissionDenied, match=r"^may not publish to room 'r'$"):
        asyncio.run(rw.authorize(Answers(True, False), "publish", Identified(), "r"))

    def own_reason() -> bool:
        raise rw.PermissionDenied("closed for maintenance")

    with pytest.raises(rw.PermissionDenied, match="maintenance"):
        asyncio.run(rw.authorize(Answers(own_reason), "join", Identified(), "r"))
    for not_a_bool in (None, 1, "yes", lambda: later(1)):
        with pytest.raises(TypeError, match="must return a bool"):
            asyncio.run(rw.authorize(Answers(not_a_bool), "join", Identified(), "r"))
    with pytest.raises(ValueError, match="unknown action"):
        asyncio.run(rw.authorize(rw.AllowAll(), "leave", Identified(), "r"))
