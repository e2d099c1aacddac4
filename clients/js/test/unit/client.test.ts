// The client's state machine over a scripted WebSocket with fake timers:
// connecting and welcome, subscriptions and their re-subscription after a
// reconnect, the reconnect schedule for each kind of close, the heartbeat, the
// connect timeout, the token hook, requests and their typed errors.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  ClientClosedError,
  ConnectionLostError,
  HandlerError,
  HandshakeRejectedError,
  InvalidChannelError,
  MessageTooLargeError,
  NotConnectedError,
  NoWebSocketError,
  RequestTimeoutError,
  ServerError,
  ShardcastClient,
  SubscriptionCancelledError,
  TokenProviderError,
} from '../../src/index';
import { FakeWebSocket } from './fake-websocket';
import { eventsNamed, flush, scriptedClients } from './scripted-client';

const { makeClient, startedClient, connectedClient } = scriptedClients();

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
});

describe('connecting', () => {
  it('goes idle → connecting → connected on the welcome', async () => {
    const { client, events } = makeClient();
    await flush();
    expect(client.state).toBe('connecting');
    const socket = FakeWebSocket.last;
    expect(socket.url).toBe('ws://gateway.test/ws');
    expect(socket.protocols).toEqual(['shardcast.v1.json']);
    expect(socket.binaryType).toBe('arraybuffer');
    socket.open();
    expect(client.state).toBe('connecting');
    socket.receive({ type: 'welcome', version: 1, node: 'n1', shard: 1, ping_interval_ms: 25_000 });
    expect(client.state).toBe('connected');
    expect(client.welcome).toEqual({ type: 'welcome', version: 1, node: 'n1', shard: 1, ping_interval_ms: 25_000 });
    expect(eventsNamed(events, 'state').map((s) => s.state)).toEqual(['connecting', 'connected']);
    expect(eventsNamed(events, 'connecting')).toEqual([{ attempt: 0 }]);
    expect(eventsNamed(events, 'connected')[0]?.welcome.node).toBe('n1');
    client.close();
  });

  it('waits for connect() with autoConnect: false', async () => {
    const { client } = makeClient({ autoConnect: false });
    await flush();
    expect(client.state).toBe('idle');
    expect(FakeWebSocket.instances).toHaveLength(0);
    client.connect();
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(1);
    client.close();
  });

  it('offers the MessagePack subprotocol and sends binary frames', async () => {
    const { client, socket } = await startedClient({ encoding: 'msgpack' });
    expect(socket.protocols).toEqual(['shardcast.v1.msgpack']);
    socket.accept();
    const subscribed = client.subscribe('news', () => undefined);
    expect(socket.sent[0]).toBeInstanceOf(Uint8Array);
    expect(socket.frames()).toEqual([{ op: 'subscribe', id: expect.any(Number), channel: 'news' }]);
    socket.ackSubscribes();
    await expect(subscribed).resolves.toMatchObject({ channel: 'news', active: true });
    client.close();
  });

  it('leaves no timer running when a connected listener closes the client', async () => {
    const { client } = makeClient();
    const subscribed = client.subscribe('news', () => undefined);
    client.once('connected', () => client.close());
    await flush();
    const socket = FakeWebSocket.last;
    socket.accept();
    expect(client.state).toBe('closed');
    expect(socket.frames()).toEqual([]);
    await expect(subscribed).rejects.toBeInstanceOf(ClientClosedError);
    // A Node.js process with nothing else to do exits at once.
    expect(vi.getTimerCount()).toBe(0);
  });

  it('explains a missing WebSocket implementation', () => {
    const saved = (globalThis as { WebSocket?: unknown }).WebSocket;
    delete (globalThis as { WebSocket?: unknown }).WebSocket;
    try {
      expect(() => new ShardcastClient({ url: 'ws://x/ws' })).toThrow(NoWebSocketError);
    } finally {
      if (saved !== undefined) (globalThis as { WebSocket?: unknown }).WebSocket = saved;
    }
  });

  it('stops on an HTTP refusal that means the request is wrong, where the platform names the status', async () => {
    const { client, events } = makeClient();
    await flush();
    FakeWebSocket.last.onerror?.({ message: 'Unexpected server response: 404' });
    FakeWebSocket.last.serverClose(1006, '');
    expect(client.state).toBe('closed');
    const [error] = eventsNamed(events, 'error');
    expect(error).toBeInstanceOf(HandshakeRejectedError);
    expect(error).toMatchObject({ status: 404 });
    expect(eventsNamed(events, 'disconnected')).toMatchObject([{ wasConnected: false, willReconnect: false }]);
  });

  it('backs off after a 503 refusal (overload, draining)', async () => {
    const { client } = makeClient();
    await flush();
    FakeWebSocket.last.onerror?.({ message: 'Unexpected server response: 503' });
    FakeWebSocket.last.serverClose(1006, '');
    expect(client.state).toBe('reconnecting');
    client.close();
  });

  it('does not reconnect after a malformed URL', async () => {
    class ThrowingWebSocket extends FakeWebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols);
        throw new SyntaxError('invalid url');
      }
    }
    const { client, events } = makeClient({ WebSocket: ThrowingWebSocket });
    await flush();
    expect(client.state).toBe('closed');
    expect(eventsNamed(events, 'error')).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });
});

