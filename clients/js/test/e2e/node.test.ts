// End-to-end in Node.js against the real gateway binary, through the built
// package (dist/, ESM and CommonJS) with the `ws` package injected as the
// WebSocket: subscribe and receive an HTTP publish in both encodings, typed
// errors from the gateway, client publish, reconnect and re-subscribe across a
// gateway restart on the same port, and the heartbeat noticing a frozen gateway.
import { createRequire } from 'node:module';
import WebSocket from 'ws';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  HandshakeRejectedError,
  MessageTooLargeError,
  NotConnectedError,
  ServerError,
  type Encoding,
} from '../../dist/index.js';
import { Gateway, killAllGateways, restartOnSamePort, waitFor } from './gateway';
import { closeAfterTest, closeClients, makeClient, record } from './node-clients';

afterEach(() => {
  closeClients();
});

afterAll(async () => {
  await killAllGateways();
});

describe.each<Encoding>(['json', 'msgpack'])('with %s frames', (encoding) => {
  it('subscribes and receives a publication made through the HTTP API', async () => {
    const gateway = await Gateway.start();
    try {
      let tokenCalls = 0;
      // A provider that supplies no token: called before the connect, which is then anonymous.
      const client = makeClient(gateway.wsUrl, {
        encoding,
        token: () => {
          tokenCalls++;
          return undefined;
        },
      });
      const connected = record(client, 'connected');
      const received: unknown[] = [];
      await client.subscribe<{ n: number }>('news', (data, message) => received.push({ data, seq: message.seq }));
      expect(connected).toHaveLength(1);
      expect(connected[0]?.encoding).toBe(encoding);
      expect(connected[0]?.welcome).toMatchObject({ type: 'welcome', version: 1 });
      expect(tokenCalls).toBe(1);
      expect(await gateway.publish('news', { n: 1, text: 'héllo' })).toBe(1);
      expect(await gateway.publish('news', 2.5)).toBe(1);
      await waitFor(() => received.length === 2, 'two publications');
      expect(received).toEqual([
        { data: { n: 1, text: 'héllo' }, seq: 1 },
        { data: 2.5, seq: 2 },
      ]);
      await expect(client.ping()).resolves.toBeGreaterThanOrEqual(0);
    } finally {
      await gateway.stop();
    }
  });
});

it('gets typed errors from the gateway: forbidden publish, over-long channel', async () => {
  const gateway = await Gateway.start();
  try {
    const client = makeClient(gateway.wsUrl);
    // Publish is not queued while connecting.
    await expect(client.publish('news', 1)).rejects.toBeInstanceOf(NotConnectedError);
    await waitFor(() => client.state === 'connected', 'the connection');
    const forbidden = await client.publish('news', { x: 1 }).catch((e: unknown) => e);
    expect(forbidden).toBeInstanceOf(ServerError);
    expect(forbidden).toMatchObject({ code: 'forbidden' });
    // Valid characters but longer than the gateway's 128-byte limit: only the gateway can refuse it.
    const tooLong = await client.subscribe('x'.repeat(200), () => undefined).catch((e: unknown) => e);
    expect(tooLong).toBeInstanceOf(ServerError);
    expect(tooLong).toMatchObject({ code: 'bad_channel' });
    expect(client.state).toBe('connected');
  } finally {
    await gateway.stop();
  }
});

it('stops instead of retrying when the gateway answers the upgrade with 404 (wrong path)', async () => {
  const gateway = await Gateway.start();
  try {
    const client = makeClient(gateway.wsUrl.replace(/\/ws$/, '/not-the-ws-path'));
    const errors = record(client, 'error');
    const connecting = record(client, 'connecting');
    await waitFor(() => client.state === 'closed', 'the client to give up');
    expect(errors[0]).toBeInstanceOf(HandshakeRejectedError);
    expect(errors[0]).toMatchObject({ status: 404 });
    expect(connecting).toHaveLength(1);
  } finally {
    await gateway.stop();
  }
});

it('backs off while the gateway refuses connections (503 at max-connections) and gets in once there is room', async () => {
  const gateway = await Gateway.start({ args: ['--max-connections', '1'] });
  try {
    const first = makeClient(gateway.wsUrl);
    await waitFor(() => first.state === 'connected', 'the first connection');
    const second = makeClient(gateway.wsUrl, { reconnect: { initialDelayMs: 100, maxDelayMs: 200 } });
    const disconnected = record(second, 'disconnected');
    const errors = record(second, 'error');
    await waitFor(() => disconnected.length >= 2, 'two refused attempts');
    expect(disconnected.every((d) => !d.wasConnected && d.willReconnect)).toBe(true);
    // A 503 is a reason to wait, not to give up.
    expect(errors.filter((e) => e instanceof HandshakeRejectedError)).toEqual([]);
    first.close();
    const received: unknown[] = [];
    await second.subscribe('news', (data) => received.push(data));
    expect(await gateway.publish('news', 'room at last')).toBe(1);
    await waitFor(() => received.length === 1, 'the publication');
  } finally {
    await gateway.stop();
  }
});

