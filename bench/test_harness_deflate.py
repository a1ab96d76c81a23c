"""The deflate-mode client's frame checker (harness/client_worker.py), driven with
frames built here: it must count good messages and refuse bad ones, or the
compression benchmark could pass a server that sends wrong bytes."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "harness"))
import client_worker
import wire

PAYLOAD = wire.make_json_payload(4096)


def frame(payload: bytes, *, opcode: int = 0x1, rsv1: bool = False, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, n))
    elif n < 65536:
        head = bytes((first, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 127)) + n.to_bytes(8, "big")
    return head + payload


def deflate_no_context(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
    return (c.compress(data) + c.flush(zlib.Z_FULL_FLUSH))[:-4]


def stream(keep_context: bool) -> client_worker.DeflateStream:
    client_worker._INFLATED_OK.clear()
    st = client_worker.DeflateStream(keep_context)
    st.arm(PAYLOAD, 0x1)
    return st


def test_counts_compressed_and_plain_messages_fed_byte_by_byte() -> None:
    st = stream(keep_context=False)
    data = frame(deflate_no_context(PAYLOAD), rsv1=True) * 3 + frame(PAYLOAD)
    for i in range(len(data)):
        st.feed(data[i:i + 1])
    assert st.error == ""
    assert (st.messages, st.compressed, st.wire) == (4, 3, len(data))
    assert not st.buf


def test_fragmented_compressed_message() -> None:
    st = stream(keep_context=False)
    body = deflate_no_context(PAYLOAD)
    st.feed(frame(body[:100], rsv1=True, fin=False) + frame(body[100:], opcode=0x0))
    assert (st.error, st.messages, st.compressed) == ("", 1, 1)


def test_context_takeover_stream_is_read_with_one_inflater() -> None:
    c = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
    frames = b"".join(frame((c.compress(PAYLOAD) + c.flush(zlib.Z_SYNC_FLUSH))[:-4], rsv1=True)
                      for _ in range(3))
    st = stream(keep_context=True)
    st.feed(frames)
    assert (st.error, st.messages) == ("", 3)


def test_context_kept_by_a_server_that_said_it_would_not_fails() -> None:
    # The second message refers to the first: a fresh inflater cannot read it.
    c = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
    frames = b"".join(frame((c.compress(PAYLOAD) + c.flush(zlib.Z_SYNC_FLUSH))[:-4], rsv1=True)
                      for _ in range(2))
    st = stream(keep_context=False)
    st.feed(frames)
    assert st.messages == 1
    assert st.error


def test_wrong_content_wrong_opcode_and_masked_frames_fail() -> None:
    wrong = bytearray(PAYLOAD)
    wrong[-3] ^= 1
    for data in (frame(deflate_no_context(bytes(wrong)), rsv1=True), frame(bytes(wrong)),
                 frame(PAYLOAD, opcode=0x2), bytes((0x81, 0x80 | 4)) + b"\0\0\0\0abcd",
                 frame(b"\xff" * 40, rsv1=True)):
        st = stream(keep_context=False)
        st.feed(data)
        assert st.error, data[:8]
        assert st.messages == 0


def test_cached_inflation_still_rejects_other_bytes() -> None:
    st = stream(keep_context=False)
    good = deflate_no_context(PAYLOAD)
    st.feed(frame(good, rsv1=True) * 2)
    assert (st.error, st.messages) == ("", 2)
    assert good in client_worker._INFLATED_OK
    bad = bytearray(good)
    bad[10] ^= 0x55
    st.feed(frame(bytes(bad), rsv1=True))
    assert st.error
