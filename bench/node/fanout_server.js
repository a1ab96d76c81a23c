'use strict';
// Node's `ws` 8 (with bufferutil) as a fan-out contestant, driven by the bench
// harness over stdin/stdout, one command per line (see bench/harness/server_main.py):
//
//   (start)                   -> PORT <port> <json info>
//   WAIT <n> <timeout>        -> CONNECTED <count>   (when n are connected, or at timeout)
//   BCAST <m> <size> <b>      -> SENT <wall_s> <delivered> <dropped> <failed>
//   ROOMS <k>                 -> OK   (open connection i, in accept order, joins room i % k)
//   BCASTROOMS <m> <size> <b> -> SENT ...  (message j goes to room j % k only)
//   STATS                     -> STATS <utime_s> <stime_s> <maxrss_kb>
//   GC                        -> OK   (global.gc(): run node with --expose-gc)
//   QUIT                      -> (exit)
//
// Run as `node --expose-gc fanout_server.js [--mode prepared|send]`.
//
// One iteration is the same as for every contestant: b broadcasts, then a yield to
// the event loop (setImmediate, which lets libuv poll for I/O, as asyncio.sleep(0)
// does).  How a broadcast is sent (--mode):
//   prepared (default): the frame is built once per broadcast with
//     `WebSocket.Sender.frame()` (ws' own framing, unmasked, as a server sends)
//     and the same Buffer is written to each member's socket (`ws._socket.write`).
//     With b > 1 every member's socket is corked for the iteration and uncorked
//     after its b broadcasts, so the b frames leave in one writev.  This bypasses
//     ws' per-connection Sender, which is safe here because permessage-deflate is
//     off and nothing else writes to these sockets.
//   send: the loop ws' README shows, `client.send(payload, {binary: true})` for each
//     open client (ws frames per client: header and payload in one corked write).
// Pings: ws sends none unless the application does (this one does not).

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const mode = process.argv.includes('--mode')
  ? process.argv[process.argv.indexOf('--mode') + 1]
  : 'prepared';
if (mode !== 'prepared' && mode !== 'send') {
  process.stderr.write(`unknown --mode ${mode}\n`);
  process.exit(2);
}

function say(line) {
  process.stdout.write(line + '\n');
}

function makePayload(size) {
  // The same bytes as harness/wire.py make_payload: i % 251.
  const buf = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) buf[i] = i % 251;
  return buf;
}

function bufferutilVersion() {
  try {
    require('bufferutil');
    return require('bufferutil/package.json').version;
  } catch (err) {
    return null;
  }
}

const conns = new Set(); // insertion order = accept order
let rooms = null; // array of arrays of WebSocket, after ROOMS

const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const wss = new WebSocketServer({
  server,
  perMessageDeflate: false,
  clientTracking: false,
  maxPayload: 1 << 20,
});
wss.on('connection', (ws) => {
  conns.add(ws);
  ws.on('close', () => {
    conns.delete(ws);
  });
  ws.on('error', () => {});
});

function frameOf(payload) {
  const parts = WebSocket.Sender.frame(payload, {
    fin: true,
    rsv1: false,
    opcode: 0x02,
    mask: false,
    readOnly: true,
  });
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
}

// Broadcast `messages` messages, `batch` per iteration; message j goes to
// targets(j) (an array of WebSocket).  Resolves to [delivered, dropped, failed].
function run(payload, messages, batch, targets) {
  return new Promise((resolve) => {
    let delivered = 0;
    let failed = 0;
    let j = 0;
    const iterations = messages / batch;
    let done = 0;
    const sendOpts = { binary: true };
    function iteration() {
      if (mode === 'prepared') {
        const corked = batch > 1 ? new Set() : null;
        for (let b = 0; b < batch; b++, j++) {
          const frame = frameOf(payload);
          const members = targets(j);
          for (let i = 0; i < members.length; i++) {
            const ws = members[i];
            const sock = ws._socket;
            if (ws.readyState !== WebSocket.OPEN || !sock || sock.destroyed) {
              failed++;
              continue;
            }
            if (corked !== null && !corked.has(sock)) {
              sock.cork();
              corked.add(sock);
            }
            sock.write(frame);
            delivered++;
          }
        }
        if (corked !== null) for (const sock of corked) sock.uncork();
      } else {
        for (let b = 0; b < batch; b++, j++) {
          const members = targets(j);
          for (let i = 0; i < members.length; i++) {
            const ws = members[i];
            if (ws.readyState !== WebSocket.OPEN) {
              failed++;
              continue;
            }
            ws.send(payload, sendOpts);
            delivered++;
          }
        }
      }
      done++;
      if (done < iterations) setImmediate(iteration);
      else setImmediate(() => resolve([delivered, 0, failed]));
    }
    if (iterations > 0) iteration();
    else resolve([0, 0, 0]);
  });
}