it('publishes from a client where the gateway allows it', async () => {
  const gateway = await Gateway.start({ args: ['--allow-client-publish'] });
  try {
    const subscriber = makeClient(gateway.wsUrl, { encoding: 'msgpack' });
    const publisher = makeClient(gateway.wsUrl);
    const received: unknown[] = [];
    await subscriber.subscribe('chat:room-1', (data) => received.push(data));
    await waitFor(() => publisher.state === 'connected', 'publisher connection');
    await publisher.publish('chat:room-1', { from: 'publisher', text: 'hi' });
    await waitFor(() => received.length === 1, 'the client publication');
    expect(received).toEqual([{ from: 'publisher', text: 'hi' }]);
    // Above the gateway's 64 KiB limit: refused locally, so the gateway has no 1009 to close with.
    await expect(publisher.publish('chat:room-1', 'x'.repeat(70_000))).rejects.toBeInstanceOf(MessageTooLargeError);
    expect(publisher.state).toBe('connected');
  } finally {
    await gateway.stop();
  }
});

it('reconnects and re-subscribes after the gateway restarts on the same port', async () => {
  let gateway = await Gateway.start();
  try {
    const client = makeClient(gateway.wsUrl);
    const disconnected = record(client, 'disconnected');
    const reconnecting = record(client, 'reconnecting');
    const subscribed = record(client, 'subscribed');
    const received: unknown[] = [];
    await client.subscribe('news', (data) => received.push(data));
    await client.subscribe('prices/eur-usd', (data) => received.push(data));
    await gateway.publish('news', 'before');
    await waitFor(() => received.length === 1, 'the first publication');

    const firstNode = client.welcome?.node;
    expect(await restartOnSamePort(gateway).then((g) => (gateway = g))).toBeDefined();

    await waitFor(() => subscribed.filter((s) => s.resubscribed).length === 2, 're-subscription of both channels', 15_000);
    // The drain closed the connection with "going away" and a retry hint.
    expect(disconnected[0]).toMatchObject({ code: 1001, wasConnected: true, willReconnect: true });
    expect(disconnected[0]?.reason).toMatch(/^going away; retry_ms=\d+$/);
    expect(reconnecting[0]?.retryHintMs).toBeTypeOf('number');
    expect(client.welcome?.node).not.toBe(firstNode);

    expect(await gateway.publish('news', 'after')).toBe(1);
    expect(await gateway.publish('prices/eur-usd', 1.0825)).toBe(1);
    await waitFor(() => received.length === 3, 'publications after the restart');
    expect(received).toEqual(['before', 'after', 1.0825]);
  } finally {
    await gateway.stop();
  }
});

it('notices a frozen gateway through the heartbeat and recovers when it thaws', async () => {
  const gateway = await Gateway.start();
  try {
    const client = makeClient(gateway.wsUrl, {
      heartbeat: { intervalMs: 300, timeoutMs: 300 },
      connectTimeoutMs: 1_000,
    });
    const disconnected = record(client, 'disconnected');
    const subscribed = record(client, 'subscribed');
    const received: unknown[] = [];
    await client.subscribe('news', (data) => received.push(data));

    // SIGSTOP: the kernel keeps the TCP connection up, so only the heartbeat can tell.
    gateway.freeze(true);
    await waitFor(() => disconnected.length >= 1, 'the heartbeat to give up', 5_000);
    expect(disconnected[0]).toMatchObject({ code: 1006, reason: 'heartbeat timeout', wasConnected: true });
    gateway.freeze(false);

    await waitFor(() => subscribed.some((s) => s.resubscribed), 're-subscription after the thaw', 15_000);
    await gateway.publish('news', 'thawed');
    await waitFor(() => received.includes('thawed'), 'the publication after the thaw');
  } finally {
    gateway.freeze(false);
    await gateway.stop();
  }
});

it('works from the CommonJS build too', async () => {
  const require = createRequire(import.meta.url);
  const cjs = require('../../dist/index.cjs') as typeof import('../../dist/index.js');
  const gateway = await Gateway.start();
  try {
    const client = new cjs.ShardcastClient({
      url: gateway.wsUrl,
      encoding: 'msgpack',
      WebSocket,
    });
    closeAfterTest(client);
    const received: unknown[] = [];
    await client.subscribe('news', (data) => received.push(data));
    await gateway.publish('news', [1, 'two', { three: 3 }]);
    await waitFor(() => received.length === 1, 'the publication');
    expect(received).toEqual([[1, 'two', { three: 3 }]]);
  } finally {
    await gateway.stop();
  }
});
