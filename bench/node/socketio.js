'use strict';
// The Socket.IO reference baseline for shardcast's benchmarks: socket.io 4 in a
// `cluster` (WORKERS processes sharing one port), WebSocket transport only (no
// long-polling, so no sticky sessions are needed), rooms shared across workers by
// @socket.io/redis-adapter over ioredis. A client emits "subscribe" with a channel
// name and an ack callback; publications arrive as "message" events carrying
// {channel, seq, data}. The admin API is server.js's: POST /api/publish with
// {"channel","data"} or an array of them.
//
// Environment: WS_PORT, ADMIN_PORT, WORKERS, REDIS_URL. Prints one JSON line
// {"message":"listening","ws":...,"admin":...} on stderr once every worker listens.

const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const Redis = require('ioredis');

const WS_PORT = Number(process.env.WS_PORT || 8000);
const ADMIN_PORT = Number(process.env.ADMIN_PORT || 8001);
const WORKERS = Number(process.env.WORKERS || os.availableParallelism());
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const HOST = '127.0.0.1';
const MAX_MESSAGE_BYTES = 65536;
const MAX_BATCH = 1000;
const CHANNEL_RE = /^[A-Za-z0-9_.:@/=+-]{1,128}$/;

if (cluster.isPrimary) {
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
} else {
  runWorker().catch((e) => {
    console.error(JSON.stringify({ message: 'worker failed', error: String(e) }));
    process.exit(1);
  });
}

async function runWorker() {
  // A worker never outlives its primary (which may be killed with SIGKILL).
  process.on('disconnect', () => process.exit(0));
  const pubClient = new Redis(REDIS_URL);
  const subClient = pubClient.duplicate();
  await Promise.all([pubClient.ping(), subClient.ping()]);

  const wsHttp = http.createServer();
  const io = new Server(wsHttp, {
    transports: ['websocket'],
    serveClient: false,
    perMessageDeflate: false,
    maxHttpBufferSize: MAX_MESSAGE_BYTES,
    pingInterval: 25000,
    pingTimeout: 20000,
  });
  io.adapter(createAdapter(pubClient, subClient));
  io.on('connection', (socket) => {
    socket.on('subscribe', (channel, ack) => {
      const ok = typeof channel === 'string' && CHANNEL_RE.test(channel);
      if (ok) socket.join(channel);
      if (typeof ack === 'function') ack({ ok });
    });
    socket.on('unsubscribe', (channel, ack) => {
      socket.leave(channel);
      if (typeof ack === 'function') ack({ ok: true });
    });
  });

  /** channel -> last seq published through this worker */
  const seqs = new Map();
  const admin = http.createServer((req, res) => {
    const send = (status, obj) => {
      const body = JSON.stringify(obj);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
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
      const items = Array.isArray(body) ? body : [body];
      if (items.length > MAX_BATCH) {
        return send(413, { ok: false, error: { code: 'payload_too_large', message: 'batch too large' } });
      }
      for (const it of items) {
        if (!it || typeof it.channel !== 'string' || !CHANNEL_RE.test(it.channel) || it.data === undefined) {
          return send(400, { ok: false, error: { code: 'bad_channel', message: 'bad item' } });
        }
      }
      for (const it of items) {
        const seq = (seqs.get(it.channel) || 0) + 1;
        seqs.set(it.channel, seq);
        // The adapter encodes the packet once and hands it to every worker via Redis.
        io.to(it.channel).emit('message', { channel: it.channel, seq, data: it.data });
      }
      send(200, { ok: true });
    });
  });

  await Promise.all([
    new Promise((resolve) => wsHttp.listen({ port: WS_PORT, host: HOST, backlog: 4096 }, resolve)),
    new Promise((resolve) => admin.listen({ port: ADMIN_PORT, host: HOST, backlog: 511 }, resolve)),
  ]);
  process.send('listening');
}
