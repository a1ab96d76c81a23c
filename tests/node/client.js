// Node's ws as a client of our server: node client.js URL
// Sends each message of a fixed script, checks the echo, prints one JSON line:
// {"extensions": <what ws negotiated>, "header": <the 101's Sec-WebSocket-Extensions>,
//  "echoed": N}.
'use strict';
const crypto = require('crypto');
const WebSocket = require('ws');

const compressible = '{"type":"chat","room":"lobby","text":"hello, everyone"}'.repeat(30);
const script = [
  compressible,
  crypto.randomBytes(2000),
  'tiny',
  Buffer.from(compressible.repeat(3)),
];

const ws = new WebSocket(process.argv[2]);  // perMessageDeflate is on by default
let next = 0;
let answer = null;
ws.on('upgrade', (res) => { answer = res.headers['sec-websocket-extensions']; });
ws.on('open', () => ws.send(script[0]));
ws.on('message', (data, isBinary) => {
  const sent = script[next];
  const expected = typeof sent === 'string' ? Buffer.from(sent) : sent;
  if (isBinary !== (typeof sent !== 'string') || !expected.equals(data)) {
    console.log(JSON.stringify({error: `message ${next} came back different`}));
    process.exit(1);
  }
  next += 1;
  if (next < script.length) {
    ws.send(script[next]);
  } else {
    console.log(JSON.stringify({extensions: ws.extensions, header: answer, echoed: next}));
    ws.close(1000);
  }
});
ws.on('error', (err) => {
  console.log(JSON.stringify({error: String(err)}));
  process.exit(1);
});
