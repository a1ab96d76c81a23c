"""The closing handshake state machine, driven directly (no sockets)."""

from __future__ import annotations

import pytest

from reinhardt_ws.protocol.closing import CloseState, ClosingHandshake, PeerClose, fit_reason


def test_we_close_first_then_the_peer_answers() -> None:
    hs = ClosingHandshake()
    assert hs.is_open and hs.code is None
    assert hs.send(1000, "bye") is True
    assert hs.state is CloseState.CLOSING and hs.initiated
    assert hs.send(1001, "again") is False  # one close frame, ever
    assert hs.receive(1000, "bye") == (PeerClose.FINISH, 0, "")
    assert (hs.code, hs.reason) == (1000, "bye")
    assert hs.lost(1006, "") is True
    assert hs.state is CloseState.CLOSED
    assert hs.lost(1006, "") is False
    assert (hs.code, hs.reason) == (1000, "bye")


def test_the_peer_closes_first_and_we_echo_its_code() -> None:
    hs = ClosingHandshake()
    action, code, reason = hs.receive(4001, "done")
    assert (action, code, reason) == (PeerClose.ECHO, 4001, "done")
    assert hs.state is CloseState.CLOSING
    assert not hs.initiated  # the peer decided: what it sent before still counts
    assert hs.send(code, reason) is True  # the echo goes out once
    assert (hs.code, hs.reason) == (4001, "done")


def test_an_empty_close_is_echoed_with_1000_and_reported_as_1005() -> None:
    hs = ClosingHandshake()
    assert hs.receive(None, "") == (PeerClose.ECHO, 1000, "")
    assert hs.code == 1005


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 2999, 5000])
def test_an_invalid_close_code_is_answered_with_1002(code: int) -> None:
    hs = ClosingHandshake()
    action, reply, reason = hs.receive(code, "")
    assert (action, reply) == (PeerClose.FAIL, 1002)
    assert str(code) in reason
    assert hs.code == 1002


def test_the_echo_reason_fits_a_control_frame() -> None:
    hs = ClosingHandshake()
    _action, _code, reason = hs.receive(1000, "x" * 123)
    assert reason == "x" * 123


@pytest.mark.parametrize("reason", ["x" * 200, "é" * 100, "€" * 60, "a" + "😀" * 40])
def test_fit_reason_cuts_on_a_character_boundary(reason: str) -> None:
    fitted = fit_reason(reason)
    assert len(fitted.encode("utf-8")) <= 123
    assert reason.startswith(fitted)
    assert len(fitted.encode("utf-8")) > 119  # nothing cut that fitted


def test_picows_closing_by_itself_counts_as_our_decision() -> None:
    hs = ClosingHandshake()
    assert hs.sent_by_transport(1002, "bad frame") is True
    assert hs.sent and hs.initiated and hs.state is CloseState.CLOSING
    assert hs.sent_by_transport(1002, "bad frame") is False
    assert hs.send(1000, "") is False
    assert hs.code == 1002


def test_lost_without_any_close_frame_reports_what_it_is_told() -> None:
    hs = ClosingHandshake()
    assert hs.lost(1006, "") is True
    assert (hs.code, hs.state) == (1006, CloseState.CLOSED)
    assert hs.send(1000, "") is False  # nothing goes out on a dead socket