describe('token provider', () => {
  it('is called before every connect and its token goes into a connect frame, never the URL', async () => {
    let calls = 0;
    const { client } = makeClient({ url: 'ws://gateway.test/ws?v=1', token: async () => `tok ${++calls}` });
    await flush();
    expect(FakeWebSocket.last.url).toBe('ws://gateway.test/ws?v=1');
    FakeWebSocket.last.open();
    expect(FakeWebSocket.last.framesWithOp('connect')).toMatchObject([{ token: 'tok 1' }]);
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(calls).toBe(2);
    expect(FakeWebSocket.last.url).toBe('ws://gateway.test/ws?v=1');
    FakeWebSocket.last.open();
    expect(FakeWebSocket.last.framesWithOp('connect')).toMatchObject([{ token: 'tok 2' }]);
    client.close();
  });

  it('connects anonymously, without a connect frame, when it returns none', async () => {
    const tokens = [null, 'abc'];
    const { client } = await connectedClient({ token: () => tokens.shift() });
    expect(client.state).toBe('connected');
    expect(FakeWebSocket.last.frames()).toEqual([]);
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    FakeWebSocket.last.open();
    expect(FakeWebSocket.last.frames()).toMatchObject([{ op: 'connect', token: 'abc' }]);
    client.close();
  });

  it('counts a failing provider as a failed attempt and retries with backoff', async () => {
    let calls = 0;
    const { client, events } = makeClient({
      token: () => {
        calls++;
        if (calls === 1) throw new Error('auth server down');
        return Promise.resolve('ok');
      },
    });
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(0);
    const [error] = eventsNamed(events, 'error');
    expect(error).toBeInstanceOf(TokenProviderError);
    expect(eventsNamed(events, 'reconnecting')).toMatchObject([{ attempt: 1, delayMs: 250 }]);
    await vi.advanceTimersByTimeAsync(250);
    FakeWebSocket.last.open();
    expect(FakeWebSocket.last.framesWithOp('connect')).toMatchObject([{ token: 'ok' }]);
    client.close();
  });

  it('does not open a socket when closed while the token is being fetched', async () => {
    let release: (token: string) => void = () => undefined;
    const { client } = makeClient({ token: () => new Promise<string>((resolve) => (release = resolve)) });
    await flush();
    client.close();
    release('late');
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(0);
    expect(client.state).toBe('closed');
  });
});

