'use strict';
// The Node.js baseline for shardcast's benchmarks: what a team would build with the
// usual stack. `ws` servers in a `cluster` (WORKERS processes, default one per core)
// sharing one port; publications fan out across workers through Redis pub/sub
// (ioredis). It speaks shardcast's JSON protocol (welcome, subscribe/ack, message
// frames with per-channel seq) and admin API (POST /api/publish, single or batch),
// so the same load generator drives it. It does the same per-connection work as the
// gateway: validates channel names, caps subscriptions, pings, closes slow consumers.
//
// Environment: WS_PORT, ADMIN_PORT, WORKERS, REDIS_URL. Prints one JSON line
// {"message":"listening","ws":...,"admin":...} on stderr once every worker listens.

const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');
const { WebSocketServer } = require('ws');
const Redis = require('ioredis');

const WS_PORT = Number(process.env.WS_PORT || 8000);
const ADMIN_PORT = Number(process.env.ADMIN_PORT || 8001);
const WORKERS = Number(process.env.WORKERS || os.availableParallelism());
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const HOST = '127.0.0.1';
const PING_INTERVAL_MS = 25000;
const MAX_CHANNELS_PER_CONNECTION = 128;
const MAX_QUEUE_BYTES = 1024 * 1024;
const MAX_MESSAGE_BYTES = 65536;
const MAX_BATCH = 1000;
const CHANNEL_RE = /^[A-Za-z0-9_.:@/=+-]{1,128}$/;
const SUBPROTOCOL = 'shardcast.v1.json';

if (cluster.isPrimary) {
  runPrimary();
} else {
  runWorker().catch((e) => {
    console.error(JSON.stringify({ message: 'worker failed', error: String(e) }));
    process.exit(1);
  });
}

