"""permessage-deflate (RFC 7692), without I/O.

- :func:`negotiate` (server) and :func:`client_offer` / :func:`check_response`
  (client) decide the parameters from the handshake headers alone.
- :class:`PerMessageDeflate` is one connection's codec: a streaming inflater whose
  output is bounded *while* inflating (a decompression bomb stops at the message
  size limit), and a compressor for the connection's own sends.
- :class:`SharedCompressor` compresses a message once, without context, for every
  connection that negotiated compatible parameters: raw deflate, reset and
  flushed per message (``Z_FULL_FLUSH``), the trailing ``00 00 ff ff`` removed.
  Room broadcasts use it (one per parameter set, :func:`shared_compressor`).

zlib cannot compress with a 256-byte window (``wbits=8``): when a peer limits our
window to 8 bits we compress only messages of at most 256 bytes, whose
back-references cannot reach farther than that, and send longer ones plain.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

from ...errors import ProtocolError
from ..framing import frame_header
from ..messages import CloseCode
from .base import (
    Extension,
    ExtensionParameter,
    InvalidExtensionHeader,
    MessageDecoder,
    format_extension,
    parse_extensions,
)

__all__ = [
    "NAME",
    "DeflateParameters",
    "DeflateSettings",
    "NegotiationError",
    "PerMessageDeflate",
    "SharedCompressor",
    "build_compressed_frame",
    "check_response",
    "client_offer",
    "negotiate",
    "shared_compressor",
    "split_frame",
]

NAME = "permessage-deflate"

_TAIL = b"\x00\x00\xff\xff"
_WINDOW_VALUES = {str(bits): bits for bits in range(8, 16)}
#: With an 8-bit window, only messages this long are compressed (see the module doc).
_SMALL_WINDOW_LIMIT = 256


class NegotiationError(ValueError):
    """The server's answer to our offer breaks RFC 7692 (the client must fail)."""


@dataclass(frozen=True)
class DeflateSettings:
    """What one side is willing to do; the defaults are the server's.

    - ``server_no_context_takeover``: server side, always answer with it (so that
      broadcasts can share one compressed frame); client side, ask for it.
    - ``client_no_context_takeover``: server side, ask the client for it (then no
      decompressor outlives a message); client side, promise it.
    - ``server_max_window_bits``: server side, the largest window we compress with
      (9..15); client side, the limit we ask of the server (``None``: none).
    - ``client_max_window_bits``: server side, the largest window we let the client
      use when it offers the parameter (``None``: whatever it offers); client side,
      the window we compress with (``None``: 15, or what the server sets).
    - ``mem_level`` (1..9) and ``level`` (0..9): zlib's compressor settings.
    - ``threshold``: messages shorter than this are sent uncompressed.
    """

    server_no_context_takeover: bool = True
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = 12
    client_max_window_bits: int | None = 12
    mem_level: int = 5
    level: int = 6
    threshold: int = 128

    def __post_init__(self) -> None:
        for name in ("server_max_window_bits", "client_max_window_bits"):
            bits = getattr(self, name)
            if bits is not None and not 8 <= bits <= 15:
                raise ValueError(f"{name} must be between 8 and 15, or None")
        if not 1 <= self.mem_level <= 9:
            raise ValueError("mem_level must be between 1 and 9")
        if not 0 <= self.level <= 9:
            raise ValueError("level must be between 0 and 9")
        if self.threshold < 0:
            raise ValueError("threshold must not be negative")

    @classmethod
    def client(cls) -> DeflateSettings:
        """The client's defaults: offer ``client_max_window_bits`` and nothing else
        (as python-websockets and browsers do)."""
        return cls(server_no_context_takeover=False, client_no_context_takeover=False,
                   server_max_window_bits=None, client_max_window_bits=None)


@dataclass(frozen=True)
class DeflateParameters:
    """The parameters both sides agreed on, as the 101 response states them
    (``None`` window: absent, that is 15 bits)."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None

    def response_header(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value of the 101 response."""
        params: list[ExtensionParameter] = []
        if self.server_no_context_takeover:
            params.append(("server_no_context_takeover", None))
        if self.client_no_context_takeover:
            params.append(("client_no_context_takeover", None))
        if self.server_max_window_bits is not None:
            params.append(("server_max_window_bits", str(self.server_max_window_bits)))
        if self.client_max_window_bits is not None:
            params.append(("client_max_window_bits", str(self.client_max_window_bits)))
        return format_extension(NAME, params)