describe('subscriptions', () => {
  it('subscribes after the welcome and delivers messages to the handler', async () => {
    const { client, events } = makeClient();
    const received: unknown[] = [];
    const subscribed = client.subscribe<{ n: number }>('news', (data, message) => received.push([data.n, message.seq]));
    await flush();
    const socket = FakeWebSocket.last;
    socket.accept();
    const [frame] = socket.framesWithOp('subscribe');
    expect(frame).toEqual({ op: 'subscribe', id: expect.any(Number), channel: 'news' });
    socket.receive({ type: 'ack', id: frame?.id });
    const subscription = await subscribed;
    expect(subscription.active).toBe(true);
    expect(eventsNamed(events, 'subscribed')).toEqual([{ channel: 'news', resubscribed: false }]);
    socket.receive({ type: 'message', channel: 'news', seq: 1, data: { n: 10 } });
    socket.receive({ type: 'message', channel: 'other', seq: 1, data: { n: 99 } });
    socket.receive({ type: 'message', channel: 'news', seq: 2, data: { n: 11 } });
    expect(received).toEqual([
      [10, 1],
      [11, 2],
    ]);
    client.close();
  });

  it('shares one gateway subscription among handlers and unsubscribes with the last', async () => {
    const { client, socket } = await connectedClient();
    const a: unknown[] = [];
    const b: unknown[] = [];
    const subA = client.subscribe('news', (d) => a.push(d));
    const subB = client.subscribe('news', (d) => b.push(d));
    expect(socket.framesWithOp('subscribe')).toHaveLength(1);
    socket.ackSubscribes();
    const [first, second] = await Promise.all([subA, subB]);
    socket.receive({ type: 'message', channel: 'news', seq: 1, data: 1 });
    await first.unsubscribe();
    expect(first.active).toBe(false);
    expect(socket.framesWithOp('unsubscribe')).toHaveLength(0);
    socket.receive({ type: 'message', channel: 'news', seq: 2, data: 2 });
    const last = second.unsubscribe();
    const [unsub] = socket.framesWithOp('unsubscribe');
    expect(unsub).toEqual({ op: 'unsubscribe', id: expect.any(Number), channel: 'news' });
    socket.receive({ type: 'ack', id: unsub?.id });
    await last;
    socket.receive({ type: 'message', channel: 'news', seq: 3, data: 3 });
    expect(a).toEqual([1]);
    expect(b).toEqual([1, 2]);
    expect(client.subscribedChannels).toEqual([]);
    client.close();
  });

  it('refuses an invalid channel name before sending anything', async () => {
    const { client } = await connectedClient();
    await expect(client.subscribe('has space', () => undefined)).rejects.toBeInstanceOf(InvalidChannelError);
    await expect(client.subscribe('', () => undefined)).rejects.toMatchObject({ problem: 'empty' });
    expect(FakeWebSocket.last.sent).toHaveLength(0);
    client.close();
  });

  it('rejects with a ServerError carrying the code when the gateway refuses', async () => {
    const { client, socket } = await connectedClient();
    const subscribed = client.subscribe('news', () => undefined);
    const [frame] = socket.framesWithOp('subscribe');
    socket.receive({ type: 'error', id: frame?.id, code: 'too_many_channels', message: 'limit 128' });
    const error = await subscribed.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ServerError);
    expect(error).toMatchObject({ code: 'too_many_channels', channel: 'news', requestId: frame?.id });
    expect(client.subscribedChannels).toEqual([]);
    client.close();
  });

  it('re-subscribes every channel after a reconnect', async () => {
    const { client, events } = makeClient();
    await flush();
    const first = FakeWebSocket.last;
    first.accept();
    const news: unknown[] = [];
    const subs = Promise.all([client.subscribe('news', (d) => news.push(d)), client.subscribe('chat:1', () => undefined)]);
    first.ackSubscribes();
    await subs;
    first.serverClose(1006, '');
    expect(client.state).toBe('reconnecting');
    await vi.advanceTimersByTimeAsync(250);
    const second = FakeWebSocket.last;
    expect(second).not.toBe(first);
    second.accept();
    expect(
      second
        .framesWithOp('subscribe')
        .map((f) => f.channel)
        .sort(),
    ).toEqual(['chat:1', 'news']);
    second.ackSubscribes();
    expect(eventsNamed(events, 'subscribed').filter((s) => s.resubscribed)).toHaveLength(2);
    second.receive({ type: 'message', channel: 'news', seq: 1, data: 'again' });
    expect(news).toEqual(['again']);
    client.close();
  });

  it('sends a subscription made while disconnected once connected', async () => {
    const { client } = makeClient();
    await flush();
    FakeWebSocket.last.serverClose(1006);
    const subscribed = client.subscribe('late', () => undefined);
    await vi.advanceTimersByTimeAsync(250);
    const socket = FakeWebSocket.last;
    socket.accept();
    expect(socket.framesWithOp('subscribe').map((f) => f.channel)).toEqual(['late']);
    socket.ackSubscribes();
    await expect(subscribed).resolves.toMatchObject({ channel: 'late' });
    client.close();
  });

  it('cancels a subscribe that is unsubscribed before its ack, and keeps the wire in order', async () => {
    const { client, socket } = await connectedClient();
    const subscribed = client.subscribe('news', () => undefined);
    const unsubscribed = client.unsubscribe('news');
    await expect(subscribed).rejects.toBeInstanceOf(SubscriptionCancelledError);
    // Subscribing again at once must not overtake the unsubscribe, which waits for the first ack.
    const again = client.subscribe('news', () => undefined);
    expect(socket.frames().map((f) => f.op)).toEqual(['subscribe']);
    socket.receive({ type: 'ack', id: socket.frames()[0]?.id });
    expect(socket.frames().map((f) => f.op)).toEqual(['subscribe', 'unsubscribe']);
    socket.receive({ type: 'ack', id: socket.frames()[1]?.id });
    await unsubscribed;
    await flush();
    expect(socket.frames().map((f) => f.op)).toEqual(['subscribe', 'unsubscribe', 'subscribe']);
    let settled = false;
    void again.then(() => (settled = true));
    await flush();
    expect(settled).toBe(false);
    socket.receive({ type: 'ack', id: socket.frames()[2]?.id });
    await expect(again).resolves.toMatchObject({ channel: 'news', active: true });
    client.close();
  });

  it('retries a subscribe refused as unavailable, with backoff', async () => {
    const { client, events, socket } = await connectedClient();
    const subscribed = client.subscribe('news', () => undefined);
    socket.receive({ type: 'error', id: socket.frames()[0]?.id, code: 'unavailable', message: 'broker down' });
    await vi.advanceTimersByTimeAsync(249);
    expect(socket.framesWithOp('subscribe')).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    const retries = socket.framesWithOp('subscribe');
    expect(retries).toHaveLength(2);
    socket.receive({ type: 'ack', id: retries[1]?.id });
    await expect(subscribed).resolves.toMatchObject({ channel: 'news' });
    expect(eventsNamed(events, 'error')).toHaveLength(0);
    client.close();
  });

  it('ignores frame types from a newer protocol revision', async () => {
    const { client, events, socket } = await startedClient();
    socket.open();
    socket.receive({ type: 'teleport', who: 'someone' });
    socket.receive({ type: 'welcome', version: 1, node: 'n', shard: 0, ping_interval_ms: 25_000 });
    socket.receive({ type: 'teleport', who: 'someone' });
    expect(client.state).toBe('connected');
    expect(eventsNamed(events, 'error')).toHaveLength(0);
    client.close();
  });

  it('reports a gap frame as a gap event and stays connected', async () => {
    const { client, events, socket } = await startedClient();
    socket.open();
    socket.receive({ type: 'welcome', version: 1, node: 'n', shard: 0, ping_interval_ms: 25_000 });
    socket.receive({ type: 'gap', channel: 'news' });
    expect(eventsNamed(events, 'gap')).toEqual([{ channel: 'news' }]);
    expect(client.state).toBe('connected');
    expect(eventsNamed(events, 'error')).toHaveLength(0);
    client.close();
  });

  it('reports a throwing handler and still calls the others', async () => {
    const { client, events, socket } = await connectedClient();
    const received: unknown[] = [];
    const subs = Promise.all([
      client.subscribe('news', () => {
        throw new Error('boom');
      }),
      client.subscribe('news', (d) => received.push(d)),
    ]);
    socket.ackSubscribes();
    await subs;
    socket.receive({ type: 'message', channel: 'news', seq: 1, data: 'x' });
    expect(received).toEqual(['x']);
    const [error] = eventsNamed(events, 'error');
    expect(error).toBeInstanceOf(HandlerError);
    expect((error as HandlerError & { cause: Error }).cause.message).toBe('boom');
    client.close();
  });

  it('reports a refused re-subscribe as an error event and deactivates the subscription', async () => {
    const { client, events } = await connectedClient();
    const subscribed = client.subscribe('news', () => undefined);
    FakeWebSocket.last.ackSubscribes();
    const subscription = await subscribed;
    FakeWebSocket.last.serverClose(1011, 'internal');
    await vi.advanceTimersByTimeAsync(250);
    const socket = FakeWebSocket.last;
    socket.accept();
    const [frame] = socket.framesWithOp('subscribe');
    socket.receive({ type: 'error', id: frame?.id, code: 'too_many_channels', message: 'limit' });
    expect(eventsNamed(events, 'error')).toMatchObject([{ code: 'too_many_channels', channel: 'news' }]);
    expect(subscription.active).toBe(false);
    client.close();
  });
});

