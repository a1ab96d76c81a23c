"""Demo applications built on the public API: the chat server (with its page) and
the echo server behind ``python -m reinhardt_ws``.  Not library code."""
