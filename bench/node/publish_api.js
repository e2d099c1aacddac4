'use strict';
// The admin API both Node.js baselines serve, shaped like shardcast's so the same
// harness drives them: POST /api/publish with {"channel","data"} or an array of at
// most MAX_BATCH of them, channel names checked by shardcast's rule, JSON answers.
// Each baseline says what publishing means; shardcast's limits are exported for
// their WebSocket side too.

const http = require('node:http');

/** Largest message, as shardcast's default. */
const MAX_MESSAGE_BYTES = 65536;
/** Most publications in one request, as shardcast's default. */
const MAX_BATCH = 1000;
/** shardcast's channel-name rule. */
const CHANNEL_RE = /^[A-Za-z0-9_.:@/=+-]{1,128}$/;

/**
 * The admin HTTP server. A valid publish request goes to `publish(items, batch, send)`:
 * `items` are {channel, data} with valid channel names, `batch` says whether the body
 * was an array, `send(status, body)` answers with JSON. `routes` maps other
 * 'METHOD /path' keys to `(send) => void`; anything else is a 404.
 */
function createPublishApi({ publish, routes = {} }) {
  return http.createServer((req, res) => {
    const send = (status, obj) => {
      const body = JSON.stringify(obj);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    const route = routes[`${req.method} ${req.url}`];
    if (route) return route(send);
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
      for (const it of items) {
        if (!it || typeof it.channel !== 'string' || !CHANNEL_RE.test(it.channel) || it.data === undefined) {
          return send(400, { ok: false, error: { code: 'bad_channel', message: 'bad item' } });
        }
      }
      publish(items, batch, send);
    });
  });
}

module.exports = { createPublishApi, MAX_MESSAGE_BYTES, CHANNEL_RE };