class _Refused(Exception):
    """This offer cannot be accepted (try the next one)."""


def _read_params(params: tuple[ExtensionParameter, ...], *, bare_client_bits: bool
                 ) -> tuple[bool, bool, int | None, int | bool | None]:
    """The four parameters of one offer or answer; ``_Refused`` for unknown,
    repeated or malformed ones.  ``client_max_window_bits`` is ``True`` when
    given without a value (allowed in offers only)."""
    seen: set[str] = set()
    snct = cnct = False
    smwb: int | None = None
    cmwb: int | bool | None = None
    for key, value in params:
        if key in seen:
            raise _Refused(f"repeated parameter {key}")
        seen.add(key)
        if key == "server_no_context_takeover" or key == "client_no_context_takeover":
            if value is not None:
                raise _Refused(f"{key} takes no value")
            if key[0] == "s":
                snct = True
            else:
                cnct = True
        elif key == "server_max_window_bits":
            if value not in _WINDOW_VALUES:
                raise _Refused(f"invalid {key}={value}")
            smwb = _WINDOW_VALUES[value]
        elif key == "client_max_window_bits":
            if value is None and bare_client_bits:
                cmwb = True
            elif value in _WINDOW_VALUES:
                cmwb = _WINDOW_VALUES[value]
            else:
                raise _Refused(f"invalid {key}={value}")
        else:
            raise _Refused(f"unknown parameter {key}")
    return snct, cnct, smwb, cmwb


def _accept(params: tuple[ExtensionParameter, ...], settings: DeflateSettings
            ) -> DeflateParameters:
    snct, cnct, smwb, cmwb = _read_params(params, bare_client_bits=True)
    ours = settings.server_max_window_bits or 15
    # server_max_window_bits: answer the offered value or a smaller one; when it
    # is not offered, say nothing (the client inflates with 15 bits, which reads
    # our smaller window as well).
    server_bits = None if smwb is None else min(smwb, ours)
    # client_max_window_bits: may be answered only when offered.
    client_bits: int | None
    if cmwb is None:
        client_bits = None
    elif cmwb is True:
        client_bits = settings.client_max_window_bits
    else:
        limit = settings.client_max_window_bits
        client_bits = int(cmwb) if limit is None else min(int(cmwb), limit)
    return DeflateParameters(
        server_no_context_takeover=snct or settings.server_no_context_takeover,
        client_no_context_takeover=cnct or settings.client_no_context_takeover,
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
    )


def negotiate(header: str | None, settings: DeflateSettings) -> DeflateParameters | None:
    """The server's decision on a request's ``Sec-WebSocket-Extensions`` value.

    Takes the first ``permessage-deflate`` offer (a header may carry several, in
    the client's order of preference) that we can honour, and returns the
    parameters to answer with (:meth:`DeflateParameters.response_header`), or
    ``None`` to decline: no offer, only offers with unknown, repeated or
    malformed parameters, or a header that does not parse.  Other extensions in
    the header are ignored (declined).
    """
    if not header:
        return None
    try:
        offers = parse_extensions(header)
    except InvalidExtensionHeader:
        return None
    for offer in offers:
        if offer.name.lower() != NAME:
            continue
        try:
            return _accept(offer.params, settings)
        except _Refused:
            continue
    return None


def client_offer(settings: DeflateSettings) -> str:
    """Our client's ``Sec-WebSocket-Extensions`` request value."""
    params: list[ExtensionParameter] = []
    if settings.server_no_context_takeover:
        params.append(("server_no_context_takeover", None))
    if settings.client_no_context_takeover:
        params.append(("client_no_context_takeover", None))
    if settings.server_max_window_bits is not None:
        params.append(("server_max_window_bits", str(settings.server_max_window_bits)))
    if settings.client_max_window_bits is None:
        params.append(("client_max_window_bits", None))
    else:
        params.append(("client_max_window_bits", str(settings.client_max_window_bits)))
    return format_extension(NAME, params)


