"""The extension interface and the ``Sec-WebSocket-Extensions`` header grammar
(RFC 6455 section 9.1), without I/O.

An extension negotiated on a connection is an :class:`Extension`: it names
itself, states the parameters both sides agreed on (the response header), and
turns message payloads into what goes on the wire and back.  Negotiation itself
is a pure function of the handshake headers, one per extension module.
"""

from __future__ import annotations

import abc
import re
from typing import NamedTuple

__all__ = [
    "Extension",
    "ExtensionOffer",
    "ExtensionParameter",
    "InvalidExtensionHeader",
    "MessageDecoder",
    "format_extension",
    "parse_extensions",
]

#: One ``name[=value]`` parameter of an extension; ``None`` for a bare name.
ExtensionParameter = tuple[str, "str | None"]


class InvalidExtensionHeader(ValueError):
    """A ``Sec-WebSocket-Extensions`` header that does not follow RFC 6455 9.1."""


class ExtensionOffer(NamedTuple):
    """One extension in a ``Sec-WebSocket-Extensions`` header, with its parameters
    in header order (repeats kept, so that callers can refuse them)."""

    name: str
    params: tuple[ExtensionParameter, ...]


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_TOKEN_RE = re.compile(_TOKEN)
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*(?:=\s*({_TOKEN}|{_QUOTED}))?\s*")


def parse_extensions(header: str) -> list[ExtensionOffer]:
    """Parse a ``Sec-WebSocket-Extensions`` value (several headers joined with
    ``,`` are one value) into its offers, in order.

    Quoted parameter values are unquoted; a quoted value must still be a token
    (RFC 6455 9.1).  Raises :class:`InvalidExtensionHeader` on anything else.
    Empty list elements (``a, , b``) are skipped, as RFC 7230 7 allows.
    """
    offers: list[ExtensionOffer] = []
    pos, end = 0, len(header)
    while pos < end:
        # One element: token *( ";" param ).
        while pos < end and header[pos] in " \t,":
            pos += 1
        if pos >= end:
            break
        match = _TOKEN_RE.match(header, pos)
        if match is None:
            raise InvalidExtensionHeader(f"expected an extension name at {pos}: {header!r}")
        name = match.group(0)
        pos = match.end()
        params: list[ExtensionParameter] = []
        while True:
            while pos < end and header[pos] in " \t":
                pos += 1
            if pos >= end or header[pos] == ",":
                break
            if header[pos] != ";":
                raise InvalidExtensionHeader(f"unexpected {header[pos]!r} at {pos}: {header!r}")
            param = _PARAM_RE.match(header, pos + 1)
            if param is None:
                raise InvalidExtensionHeader(f"expected a parameter at {pos + 1}: {header!r}")
            key, value = param.group(1), param.group(2)
            if value is not None and value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
                if not _TOKEN_RE.fullmatch(value):
                    raise InvalidExtensionHeader(f"quoted value of {key} is not a token")
            params.append((key, value))
            pos = param.end()
        offers.append(ExtensionOffer(name, tuple(params)))
    return offers


def format_extension(name: str, params: tuple[ExtensionParameter, ...] | list[ExtensionParameter]
                     ) -> str:
    """One element of a ``Sec-WebSocket-Extensions`` header: ``name; a; b=1``."""
    parts = [name]
    for key, value in params:
        parts.append(key if value is None else f"{key}={value}")
    return "; ".join(parts)


class MessageDecoder(abc.ABC):
    """Decodes the payload of one message, fragment by fragment."""

    @abc.abstractmethod
    def decode(self, data: bytes, fin: bool, limit: int | None) -> bytes:
        """The decoded bytes of the next fragment *data* (*fin*: the last one).

        *limit* bounds the decoded output of this call (``None``: unbounded);
        going over it raises :class:`~reinhardt_ws.ProtocolError` with 1009
        having produced at most ``limit + 1`` bytes.  Undecodable data raises
        :class:`~reinhardt_ws.ProtocolError` with 1007.
        """


class Extension(abc.ABC):
    """An extension negotiated on one connection (one instance per connection)."""

    #: The registered extension name (``permessage-deflate``).
    name: str

    @abc.abstractmethod
    def response_header(self) -> str:
        """The element of the 101 response's ``Sec-WebSocket-Extensions`` that
        states what was agreed."""

    @abc.abstractmethod
    def decoder(self) -> MessageDecoder:
        """The decoder for the next message the peer marked with RSV1 (it may keep
        state across messages, as the negotiated context allows)."""

    @abc.abstractmethod
    def encode(self, payload: bytes) -> bytes | None:
        """The wire payload of an outgoing data message, to send with RSV1 set;
        ``None`` to send *payload* as it is (RSV1 clear)."""