describe('reconnecting', () => {
  it('backs off exponentially with jitter while connects keep failing', async () => {
    const { client, events } = makeClient({ reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 } });
    await flush();
    for (let i = 0; i < 6; i++) {
      FakeWebSocket.last.serverClose(1006, '');
      const delay = eventsNamed(events, 'reconnecting').at(-1)?.delayMs ?? 0;
      await vi.advanceTimersByTimeAsync(delay);
    }
    // random() is 0.5, so each delay is half the ceiling: 100, 200, 400, 800, 1000 (cap), 1000.
    expect(eventsNamed(events, 'reconnecting').map((r) => [r.attempt, r.delayMs])).toEqual([
      [1, 50],
      [2, 100],
      [3, 200],
      [4, 400],
      [5, 500],
      [6, 500],
    ]);
    expect(eventsNamed(events, 'connecting').map((c) => c.attempt)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(eventsNamed(events, 'disconnected').every((d) => !d.wasConnected && d.willReconnect)).toBe(true);
    client.close();
  });

  it('keeps backing off after connections that are dropped right after the welcome', async () => {
    const { client, events } = makeClient({ reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 } });
    await flush();
    for (let i = 0; i < 3; i++) {
      FakeWebSocket.last.accept();
      await vi.advanceTimersByTimeAsync(999);
      FakeWebSocket.last.serverClose(4000, 'slow consumer');
      await vi.advanceTimersByTimeAsync(eventsNamed(events, 'reconnecting').at(-1)?.delayMs ?? 0);
    }
    expect(eventsNamed(events, 'reconnecting').map((r) => r.attempt)).toEqual([1, 2, 3]);
    expect(eventsNamed(events, 'disconnected').every((d) => d.wasConnected)).toBe(true);
    client.close();
  });

  it('resets the backoff after a connection that stayed up for the cap', async () => {
    const { client, events } = makeClient({ reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 } });
    await flush();
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(50);
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(100);
    FakeWebSocket.last.accept();
    await vi.advanceTimersByTimeAsync(1_000);
    FakeWebSocket.last.serverClose(1006);
    expect(eventsNamed(events, 'reconnecting').map((r) => [r.attempt, r.delayMs])).toEqual([
      [1, 50],
      [2, 100],
      [1, 50],
    ]);
    client.close();
  });

  it('does not reconnect after a policy violation', async () => {
    const { client, events } = makeClient();
    const subscribed = client.subscribe('news', () => undefined);
    await flush();
    FakeWebSocket.last.accept();
    FakeWebSocket.last.serverClose(1008, 'bad token');
    expect(client.state).toBe('closed');
    expect(eventsNamed(events, 'disconnected')).toEqual([
      { code: 1008, reason: 'bad token', wasConnected: true, willReconnect: false },
    ]);
    expect(eventsNamed(events, 'closed')).toEqual([{ code: 1008, reason: 'bad token' }]);
    const error = await subscribed.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ClientClosedError);
    expect(error).toMatchObject({ code: 1008 });
    await vi.advanceTimersByTimeAsync(120_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it('does not reconnect after message-too-big, protocol error or invalid payload', async () => {
    for (const code of [1009, 1002, 1007]) {
      FakeWebSocket.reset();
      const { client } = await connectedClient();
      FakeWebSocket.last.serverClose(code, '');
      expect(client.state).toBe('closed');
      await vi.advanceTimersByTimeAsync(60_000);
      expect(FakeWebSocket.instances).toHaveLength(1);
    }
  });

  it('waits the retry hint after "going away"', async () => {
    const { client, events } = await connectedClient();
    FakeWebSocket.last.serverClose(1001, 'going away; retry_ms=737');
    expect(eventsNamed(events, 'reconnecting')).toEqual([
      { attempt: 1, delayMs: 737, code: 1001, reason: 'going away; retry_ms=737', retryHintMs: 737 },
    ]);
    await vi.advanceTimersByTimeAsync(736);
    expect(FakeWebSocket.instances).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeWebSocket.instances).toHaveLength(2);
    client.close();
  });

  it('waits at least the retry hint after "try again later"', async () => {
    const { client, events } = await connectedClient();
    FakeWebSocket.last.serverClose(1013, 'overloaded; retry_ms=3000');
    expect(eventsNamed(events, 'reconnecting').at(-1)).toMatchObject({ delayMs: 3_000, retryHintMs: 3_000 });
    await vi.advanceTimersByTimeAsync(2_999);
    expect(FakeWebSocket.instances).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeWebSocket.instances).toHaveLength(2);
    client.close();
  });

  it('reconnects after slow-consumer and idle-timeout closes', async () => {
    const { client, events } = await connectedClient();
    FakeWebSocket.last.serverClose(4000, 'slow consumer');
    await vi.advanceTimersByTimeAsync(250);
    FakeWebSocket.last.accept();
    FakeWebSocket.last.serverClose(4001, 'idle timeout');
    // The second loss in a row: the backoff ceiling doubled.
    await vi.advanceTimersByTimeAsync(500);
    expect(FakeWebSocket.instances).toHaveLength(3);
    expect(eventsNamed(events, 'disconnected').map((d) => [d.code, d.willReconnect])).toEqual([
      [4000, true],
      [4001, true],
    ]);
    client.close();
  });

  it('gives up after maxAttempts', async () => {
    const { client, events } = makeClient({ reconnect: { maxAttempts: 2 } });
    await flush();
    for (let i = 0; i < 3; i++) {
      FakeWebSocket.last.serverClose(1006);
      await vi.advanceTimersByTimeAsync(10_000);
    }
    expect(FakeWebSocket.instances).toHaveLength(3);
    expect(client.state).toBe('closed');
    expect(eventsNamed(events, 'closed')).toHaveLength(1);
  });

  it('stays closed after a loss with reconnect: false', async () => {
    const { client } = await connectedClient({ reconnect: false });
    FakeWebSocket.last.serverClose(1001, 'going away; retry_ms=1');
    expect(client.state).toBe('closed');
  });

  it('connect() skips the rest of a reconnect wait', async () => {
    const { client } = await connectedClient();
    FakeWebSocket.last.serverClose(1013, 'retry_ms=60000');
    client.connect();
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(2);
    client.close();
  });
});

