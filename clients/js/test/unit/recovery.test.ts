// History and recovery on the client side (PROTOCOL.md 19.7), over the scripted
// WebSocket: the position kept per channel and sent as `recover` on every
// re-subscribe, recovered publications through the same handler, once each and
// in order, duplicates and old offsets dropped, the `stale` event (client,
// subscription and `onStale`) on `recovered: false` and on `gap`, `latest`,
// idempotent publishes and `history()`, with the frames matching the vectors.
import { readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  BrokerTimeoutError,
  NoHistoryError,
  type ReceivedMessage,
  type StaleEvent,
} from '../../src/index';
import { FakeWebSocket } from './fake-websocket';
import { eventsNamed, flush, scriptedClients } from './scripted-client';

const { makeClient, connectedClient } = scriptedClients();

const clientVectors = JSON.parse(
  readFileSync(new URL('../../../../proto/vectors/client_frames.json', import.meta.url), 'utf8'),
) as { name: string; value: Record<string, unknown> }[];

/** A client frame vector's value, without its request id (the client picks its own). */
function vectorWithoutId(name: string): Record<string, unknown> {
  const vector = clientVectors.find((v) => v.name === name);
  if (!vector) throw new Error(`no client frame vector ${name}`);
  const { id: _id, ...rest } = vector.value;
  return rest;
}

/** The newest frame with this op, without its id. */
function lastWithoutId(socket: FakeWebSocket, op: string): Record<string, unknown> {
  const frames = socket.framesWithOp(op);
  const { id: _id, ...rest } = frames[frames.length - 1] ?? {};
  return rest;
}

function lastId(socket: FakeWebSocket, op: string): unknown {
  const frames = socket.framesWithOp(op);
  return frames[frames.length - 1]?.id;
}

function message(channel: string, seq: number, offset: number, epoch: string, data: unknown): Record<string, unknown> {
  return { type: 'message', channel, seq, offset, epoch, data };
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
});

/** A client subscribed to `news`, with the messages its handler got and its stale events. */
async function subscribedToNews(ack: Record<string, unknown> = { offset: 40, epoch: 'q7Bf2' }, options = {}) {
  const made = makeClient();
  await flush();
  const first = FakeWebSocket.last;
  first.accept();
  const received: ReceivedMessage[] = [];
  const stale: StaleEvent[] = [];
  const subscribing = made.client.subscribe('news', (_data, m) => received.push(m), {
    onStale: (event) => stale.push(event),
    ...options,
  });
  first.receive({ type: 'ack', id: lastId(first, 'subscribe'), ...ack });
  const subscription = await subscribing;
  /** Drops the connection and welcomes the next one; returns its socket. */
  const reconnect = async (): Promise<FakeWebSocket> => {
    const before = FakeWebSocket.last;
    before.serverClose(1006, '');
    // Until the backoff opens the next socket, which is welcomed at once (before its connect timeout).
    for (let waited = 0; FakeWebSocket.last === before && waited < 60_000; waited += 50) {
      await vi.advanceTimersByTimeAsync(50);
    }
    const next = FakeWebSocket.last;
    expect(next).not.toBe(before);
    next.accept();
    return next;
  };
  return { ...made, first, received, stale, subscription, reconnect };
}

