'use strict';
// The Socket.IO reference baseline for shardcast's benchmarks: socket.io 4 in a
// `cluster` (WORKERS processes sharing one port), WebSocket transport only (no
// long-polling, so no sticky sessions are needed), rooms shared across workers by
// @socket.io/redis-adapter over ioredis. A client emits "subscribe" with a channel
// name and an ack callback; publications arrive as "message" events carrying
// {channel, seq, data}. The admin API is server.js's: POST /api/publish with
// {"channel","data"} or an array of them.
//
// Process model and environment: cluster.js; admin API: publish_api.js.

const http = require('node:http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const Redis = require('ioredis');
const { runCluster, listen, REDIS_URL } = require('./cluster');
const { createPublishApi, MAX_MESSAGE_BYTES, CHANNEL_RE } = require('./publish_api');

runCluster(runWorker);

async function runWorker() {
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
  const admin = createPublishApi({
    publish: (items, _batch, send) => {
      for (const it of items) {
        const seq = (seqs.get(it.channel) || 0) + 1;
        seqs.set(it.channel, seq);
        // The adapter encodes the packet once and hands it to every worker via Redis.
        io.to(it.channel).emit('message', { channel: it.channel, seq, data: it.data });
      }
      send(200, { ok: true });
    },
  });

  await listen(wsHttp, admin);
}
