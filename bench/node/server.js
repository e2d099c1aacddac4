'use strict';
// The Node.js baseline for shardcast's benchmarks: what a team would build with the
// usual stack. `ws` servers in a `cluster` (WORKERS processes, default one per core)
// sharing one port; publications fan out across workers through Redis pub/sub
// (ioredis). It speaks shardcast's JSON protocol (welcome, subscribe/ack, message
// frames with per-channel seq) and admin API (POST /api/publish, single or batch),
// so the same load generator drives it. It does the same per-connection work as the
// gateway: validates channel names, caps subscriptions, pings, closes slow consumers.
//
// Process model and environment: cluster.js; admin API: publish_api.js.
// PER_MESSAGE_DEFLATE=1 turns on ws's permessage-deflate with its defaults (a deflate
// context per socket, kept between messages; messages of 1 KiB and more compressed,
// each socket's separately); off by default, as before.

const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');
const { WebSocketServer } = require('ws');
const Redis = require('ioredis');
const { runCluster, listen, REDIS_URL } = require('./cluster');
const { createPublishApi, MAX_MESSAGE_BYTES, CHANNEL_RE } = require('./publish_api');

const PING_INTERVAL_MS = 25000;
const MAX_CHANNELS_PER_CONNECTION = 128;
const MAX_QUEUE_BYTES = 1024 * 1024;
const SUBPROTOCOL = 'shardcast.v1.json';
const PER_MESSAGE_DEFLATE = process.env.PER_MESSAGE_DEFLATE === '1';

runCluster(runWorker);

async function runWorker() {
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
    // Encoded once per publication; the same Buffer goes to every subscriber (with
    // PER_MESSAGE_DEFLATE, ws then compresses it once per socket).
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
    perMessageDeflate: PER_MESSAGE_DEFLATE,
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

  const admin = createPublishApi({
    routes: {
      'GET /api/stats': (send) => send(200, { node, connections: sockets.size, channels: local.size }),
    },
    publish: (items, batch, send) => {
      const payloads = [];
      for (const it of items) {
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
    },
  });

  await listen(wsHttp, admin);
}