describe('recover on re-subscribe', () => {
  it('sends no recover on the first subscribe, then the last delivered position on every re-subscribe', async () => {
    const { client, first, received, subscription, reconnect } = await subscribedToNews();
    expect(first.framesWithOp('subscribe')[0]).toEqual({ op: 'subscribe', id: expect.any(Number), channel: 'news' });
    first.receive(message('news', 1, 41, 'q7Bf2', 'a'));
    expect(received.map((m) => [m.data, m.offset, m.epoch])).toEqual([['a', 41, 'q7Bf2']]);
    expect(subscription.position).toEqual({ offset: 41, epoch: 'q7Bf2' });

    const second = await reconnect();
    // The vector's frame: built by the client itself, from the message it delivered last.
    expect(lastWithoutId(second, 'subscribe')).toEqual(vectorWithoutId('subscribe_recover'));
    expect(second.sent.at(-1)).toBe(
      JSON.stringify({ op: 'subscribe', id: lastId(second, 'subscribe'), channel: 'news', recover: { offset: 41, epoch: 'q7Bf2' } }),
    );
    second.receive({ type: 'ack', id: lastId(second, 'subscribe'), offset: 41, epoch: 'q7Bf2', recovered: true });
    second.receive(message('news', 1, 42, 'q7Bf2', 'b'));

    const third = await reconnect();
    expect(lastWithoutId(third, 'subscribe')).toMatchObject({ recover: { offset: 42, epoch: 'q7Bf2' } });
    client.close();
  });

  it('recovers from the ack position when no message came since', async () => {
    const { client, events, reconnect } = await subscribedToNews({ offset: 40, epoch: 'q7Bf2' });
    const second = await reconnect();
    expect(lastWithoutId(second, 'subscribe')).toEqual({ op: 'subscribe', channel: 'news', recover: { offset: 40, epoch: 'q7Bf2' } });
    second.receive({ type: 'ack', id: lastId(second, 'subscribe'), offset: 40, epoch: 'q7Bf2', recovered: true });
    expect(eventsNamed(events, 'subscribed').at(-1)).toEqual({ channel: 'news', resubscribed: true, recovered: true });
    // Still nothing delivered: the next re-subscribe recovers from the same place.
    const third = await reconnect();
    expect(lastWithoutId(third, 'subscribe')).toMatchObject({ recover: { offset: 40, epoch: 'q7Bf2' } });
    client.close();
  });

  it('delivers recovered publications through the handler once each, in order, before the live ones', async () => {
    const { client, first, received, stale, reconnect } = await subscribedToNews();
    first.receive(message('news', 1, 41, 'q7Bf2', 'a'));
    const second = await reconnect();
    second.receive({ type: 'ack', id: lastId(second, 'subscribe'), offset: 44, epoch: 'q7Bf2', recovered: true });
    second.receive(message('news', 0, 42, 'q7Bf2', 'b'));
    second.receive(message('news', 0, 43, 'q7Bf2', 'c'));
    second.receive(message('news', 0, 44, 'q7Bf2', 'd'));
    second.receive(message('news', 1, 45, 'q7Bf2', 'e'));
    expect(received.map((m) => [m.offset, m.seq, m.data])).toEqual([
      [41, 1, 'a'],
      [42, 0, 'b'],
      [43, 0, 'c'],
      [44, 0, 'd'],
      [45, 1, 'e'],
    ]);
    expect(stale).toEqual([]);
    client.close();
  });

  it('drops a message whose offset is at or below the last delivered one in its epoch', async () => {
    const { client, first, received, reconnect } = await subscribedToNews();
    first.receive(message('news', 1, 41, 'q7Bf2', 'a'));
    first.receive(message('news', 2, 41, 'q7Bf2', 'a again'));
    first.receive(message('news', 3, 39, 'q7Bf2', 'old'));
    first.receive(message('news', 4, 42, 'q7Bf2', 'b'));
    const second = await reconnect();
    second.receive({ type: 'ack', id: lastId(second, 'subscribe'), offset: 43, epoch: 'q7Bf2', recovered: true });
    second.receive(message('news', 0, 42, 'q7Bf2', 'b again'));
    second.receive(message('news', 0, 43, 'q7Bf2', 'c'));
    second.receive(message('news', 1, 43, 'q7Bf2', 'c again'));
    // Another epoch is another history: offset 1 of it is new.
    second.receive(message('news', 2, 1, 'Zz9', 'fresh'));
    expect(received.map((m) => m.data)).toEqual(['a', 'b', 'c', 'fresh']);
    client.close();
  });

  it('keeps v1 behaviour on a channel without history: no position, no recover, every message delivered', async () => {
    const { client, first, received, stale, subscription, reconnect } = await subscribedToNews({});
    first.receive({ type: 'message', channel: 'news', seq: 1, data: 'x' });
    first.receive({ type: 'message', channel: 'news', seq: 1, data: 'x' });
    expect(received).toEqual([
      { channel: 'news', seq: 1, data: 'x' },
      { channel: 'news', seq: 1, data: 'x' },
    ]);
    expect(subscription.position).toBeUndefined();
    const second = await reconnect();
    expect(lastWithoutId(second, 'subscribe')).toEqual({ op: 'subscribe', channel: 'news' });
    second.ackSubscribes();
    expect(stale).toEqual([]);
    client.close();
  });

  it('forgets the position of a channel the application unsubscribed', async () => {
    const { client, first, subscription } = await subscribedToNews();
    first.receive(message('news', 1, 41, 'q7Bf2', 'a'));
    const unsubscribed = subscription.unsubscribe();
    first.receive({ type: 'ack', id: lastId(first, 'unsubscribe') });
    await unsubscribed;
    void client.subscribe('news', () => undefined);
    expect(lastWithoutId(first, 'subscribe')).toEqual({ op: 'subscribe', channel: 'news' });
    client.close();
  });
});