describe('timeouts and heartbeat', () => {
  it('gives up on a socket that brings no welcome within connectTimeoutMs', async () => {
    const { client, events, socket } = await startedClient({ connectTimeoutMs: 2_000 });
    socket.open();
    await vi.advanceTimersByTimeAsync(2_000);
    expect(socket.closedByClient).toBeDefined();
    expect(eventsNamed(events, 'disconnected')).toEqual([
      { code: 1006, reason: 'connect timeout', wasConnected: false, willReconnect: true },
    ]);
    await vi.advanceTimersByTimeAsync(250);
    expect(FakeWebSocket.instances).toHaveLength(2);
    client.close();
  });

  it('pings at the welcome’s interval and keeps a connection that answers', async () => {
    const { client, socket } = await connectedClient({}, 1_000);
    for (let i = 1; i <= 3; i++) {
      await vi.advanceTimersByTimeAsync(1_000);
      const pings = socket.framesWithOp('ping');
      expect(pings).toHaveLength(i);
      socket.receive({ type: 'pong', id: pings.at(-1)?.id });
    }
    expect(client.state).toBe('connected');
    client.close();
  });

  it('detects a dead connection that never closes and reconnects', async () => {
    const { client, events } = makeClient({ heartbeat: { intervalMs: 1_000, timeoutMs: 500 } });
    const subscribed = client.subscribe('news', () => undefined);
    await flush();
    const dead = FakeWebSocket.last;
    dead.accept(25_000);
    dead.ackSubscribes();
    await subscribed;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(dead.framesWithOp('ping')).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(499);
    expect(client.state).toBe('connected');
    await vi.advanceTimersByTimeAsync(1);
    expect(dead.closedByClient).toBeDefined();
    expect(eventsNamed(events, 'disconnected')).toEqual([
      { code: 1006, reason: 'heartbeat timeout', wasConnected: true, willReconnect: true },
    ]);
    expect(client.state).toBe('reconnecting');
    // A late close event from the dead socket must not disturb the new connection.
    await vi.advanceTimersByTimeAsync(250);
    const fresh = FakeWebSocket.last;
    fresh.accept();
    dead.serverClose(1006);
    expect(client.state).toBe('connected');
    expect(fresh.framesWithOp('subscribe').map((f) => f.channel)).toEqual(['news']);
    client.close();
  });

  it('terminates a dead socket at once where the platform can (the ws package)', async () => {
    class TerminableWebSocket extends FakeWebSocket {
      terminated = false;
      terminate(): void {
        this.terminated = true;
        this.readyState = 3;
      }
    }
    const { client } = makeClient({ WebSocket: TerminableWebSocket, heartbeat: { intervalMs: 1_000, timeoutMs: 500 } });
    await flush();
    const socket = FakeWebSocket.last as TerminableWebSocket;
    socket.accept();
    await vi.advanceTimersByTimeAsync(1_500);
    expect(socket.terminated).toBe(true);
    expect(socket.closedByClient).toBeUndefined();
    expect(client.state).toBe('reconnecting');
    client.close();
  });

  it('counts any frame as a sign of life', async () => {
    const { client, socket } = await connectedClient({ heartbeat: { intervalMs: 1_000, timeoutMs: 500 } });
    await vi.advanceTimersByTimeAsync(1_000);
    socket.receive({ type: 'message', channel: 'x', seq: 1, data: null });
    await vi.advanceTimersByTimeAsync(600);
    expect(client.state).toBe('connected');
    client.close();
  });

  it('does not ping a connection that keeps receiving', async () => {
    const { client, socket } = await connectedClient({}, 1_000);
    for (let seq = 1; seq <= 20; seq++) {
      await vi.advanceTimersByTimeAsync(400);
      socket.receive({ type: 'message', channel: 'x', seq, data: seq });
    }
    expect(socket.framesWithOp('ping')).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(socket.framesWithOp('ping')).toHaveLength(1);
    client.close();
  });

  it('can be turned off', async () => {
    const { client, socket } = await connectedClient({ heartbeat: false }, 1_000);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(socket.framesWithOp('ping')).toHaveLength(0);
    expect(client.state).toBe('connected');
    client.close();
  });
});

