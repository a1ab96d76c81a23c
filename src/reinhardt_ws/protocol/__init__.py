"""The sans-I/O protocol core: messages, frame assembly, the closing handshake and
the opening-handshake decisions.

Nothing under this package imports asyncio or picows (a test checks it): each
piece is a plain object or function that tests drive directly, and the I/O layer
(:mod:`reinhardt_ws.connection`, :mod:`reinhardt_ws._listener`) feeds it events.
"""
