// End-to-end history and recovery (PROTOCOL.md 19) in Node.js against the real
// gateway binary, through the built package: a subscriber gets every publication
// exactly once and in order across a gateway SIGKILL and restart (two gateways
// on one redis-server, publishing steadily through the one that stays up), a
// restart of an in-process gateway loses history and says so with `stale`, a
// client that reconnects to the same gateway recovers what it missed, and the
// `latest`, `history()` and idempotent publish calls get the gateway's answers.
// Skipped, saying why, where the gateway binary predates history.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { NoHistoryError, type Encoding, type ReceivedMessage, type StaleEvent } from '../../dist/index.js';
import { Gateway, gatewayBinary, gatewaySupports, killAllGateways, restartOnSamePort, waitFor } from './gateway';
import { closeClients, makeClient, record } from './node-clients';
import { RedisServer } from './redis-server';
import { publishSteadily } from './steady-publisher';

const historySupported = gatewaySupports('--history-size');
if (!historySupported) {
  console.warn(`[recovery e2e] skipped: the gateway binary ${gatewayBinary()} has no --history-size flag (it predates history, issue #12)`);
}
const HISTORY = ['--history-size', '100'];

afterEach(() => {
  closeClients();
});

afterAll(async () => {
  await killAllGateways();
});

/** The numbers 1..n. */
function upTo(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i + 1);
}

describe.skipIf(!historySupported).each<Encoding>(['json', 'msgpack'])('with %s frames', (encoding) => {
  it('delivers every publication exactly once and in order across a gateway kill (two gateways on one Redis)', async () => {
    const redis = await RedisServer.start();
    const args = ['--redis', redis.url, ...HISTORY];
    let subscribed = await Gateway.start({ args });
    const publishing = await Gateway.start({ args });
    try {
      const client = makeClient(subscribed.wsUrl, { encoding });
      const resubscribed = record(client, 'subscribed');
      const stale: StaleEvent[] = [];
      const received: ReceivedMessage<number>[] = [];
      await client.subscribe<number>('feed', (_data, message) => received.push(message), { onStale: (e) => stale.push(e) });

      const count = 150;
      const publisher = publishSteadily(publishing, 'feed', count, 20);
      await waitFor(() => received.length >= 30, 'the first publications');
      // A crash, not a drain: no close frame, no retry hint; the client finds out from the socket.
      const port = subscribed.wsPort;
      await subscribed.kill();
      await waitFor(() => publisher.published >= received.length + 10, 'publications while the subscriber is away');
      subscribed = await Gateway.start({ wsPort: port, args });
      await publisher.done;
      await waitFor(() => received.length >= count, `all ${count} publications`, 20_000);

      expect(received.map((m) => m.data)).toEqual(upTo(count));
      const offsets = received.map((m) => m.offset ?? NaN);
      expect(offsets.every((offset, i) => i === 0 || offset === offsets[i - 1]! + 1)).toBe(true);
      expect(new Set(received.map((m) => m.epoch)).size).toBe(1);
      expect(resubscribed.filter((s) => s.resubscribed)).toEqual([{ channel: 'feed', resubscribed: true, recovered: true }]);
      expect(stale).toEqual([]);
    } finally {
      await Promise.all([subscribed.stop(), publishing.stop()]);
      await redis.stop();
    }
  });
});