async function broadcast(cmd, m, size, batch) {
  const payload = makePayload(size);
  let targets;
  if (cmd === 'BCAST') {
    const all = Array.from(conns);
    targets = () => all;
  } else {
    if (rooms === null) {
      say('ERROR BCASTROOMS before ROOMS');
      return;
    }
    const k = rooms.length;
    if (m % k) {
      say(`ERROR BCASTROOMS: ${m} messages is not a multiple of ${k} rooms`);
      return;
    }
    targets = (j) => rooms[j % k];
  }
  if (m % batch) {
    say(`ERROR ${cmd}: ${m} messages is not a multiple of the batch ${batch}`);
    return;
  }
  const t0 = process.hrtime.bigint();
  try {
    const [delivered, dropped, failed] = await run(payload, m, batch, targets);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    say(`SENT ${wall.toFixed(6)} ${delivered} ${dropped} ${failed}`);
  } catch (err) {
    say(`ERROR broadcast raised ${String(err).replace(/\n/g, ' ')}`);
  }
}

function waitFor(n, timeout) {
  const deadline = Date.now() + timeout * 1000;
  const tick = () => {
    if (conns.size >= n || Date.now() >= deadline) say(`CONNECTED ${conns.size}`);
    else setTimeout(tick, 10);
  };
  tick();
}

function handle(line) {
  const cmd = line.trim().split(/\s+/);
  if (!cmd[0]) return;
  switch (cmd[0]) {
    case 'WAIT':
      waitFor(Number(cmd[1]), cmd.length > 2 ? Number(cmd[2]) : 60);
      break;
    case 'BCAST':
    case 'BCASTROOMS':
      broadcast(cmd[0], Number(cmd[1]), Number(cmd[2]), Number(cmd[3]));
      break;
    case 'ROOMS': {
      const k = Number(cmd[1]);
      if (!(k >= 1)) {
        say(`ERROR ROOMS needs k >= 1, got ${cmd[1]}`);
        break;
      }
      rooms = Array.from({ length: k }, () => []);
      let i = 0;
      for (const ws of conns) rooms[i++ % k].push(ws);
      say('OK');
      break;
    }
    case 'STATS': {
      const cpu = process.cpuUsage(); // microseconds, like getrusage's ru_utime/ru_stime
      const maxrss = process.resourceUsage().maxRSS; // KiB, like ru_maxrss
      say(`STATS ${(cpu.user / 1e6).toFixed(6)} ${(cpu.system / 1e6).toFixed(6)} ${maxrss}`);
      break;
    }
    case 'GC':
      if (typeof global.gc === 'function') {
        global.gc();
        say('OK');
      } else {
        say('ERROR GC: run node with --expose-gc');
      }
      break;
    case 'QUIT':
      process.exit(0);
      break;
    default:
      say(`ERROR unknown command ${cmd[0]}`);
  }
}

let pending = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  pending += chunk;
  let nl;
  while ((nl = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, nl);
    pending = pending.slice(nl + 1);
    handle(line);
  }
});
process.stdin.on('end', () => process.exit(0));

// The default listen backlog (511) is plenty for the clients' connect batches.
server.listen(0, '127.0.0.1', () => {
  const info = {
    loop: 'node',
    node: process.version,
    ws: require('ws/package.json').version,
    bufferutil: bufferutilVersion(),
    mode,
  };
  say(`PORT ${server.address().port} ${JSON.stringify(info)}`);
});