describe('requests', () => {
  it('publishes and resolves on the ack', async () => {
    const { client, socket } = await connectedClient();
    const published = client.publish('news', { text: 'hi' });
    const [frame] = socket.framesWithOp('publish');
    expect(frame).toEqual({ op: 'publish', id: expect.any(Number), channel: 'news', data: { text: 'hi' } });
    socket.receive({ type: 'ack', id: frame?.id });
    await expect(published).resolves.toBeUndefined();
    client.close();
  });

  it('rejects a forbidden publish with the protocol code', async () => {
    const { client, socket } = await connectedClient();
    const published = client.publish('news', 1);
    const [frame] = socket.framesWithOp('publish');
    socket.receive({ type: 'error', id: frame?.id, code: 'forbidden', message: 'client publish is disabled' });
    await expect(published).rejects.toMatchObject({ name: 'ServerError', code: 'forbidden' });
    client.close();
  });

  it('rejects publish while disconnected and after close', async () => {
    const { client } = makeClient();
    await expect(client.publish('news', 1)).rejects.toBeInstanceOf(NotConnectedError);
    client.close();
    await expect(client.publish('news', 1)).rejects.toBeInstanceOf(ClientClosedError);
  });

  it('times out a request without reply', async () => {
    const { client } = await connectedClient({ requestTimeoutMs: 1_000, heartbeat: false });
    const published = client.publish('news', 1);
    const assertion = expect(published).rejects.toBeInstanceOf(RequestTimeoutError);
    await vi.advanceTimersByTimeAsync(1_000);
    await assertion;
    client.close();
  });

  it('rejects requests in flight when the connection drops', async () => {
    const { client } = await connectedClient();
    const published = client.publish('news', 1);
    FakeWebSocket.last.serverClose(1011, 'oops');
    await expect(published).rejects.toEqual(new ConnectionLostError(1011, 'oops'));
    client.close();
  });

  it('refuses a publish above the maximum message size before sending it', async () => {
    const { client, socket } = await connectedClient({ maxMessageBytes: 1_000 });
    const error = await client.publish('news', 'é'.repeat(500)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MessageTooLargeError);
    expect(error).toMatchObject({ limit: 1_000 });
    expect((error as MessageTooLargeError).size).toBeGreaterThan(1_000);
    expect(socket.framesWithOp('publish')).toHaveLength(0);
    const ok = client.publish('news', 'é'.repeat(400));
    socket.receive({ type: 'ack', id: socket.framesWithOp('publish')[0]?.id });
    await expect(ok).resolves.toBeUndefined();
    client.close();
  });

  it('refuses to publish null', async () => {
    const { client } = await connectedClient();
    await expect(client.publish('news', null)).rejects.toBeInstanceOf(TypeError);
    client.close();
  });

  it('measures a ping round trip', async () => {
    const { client, socket } = await connectedClient();
    const rtt = client.ping();
    await vi.advanceTimersByTimeAsync(42);
    socket.receive({ type: 'pong', id: socket.framesWithOp('ping')[0]?.id });
    await expect(rtt).resolves.toBe(42);
    client.close();
  });
});