describe('stale', () => {
  it('fires on recovered: false with the reason, and restarts from the ack position', async () => {
    const { client, events, first, received, stale, subscription, reconnect } = await subscribedToNews();
    const onSubscription: StaleEvent[] = [];
    subscription.on('stale', (event) => onSubscription.push(event));
    first.receive(message('news', 1, 41, 'q7Bf2', 'a'));

    const second = await reconnect();
    second.receive({ type: 'ack', id: lastId(second, 'subscribe'), offset: 900, epoch: 'q7Bf2', recovered: false });
    const tooFar = { channel: 'news', reason: 'too_far', source: 'recover' };
    expect(stale).toEqual([tooFar]);
    expect(onSubscription).toEqual([tooFar]);
    expect(eventsNamed(events, 'stale')).toEqual([tooFar]);
    expect(eventsNamed(events, 'subscribed').at(-1)).toEqual({ channel: 'news', resubscribed: true, recovered: false });
    expect(subscription.position).toEqual({ offset: 900, epoch: 'q7Bf2' });
    second.receive(message('news', 1, 901, 'q7Bf2', 'live'));
    expect(received.map((m) => m.data)).toEqual(['a', 'live']);

    const third = await reconnect();
    expect(lastWithoutId(third, 'subscribe')).toMatchObject({ recover: { offset: 901, epoch: 'q7Bf2' } });
    third.receive({ type: 'ack', id: lastId(third, 'subscribe'), offset: 0, epoch: 'New1', recovered: false });
    expect(stale.at(-1)).toEqual({ channel: 'news', reason: 'epoch_changed', source: 'recover' });
    third.receive(message('news', 1, 1, 'New1', 'first of the new epoch'));
    expect(received.map((m) => m.data)).toEqual(['a', 'live', 'first of the new epoch']);

    const fourth = await reconnect();
    fourth.receive({ type: 'ack', id: lastId(fourth, 'subscribe'), recovered: false });
    expect(stale.at(-1)).toEqual({ channel: 'news', reason: 'no_history', source: 'recover' });
    // History was turned off: the channel goes on without positions.
    expect(subscription.position).toBeUndefined();
    const fifth = await reconnect();
    expect(lastWithoutId(fifth, 'subscribe')).toEqual({ op: 'subscribe', channel: 'news' });
    client.close();
  });

  it('fires on a gap frame, with its reason, after the gap event', async () => {
    const { client, events, first, stale } = await subscribedToNews();
    first.receive({ type: 'gap', channel: 'news', reason: 'epoch_changed' });
    first.receive({ type: 'gap', channel: 'news' });
    first.receive({ type: 'gap', channel: 'news', reason: 'from_the_future' });
    expect(eventsNamed(events, 'gap')).toEqual([
      { channel: 'news', reason: 'epoch_changed' },
      { channel: 'news' },
      { channel: 'news', reason: 'unknown' },
    ]);
    const expected = ['epoch_changed', 'unknown', 'unknown'].map((reason) => ({ channel: 'news', reason, source: 'gap' }));
    expect(stale).toEqual(expected);
    expect(eventsNamed(events, 'stale')).toEqual(expected);
    expect(client.state).toBe('connected');
    client.close();
  });
});

describe('latest', () => {
  it('asks for the latest publication on subscribe, and delivers it', async () => {
    const { client, first, received, subscription, reconnect } = await subscribedToNews({ offset: 1200, epoch: 'q7Bf2' }, { latest: true });
    expect(first.framesWithOp('subscribe')[0]).toMatchObject({ channel: 'news', latest: true });
    first.receive(message('news', 0, 1200, 'q7Bf2', 1.0825));
    expect(received.map((m) => m.data)).toEqual([1.0825]);
    expect(subscription.position).toEqual({ offset: 1200, epoch: 'q7Bf2' });
    // Recovering instead: no `latest`.
    const second = await reconnect();
    expect(lastWithoutId(second, 'subscribe')).toEqual({ op: 'subscribe', channel: 'news', recover: { offset: 1200, epoch: 'q7Bf2' } });
    client.close();
  });

  it('encodes as the vector does', async () => {
    const { client, socket } = await connectedClient();
    void client.subscribe('prices:eur', () => undefined, { latest: true });
    expect(lastWithoutId(socket, 'subscribe')).toEqual(vectorWithoutId('subscribe_latest'));
    client.close();
  });

  it('recovers the latest publication too when the connection drops before it arrives', async () => {
    const { client, reconnect } = await subscribedToNews({ offset: 1200, epoch: 'q7Bf2' }, { latest: true });
    const second = await reconnect();
    expect(lastWithoutId(second, 'subscribe')).toMatchObject({ recover: { offset: 1199, epoch: 'q7Bf2' } });
    client.close();
  });
});