describe.skipIf(!historySupported)('in-process history', () => {
  it('recovers what a client missed while it was away from the same gateway', async () => {
    const gateway = await Gateway.start({ args: HISTORY });
    try {
      const client = makeClient(gateway.wsUrl);
      const received: ReceivedMessage<number>[] = [];
      const stale = record(client, 'stale');
      const subscription = await client.subscribe<number>('feed', (_data, message) => received.push(message));
      await gateway.publish('feed', 1);
      await gateway.publish('feed', 2);
      await waitFor(() => received.length === 2, 'the first publications');
      client.close();
      await gateway.publish('feed', 3);
      await gateway.publish('feed', 4);
      const subscribed = record(client, 'subscribed');
      client.connect();
      await waitFor(() => subscribed.length === 1, 'the re-subscribe');
      expect(subscribed[0]).toEqual({ channel: 'feed', resubscribed: true, recovered: true });
      await gateway.publish('feed', 5);
      await waitFor(() => received.length === 5, 'the recovered and the live publications');
      expect(received.map((m) => [m.data, m.offset])).toEqual(upTo(5).map((n) => [n, n]));
      // Recovered ones come from history (seq 0), live ones are numbered.
      expect(received[2]?.seq).toBe(0);
      expect(received[4]?.seq).toBeGreaterThan(0);
      expect(subscription.position).toEqual({ offset: 5, epoch: received[0]?.epoch });
      expect(stale).toEqual([]);
    } finally {
      await gateway.stop();
    }
  });

  it('tells the subscriber its state is stale when a restart lost the history', async () => {
    let gateway = await Gateway.start({ args: HISTORY });
    try {
      const client = makeClient(gateway.wsUrl);
      const stale = record(client, 'stale');
      const received: unknown[] = [];
      await client.subscribe('feed', (data) => received.push(data));
      await gateway.publish('feed', 'before');
      await waitFor(() => received.length === 1, 'the first publication');
      gateway = await restartOnSamePort(gateway, HISTORY);
      await waitFor(() => stale.length === 1, 'the stale event', 15_000);
      expect(stale[0]).toEqual({ channel: 'feed', reason: 'epoch_changed', source: 'recover' });
      await gateway.publish('feed', 'after');
      await waitFor(() => received.length === 2, 'the publication after the restart');
      expect(received).toEqual(['before', 'after']);
    } finally {
      await gateway.stop();
    }
  });

  it('answers latest, history() and idempotent publishes', async () => {
    const gateway = await Gateway.start({ args: [...HISTORY, '--allow-client-publish'] });
    try {
      const client = makeClient(gateway.wsUrl);
      await waitFor(() => client.state === 'connected', 'the connection');
      const first = await client.publish('prices:eur', 1.08, { idempotencyKey: 'tick-1' });
      expect(first).toEqual({ offset: 1, epoch: expect.any(String), duplicate: false });
      const again = await client.publish('prices:eur', 1.08, { idempotencyKey: 'tick-1' });
      expect(again).toEqual({ offset: 1, epoch: first?.epoch, duplicate: true });
      await client.publish('prices:eur', 1.09);

      const latest: unknown[] = [];
      await client.subscribe('prices:eur', (data) => latest.push(data), { latest: true });
      await waitFor(() => latest.length === 1, 'the latest publication');
      expect(latest).toEqual([1.09]);

      await expect(client.history('prices:eur', { limit: 1 })).resolves.toEqual({
        channel: 'prices:eur',
        offset: 2,
        epoch: first?.epoch,
        publications: [{ offset: 2, data: 1.09 }],
        complete: false,
      });
      const since = await client.history('prices:eur', { since: { offset: 1, epoch: first!.epoch! } });
      expect(since).toMatchObject({ publications: [{ offset: 2, data: 1.09 }], complete: true });
    } finally {
      await gateway.stop();
    }
  });
});

it('gets NoHistoryError for history() of a channel without history', async () => {
  const gateway = await Gateway.start();
  try {
    const client = makeClient(gateway.wsUrl);
    await waitFor(() => client.state === 'connected', 'the connection');
    const error = await client.history('news').catch((e: unknown) => e);
    if (!historySupported) {
      // A gateway before history does not know the operation, or knows it only to refuse it.
      expect(['unknown_op', 'no_history']).toContain((error as { code?: string }).code);
      return;
    }
    expect(error).toBeInstanceOf(NoHistoryError);
    expect(error).toMatchObject({ code: 'no_history', channel: 'news' });
  } finally {
    await gateway.stop();
  }
});
