// Node's ws as an echo server for our client: node server.js
// Prints {"port": N} once listening; echoes every message; prints
// {"extensions": ...} for each connection (what it negotiated).
'use strict';
const WebSocket = require('ws');

const wss = new WebSocket.WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  perMessageDeflate: {threshold: 64},  // off by default on ws' server side
});
wss.on('listening', () => console.log(JSON.stringify({port: wss.address().port})));
wss.on('connection', (ws) => {
  console.log(JSON.stringify({extensions: ws.extensions}));
  ws.on('message', (data, isBinary) => ws.send(data, {binary: isBinary}));
});
process.on('SIGTERM', () => wss.close(() => process.exit(0)));