describe('publish with an idempotency key', () => {
  it('sends the key and resolves with the offset, epoch and duplicate flag', async () => {
    const { client, socket } = await connectedClient();
    const published = client.publish('news', 'hi', { idempotencyKey: 'order-7781:shipped' });
    expect(lastWithoutId(socket, 'publish')).toEqual(vectorWithoutId('publish_idempotent'));
    socket.receive({ type: 'ack', id: lastId(socket, 'publish'), offset: 45, epoch: 'q7Bf2', duplicate: true });
    await expect(published).resolves.toEqual({ offset: 45, epoch: 'q7Bf2', duplicate: true });
    const again = client.publish('news', 'hi');
    socket.receive({ type: 'ack', id: lastId(socket, 'publish'), offset: 46, epoch: 'q7Bf2' });
    await expect(again).resolves.toEqual({ offset: 46, epoch: 'q7Bf2', duplicate: false });
    client.close();
  });

  it('refuses a malformed key before sending anything', async () => {
    const { client, socket } = await connectedClient();
    for (const key of ['', 'has space', 'x'.repeat(65)]) {
      await expect(client.publish('news', 1, { idempotencyKey: key })).rejects.toBeInstanceOf(TypeError);
    }
    expect(socket.framesWithOp('publish')).toHaveLength(0);
    client.close();
  });

  it('rejects with a BrokerTimeoutError when the outcome is unknown', async () => {
    const { client, socket } = await connectedClient();
    const published = client.publish('news', 1, { idempotencyKey: 'k1' });
    socket.receive({ type: 'error', id: lastId(socket, 'publish'), code: 'timeout', message: 'outcome unknown' });
    const error = await published.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BrokerTimeoutError);
    expect(error).toMatchObject({ code: 'timeout', channel: 'news' });
    client.close();
  });
});

describe('history()', () => {
  it('reads the latest publications', async () => {
    const { client, socket } = await connectedClient();
    const read = client.history('prices:eur', { limit: 1 });
    expect(lastWithoutId(socket, 'history')).toEqual(vectorWithoutId('history_latest'));
    socket.receive({
      type: 'history',
      id: lastId(socket, 'history'),
      channel: 'prices:eur',
      offset: 1200,
      epoch: 'q7Bf2',
      publications: [{ offset: 1200, data: 1.0825 }],
      complete: false,
    });
    await expect(read).resolves.toEqual({
      channel: 'prices:eur',
      offset: 1200,
      epoch: 'q7Bf2',
      publications: [{ offset: 1200, data: 1.0825 }],
      complete: false,
    });
    client.close();
  });

  it('reads since a position', async () => {
    const { client, socket } = await connectedClient();
    const read = client.history('news', { since: { offset: 41, epoch: 'q7Bf2' } });
    expect(lastWithoutId(socket, 'history')).toEqual(vectorWithoutId('history_since'));
    socket.receive({
      type: 'history',
      id: lastId(socket, 'history'),
      channel: 'news',
      offset: 42,
      epoch: 'q7Bf2',
      publications: [{ offset: 42, data: 'b' }],
      complete: true,
    });
    await expect(read).resolves.toMatchObject({ publications: [{ offset: 42, data: 'b' }], complete: true });
    client.close();
  });

  it('rejects with a NoHistoryError on a channel without history', async () => {
    const { client, socket } = await connectedClient();
    const read = client.history('news');
    expect(lastWithoutId(socket, 'history')).toEqual({ op: 'history', channel: 'news' });
    socket.receive({ type: 'error', id: lastId(socket, 'history'), code: 'no_history', message: 'news keeps no history' });
    const error = await read.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NoHistoryError);
    expect(error).toMatchObject({ code: 'no_history', channel: 'news' });
    client.close();
  });
});