describe('close()', () => {
  it('closes the socket, rejects what is pending and stays closed', async () => {
    const { client, events, socket } = await connectedClient();
    const published = client.publish('news', 1);
    const pendingSub = client.subscribe('never-acked', () => undefined);
    client.close();
    expect(socket.closedByClient).toEqual({ code: 1000, reason: 'client closed' });
    await expect(published).rejects.toBeInstanceOf(ClientClosedError);
    await expect(pendingSub).rejects.toBeInstanceOf(ClientClosedError);
    expect(client.state).toBe('closed');
    expect(eventsNamed(events, 'disconnected').at(-1)).toEqual({
      code: 1000,
      reason: 'client closed',
      wasConnected: true,
      willReconnect: false,
    });
    expect(eventsNamed(events, 'closed')).toEqual([{ code: undefined, reason: 'client closed' }]);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it('does not leave unhandled rejections behind for subscribes nobody awaited', async () => {
    const { client } = await connectedClient();
    void client.subscribe('a', () => undefined);
    void client.subscribe('b', () => undefined);
    client.close();
    // vitest fails the run on an unhandled rejection; give one the chance to surface.
    await flush();
    expect(client.subscribedChannels).toEqual([]);
  });

  it('keeps acknowledged subscriptions for a later connect()', async () => {
    const { client } = await connectedClient();
    const subscribed = client.subscribe('news', () => undefined);
    FakeWebSocket.last.ackSubscribes();
    await subscribed;
    client.close();
    client.connect();
    await flush();
    FakeWebSocket.last.accept();
    expect(FakeWebSocket.last.framesWithOp('subscribe').map((f) => f.channel)).toEqual(['news']);
    client.close();
  });
});