def check_response(header: str | None, settings: DeflateSettings) -> DeflateParameters | None:
    """The client's check of the 101 response to :func:`client_offer`.

    ``None`` when the server declined (no header).  Raises
    :class:`NegotiationError` when the answer is not one RFC 7692 allows for our
    offer: another extension (we offered none), more than one answer, unknown or
    repeated parameters, a window above the one we asked for or allowed, no
    ``server_no_context_takeover`` when we asked for it.
    """
    if not header:
        return None
    try:
        answers = parse_extensions(header)
    except InvalidExtensionHeader as exc:
        raise NegotiationError(str(exc)) from None
    if not answers:
        return None
    if len(answers) != 1 or answers[0].name.lower() != NAME:
        raise NegotiationError(f"server accepted extensions we did not offer: {header!r}")
    try:
        snct, cnct, smwb, cmwb = _read_params(answers[0].params, bare_client_bits=False)
    except _Refused as exc:
        raise NegotiationError(str(exc)) from None
    if settings.server_no_context_takeover and not snct:
        raise NegotiationError("server ignored our server_no_context_takeover")
    asked = settings.server_max_window_bits
    if asked is not None and (smwb is None or smwb > asked):
        raise NegotiationError(f"server_max_window_bits={smwb} does not honour our {asked}")
    client_bits = int(cmwb) if cmwb is not None else None
    limit = settings.client_max_window_bits
    if limit is not None and client_bits is not None and client_bits > limit:
        raise NegotiationError(f"client_max_window_bits={client_bits} is above our {limit}")
    return DeflateParameters(snct, cnct, smwb, client_bits)


# -- compression -----------------------------------------------------------------

class SharedCompressor:
    """Compresses messages without context, so that one output serves every
    connection that negotiated ``server_no_context_takeover`` (server side) with a
    window of at least ``window_bits``.

    One zlib stream, reset per message by a full flush: no output refers to an
    earlier message.  Safe to call from several threads (a lock serialises them).
    """

    __slots__ = ("_compressor", "_limit", "_lock", "key", "threshold", "window_bits")

    def __init__(self, window_bits: int, mem_level: int, level: int, threshold: int) -> None:
        if not 8 <= window_bits <= 15:
            raise ValueError("window_bits must be between 8 and 15")
        self.window_bits = window_bits
        self.threshold = threshold
        self.key = (window_bits, mem_level, level, threshold)
        # zlib cannot do 8 bits: 9, and only messages short enough that no
        # back-reference can reach past 256 bytes.
        self._limit = _SMALL_WINDOW_LIMIT if window_bits == 8 else None
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -max(window_bits, 9), mem_level)
        self._lock = threading.Lock()

    def compress(self, payload: bytes | memoryview) -> bytes | None:
        """The compressed payload (trailing ``00 00 ff ff`` removed), or ``None``
        when *payload* is under the threshold, does not shrink, or is too long for
        an 8-bit window: then it goes out uncompressed."""
        size = len(payload)
        if size < self.threshold or (self._limit is not None and size > self._limit):
            return None
        with self._lock:
            c = self._compressor
            data = c.compress(payload) + c.flush(zlib.Z_FULL_FLUSH)
        # A full flush ends with an empty stored block: 00 00 ff ff.
        data = data[:-4]
        if len(data) >= size:
            return None
        return data


_shared: dict[tuple[int, int, int, int], SharedCompressor] = {}
_shared_lock = threading.Lock()


def shared_compressor(window_bits: int, settings: DeflateSettings) -> SharedCompressor:
    """The process-wide :class:`SharedCompressor` of one parameter set."""
    key = (window_bits, settings.mem_level, settings.level, settings.threshold)
    found = _shared.get(key)
    if found is None:
        with _shared_lock:
            found = _shared.get(key)
            if found is None:
                found = _shared[key] = SharedCompressor(window_bits, settings.mem_level,
                                                        settings.level, settings.threshold)
    return found


# -- decompression ---------------------------------------------------------------

