"""WebSocket extensions (RFC 6455 section 9), without I/O.

:mod:`.base` holds the extension interface and the ``Sec-WebSocket-Extensions``
header grammar; :mod:`.permessage_deflate` the one extension we implement
(RFC 7692): its negotiation, as pure functions of the handshake headers, its
per-connection codec, and the shared no-context compressor room broadcasts use.
"""