function runPrimary() {
  let listening = 0;
  let stopping = false;
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  cluster.on('message', (_worker, msg) => {
    if (msg === 'listening' && ++listening === WORKERS) {
      console.error(JSON.stringify({ message: 'listening', ws: `${HOST}:${WS_PORT}`, admin: `${HOST}:${ADMIN_PORT}` }));
    }
  });
  cluster.on('exit', (_worker, code, signal) => {
    if (!stopping) {
      console.error(JSON.stringify({ message: 'worker exited', code, signal }));
      process.exit(1);
    }
  });
  const stop = () => {
    stopping = true;
    for (const w of Object.values(cluster.workers)) w.kill('SIGKILL');
    setTimeout(() => process.exit(0), 200);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

async function runWorker() {
  // A worker never outlives its primary (which may be killed with SIGKILL).
  process.on('disconnect', () => process.exit(0));
  const pub = new Redis(REDIS_URL, { enableAutoPipelining: true });
  const sub = new Redis(REDIS_URL);
  await Promise.all([pub.ping(), sub.ping()]);

  const node = `${os.hostname()}-${process.pid}`;
  const welcome = JSON.stringify({ type: 'welcome', version: 1, node, shard: cluster.worker.id - 1, ping_interval_ms: PING_INTERVAL_MS });
  /** channel -> Set of local sockets */
  const local = new Map();
  /** channel -> promise of the Redis SUBSCRIBE for it */
  const subscribed = new Map();
  /** channel -> last seq sent by this worker */
  const seqs = new Map();
  const sockets = new Set();

  sub.on('message', (channel, message) => {
    const subs = local.get(channel);
    if (!subs) return;
    const seq = (seqs.get(channel) || 0) + 1;
    seqs.set(channel, seq);
    // Encoded once per publication; the same Buffer goes to every subscriber.
    const frame = Buffer.from(`{"type":"message","channel":${JSON.stringify(channel)},"seq":${seq},"data":${message}}`);
    for (const ws of subs) {
      if (ws.bufferedAmount > MAX_QUEUE_BYTES) {
        ws.close(4000, 'slow consumer');
        continue;
      }
      ws.send(frame, { binary: false });
    }
  });

  function join(ws, channel) {
    ws.channels.add(channel);
    let set = local.get(channel);
    if (!set) {
      set = new Set();
      local.set(channel, set);
      subscribed.set(channel, sub.subscribe(channel));
    }
    set.add(ws);
    return subscribed.get(channel);
  }

  function leave(ws, channel) {
    ws.channels.delete(channel);
    const set = local.get(channel);
    if (!set) return;
    set.delete(ws);
    if (set.size === 0) {
      local.delete(channel);
      subscribed.delete(channel);
      seqs.delete(channel);
      sub.unsubscribe(channel).catch(() => {});
    }
  }

  const reply = (ws, frame) => ws.send(JSON.stringify(frame));
  const error = (id, code, message) => ({ type: 'error', id, code, message });

  function onClientFrame(ws, data) {
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return reply(ws, error(undefined, 'bad_request', 'invalid JSON frame'));
    }
    const id = Number.isInteger(f && f.id) ? f.id : undefined;
    switch (f && f.op) {
      case 'subscribe':
        if (typeof f.channel !== 'string' || !CHANNEL_RE.test(f.channel)) {
          return reply(ws, error(id, 'bad_channel', 'bad channel name'));
        }
        if (ws.channels.size >= MAX_CHANNELS_PER_CONNECTION && !ws.channels.has(f.channel)) {
          return reply(ws, error(id, 'too_many_channels', 'too many channels'));
        }
        return join(ws, f.channel).then(
          () => reply(ws, { type: 'ack', id }),
          () => reply(ws, error(id, 'unavailable', 'broker unavailable')),
        );
      case 'unsubscribe':
        if (!ws.channels.has(f.channel)) return reply(ws, error(id, 'not_subscribed', 'not subscribed'));
        leave(ws, f.channel);
        return reply(ws, { type: 'ack', id });
      case 'ping':
        return reply(ws, { type: 'pong', id });
      case 'publish':
        return reply(ws, error(id, 'forbidden', 'client publish is disabled'));
      default:
        return reply(ws, error(id, 'unknown_op', 'unknown op'));
    }
  }

  const wsHttp = http.createServer((_req, res) => {
    res.writeHead(404);
    res.end();
  });
  const wss = new WebSocketServer({
    server: wsHttp,
    path: '/ws',
    perMessageDeflate: false,
    clientTracking: false,
    maxPayload: MAX_MESSAGE_BYTES,
    handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
  });
  wss.on('connection', (ws) => {
    ws.channels = new Set();
    ws.isAlive = true;
    sockets.add(ws);
    ws.send(welcome);
    ws.on('message', (data) => {
      ws.isAlive = true;
      onClientFrame(ws, data);
    });
    ws.on('pong', () => {
      ws.isAlive = true;
    });
    ws.on('close', () => {
      sockets.delete(ws);
      for (const ch of [...ws.channels]) leave(ws, ch);
    });
    ws.on('error', () => {});
  });
  // Heartbeat: ping every socket each interval; one that answered nothing since the
  // last round is closed (shardcast pings quiet sockets and closes idle ones too).
  setInterval(() => {
    for (const ws of sockets) {
      if (!ws.isAlive) {
        ws.terminate();
        continue;
      }
      ws.isAlive = false;
      ws.ping();
    }
  }, PING_INTERVAL_MS).unref();

  const admin = http.createServer((req, res) => {
    const send = (status, obj) => {
      const body = JSON.stringify(obj);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    if (req.method === 'GET' && req.url === '/api/stats') {
      return send(200, { node, connections: sockets.size, channels: local.size });
    }
    if (req.method !== 'POST' || req.url !== '/api/publish') {
      return send(404, { ok: false, error: { code: 'bad_request', message: 'no such endpoint' } });
    }
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 16 * MAX_MESSAGE_BYTES + (1 << 20)) req.destroy();
      else chunks.push(c);
    });
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks));
      } catch {
        return send(400, { ok: false, error: { code: 'bad_request', message: 'invalid JSON' } });
      }
      const batch = Array.isArray(body);
      const items = batch ? body : [body];
      if (items.length > MAX_BATCH) {
        return send(413, { ok: false, error: { code: 'payload_too_large', message: 'batch too large' } });
      }
      const payloads = [];
      for (const it of items) {
        if (!it || typeof it.channel !== 'string' || !CHANNEL_RE.test(it.channel) || it.data === undefined) {
          return send(400, { ok: false, error: { code: 'bad_channel', message: 'bad item' } });
        }
        const data = JSON.stringify(it.data);
        if (data.length > MAX_MESSAGE_BYTES) {
          return send(413, { ok: false, error: { code: 'payload_too_large', message: 'data too large' } });
        }
        payloads.push(data);
      }
      Promise.all(items.map((it, i) => pub.publish(it.channel, payloads[i]))).then(
        // Redis counts subscribed workers, not sockets.
        (counts) =>
          batch
            ? send(200, { ok: true, results: items.map((it, i) => ({ channel: it.channel, subscribers: counts[i] })) })
            : send(200, { ok: true, subscribers: counts[0] }),
        (e) => send(503, { ok: false, error: { code: 'unavailable', message: String(e) } }),
      );
    });
  });

  await Promise.all([
    new Promise((resolve) => wsHttp.listen({ port: WS_PORT, host: HOST, backlog: 4096 }, resolve)),
    new Promise((resolve) => admin.listen({ port: ADMIN_PORT, host: HOST, backlog: 511 }, resolve)),
  ]);
  process.send('listening');
}