class _Inflater(MessageDecoder):
    """Streaming raw inflate of one peer's messages, output bounded per call."""

    __slots__ = ("_keep", "_wbits", "_z")

    def __init__(self, window_bits: int, keep_context: bool) -> None:
        # A peer limited to 8 bits most likely compressed with zlib's 9: read 9.
        self._wbits = -max(window_bits, 9)
        self._keep = keep_context
        self._z: zlib._Decompress | None = None

    @property
    def holds_state(self) -> bool:
        """Whether a zlib stream (window and state) is allocated right now."""
        return self._z is not None

    def decode(self, data: bytes, fin: bool, limit: int | None) -> bytes:
        z = self._z
        if z is None:
            z = self._z = zlib.decompressobj(self._wbits)
        out: list[bytes] = []
        total = 0
        try:
            for chunk in ((data, _TAIL) if fin else (data,)):
                if z.eof:
                    if chunk is not _TAIL and chunk:
                        raise ProtocolError("data after the end of the deflate stream",
                                            CloseCode.INVALID_PAYLOAD)
                    continue
                buf: bytes = chunk
                while buf:
                    room = 0 if limit is None else limit - total + 1
                    piece = z.decompress(buf, room)
                    total += len(piece)
                    if limit is not None and total > limit:
                        raise ProtocolError(
                            f"message inflates to more than the limit of {limit} bytes",
                            CloseCode.MESSAGE_TOO_BIG)
                    out.append(piece)
                    buf = z.unconsumed_tail
        except zlib.error as exc:
            raise ProtocolError(f"invalid compressed data: {exc}",
                                CloseCode.INVALID_PAYLOAD) from None
        if z.eof and z.unused_data:
            raise ProtocolError("data after the end of the deflate stream",
                                CloseCode.INVALID_PAYLOAD)
        if fin and (not self._keep or z.eof):
            self._z = None  # nothing to carry over: free the window now
        return b"".join(out) if len(out) != 1 else out[0]


class PerMessageDeflate(Extension):
    """permessage-deflate on one connection, with the agreed *params*.

    Receiving: :meth:`decoder` inflates with the peer's window; with the peer's
    context takeover the zlib stream lives as long as the connection, otherwise
    it exists only while a message is being received.  Sending: :meth:`encode`
    uses the process's :class:`SharedCompressor` when our side has no context
    takeover (the server's default), else a zlib stream of our own; with context
    takeover every message above the threshold is sent compressed (the peer's
    window must see what ours saw), without it only those that shrink.
    """

    name = NAME

    __slots__ = ("_compressor", "_decoder", "_limit", "_threshold", "params", "shared")

    def __init__(self, params: DeflateParameters, settings: DeflateSettings, *,
                 is_client: bool) -> None:
        self.params = params
        if is_client:
            local_nct, remote_nct = params.client_no_context_takeover, \
                params.server_no_context_takeover
            local_bits = params.client_max_window_bits or settings.client_max_window_bits or 15
            remote_bits = params.server_max_window_bits or 15
        else:
            local_nct, remote_nct = params.server_no_context_takeover, \
                params.client_no_context_takeover
            local_bits = min(params.server_max_window_bits or 15,
                             settings.server_max_window_bits or 15)
            remote_bits = params.client_max_window_bits or 15
        self._threshold = settings.threshold
        self._decoder = _Inflater(remote_bits, keep_context=not remote_nct)
        self._compressor: zlib._Compress | None = None
        self._limit: int | None = None
        #: The shared compressor this connection's frames may come from (our side
        #: has no context takeover), else None: room broadcasts reach it plain.
        self.shared: SharedCompressor | None = None
        if local_nct or local_bits == 8:
            # (With 8 bits we never keep context: see the module docstring.)
            self.shared = shared_compressor(local_bits, settings)
        else:
            self._compressor = zlib.compressobj(settings.level, zlib.DEFLATED, -local_bits,
                                                settings.mem_level)

    def response_header(self) -> str:
        return self.params.response_header()

    def decoder(self) -> MessageDecoder:
        return self._decoder

    def encode(self, payload: bytes) -> bytes | None:
        shared = self.shared
        if shared is not None:
            return shared.compress(payload)
        if len(payload) < self._threshold:
            return None
        c = self._compressor
        assert c is not None
        return (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


# -- frames ------------------------------------------------------------------------

def build_compressed_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame with RSV1 set (the first and only frame of
    a compressed message), carrying *payload*.  Data opcodes only (1, 2)."""
    if opcode != 0x1 and opcode != 0x2:
        raise ValueError(f"only data frames are compressed, not opcode {opcode:#x}")
    return frame_header(0xC0 | opcode, len(payload)) + payload


def split_frame(frame: bytes) -> tuple[int, memoryview]:
    """The opcode and payload of one unmasked frame built by ``build_frame``
    (no copy).  ``ValueError`` for anything else."""
    if len(frame) < 2 or frame[1] & 0x80:
        raise ValueError("not an unmasked frame")
    n = frame[1]
    start = 2
    if n == 126:
        n, start = int.from_bytes(frame[2:4], "big"), 4
    elif n == 127:
        n, start = int.from_bytes(frame[2:10], "big"), 10
    if start + n != len(frame):
        raise ValueError("frame length does not match its header")
    return frame[0] & 0x0F, memoryview(frame)[start:]
