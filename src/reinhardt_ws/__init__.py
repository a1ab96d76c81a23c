"""reinhardt_ws: a WebSocket server with rooms whose broadcast path runs at C speed."""
