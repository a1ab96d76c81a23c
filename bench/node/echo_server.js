// Node ws (+ bufferutil) echo: a contestant of bench/test_echo.py.
// The echo of ws's README: every message goes back as it came (text as text).
// Same control channel as bench/harness/echo_server.py: prints
// `PORT <port> <json info>`, then answers `STATS` on stdin with
// `STATS <utime_s> <stime_s> <maxrss_kb>` (process.resourceUsage()), exits on `QUIT`.
'use strict';

const readline = require('readline');
const { WebSocketServer } = require('ws');

let bufferutil = 'absent';
try {
  require('bufferutil');
  bufferutil = require('bufferutil/package.json').version;
} catch (err) {
  bufferutil = `absent (${err.code || err.message})`;
}

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false,
  maxPayload: 16 * 1024 * 1024 });

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});

wss.on('listening', () => {
  const info = { loop: 'node', version: require('ws/package.json').version,
    ws: require('ws/package.json').version, bufferutil,
    node: process.version };
  process.stdout.write(`PORT ${wss.address().port} ${JSON.stringify(info)}\n`);
});

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const cmd = line.trim().split(/\s+/)[0];
  if (cmd === 'STATS') {
    const ru = process.resourceUsage();
    process.stdout.write(`STATS ${(ru.userCPUTime / 1e6).toFixed(6)} ` +
      `${(ru.systemCPUTime / 1e6).toFixed(6)} ${ru.maxRSS}\n`);
  } else if (cmd === 'QUIT') {
    process.exit(0);
  } else if (cmd) {
    process.stdout.write(`ERROR unknown command ${cmd}\n`);
  }
});
rl.on('close', () => process.exit(0));
