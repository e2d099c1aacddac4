// Authentication over a scripted WebSocket with fake timers (PROTOCOL.md 6.5-6.7,
// 7.7, 11.1 and 18): the connect frame and the welcome that answers it, the token
// refresh schedule, the close codes 4002-4005, subscription tokens and their
// refresh, unsubscribed frames and the permission errors.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  AuthenticationError,
  PermissionDeniedError,
  ServerError,
  SubscriptionEndedError,
  TokenProviderError,
  UnauthorizedError,
  type ShardcastError,
} from '../../src/index';
import { MIN_REFRESH_DELAY_MS, refreshDelayMs, remainingMs, tokenTimes } from '../../src/credentials';
import { FakeWebSocket } from './fake-websocket';
import { eventsNamed, flush, scriptedClients } from './scripted-client';

const NOW_MS = Date.UTC(2026, 10, 26, 12, 0, 0);
const NOW_S = NOW_MS / 1000;

const { makeClient, startedClient, connectedClient } = scriptedClients({ heartbeat: false });

/** An unsigned JWT with these claims: enough for a client, which never verifies. */
function jwt(claims: Record<string, unknown>): string {
  const part = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}.c2ln`;
}

const welcome = { type: 'welcome', version: 1, node: 'node-1', shard: 0, ping_interval_ms: 25_000 };

/** Opens the socket (if it is not yet) and answers its connect frame with `reply`, given the connect's id; returns the connect frame. */
function answerConnect(socket: FakeWebSocket, reply: Record<string, unknown>): Record<string, unknown> {
  if (socket.readyState === 0) socket.open();
  const [connect] = socket.framesWithOp('connect');
  if (!connect) throw new Error('no connect frame was sent');
  socket.receive({ ...reply, id: connect.id });
  return connect;
}

/** Opens the socket and answers its connect frame with an identified welcome. */
function acceptConnect(socket: FakeWebSocket, fields: Record<string, unknown> = {}): Record<string, unknown> {
  return answerConnect(socket, { ...welcome, user: '42', ...fields });
}

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(NOW_MS);
  FakeWebSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
});

describe('connect frame', () => {
  it('is the first frame, carries the token and names the client; the URL has no token', async () => {
    const { client, events } = makeClient({ token: 'tok-1' });
    const subscribed = client.subscribe('news', () => undefined);
    await flush();
    const socket = FakeWebSocket.last;
    expect(socket.url).toBe('ws://gateway.test/ws');
    socket.open();
    expect(socket.frames()).toEqual([
      { op: 'connect', id: expect.any(Number), token: 'tok-1', name: 'shardcast-js', version: expect.stringMatching(/^\d+\.\d+\.\d+/) },
    ]);
    expect(client.state).toBe('connecting');
    acceptConnect(socket, { expires_at: NOW_S + 3600 });
    expect(client.state).toBe('connected');
    expect(client.welcome).toMatchObject({ user: '42', expires_at: NOW_S + 3600 });
    expect(eventsNamed(events, 'connected')).toHaveLength(1);
    // Requests follow the welcome.
    expect(socket.frames().map((f) => f.op)).toEqual(['connect', 'subscribe']);
    socket.ackSubscribes();
    await expect(subscribed).resolves.toMatchObject({ state: 'subscribed' });
    client.close();
  });

  it('is sent in MessagePack on a MessagePack connection', async () => {
    const { client } = makeClient({ token: 'tok-1', encoding: 'msgpack' });
    await flush();
    FakeWebSocket.last.open();
    expect(FakeWebSocket.last.sent[0]).toBeInstanceOf(Uint8Array);
    expect(FakeWebSocket.last.frames()[0]).toMatchObject({ op: 'connect', token: 'tok-1' });
    client.close();
  });

  it('does not take an anonymous welcome (or one with another id) for the answer', async () => {
    const { client, events } = makeClient({ token: 'tok-1' });
    const subscribed = client.subscribe('news', () => undefined);
    await flush();
    const socket = FakeWebSocket.last;
    socket.accept(); // opens, then the anonymous welcome a gateway allowing anonymous connections sends first
    socket.receive({ ...welcome, id: 999 });
    expect(client.state).toBe('connecting');
    expect(eventsNamed(events, 'connected')).toEqual([]);
    expect(socket.framesWithOp('subscribe')).toEqual([]);
    const connect = acceptConnect(socket);
    expect(client.state).toBe('connected');
    expect(client.welcome).toMatchObject({ id: connect.id, user: '42' });
    expect(eventsNamed(events, 'connected')).toHaveLength(1);
    socket.ackSubscribes();
    await subscribed;
    client.close();
  });

  it('falls back to the anonymous welcome when the gateway does not know connect', async () => {
    const { client, events, socket } = await connectedClient({ token: 'tok-1' });
    answerConnect(socket, { type: 'error', code: 'unknown_op', message: 'unknown op' });
    expect(client.state).toBe('connected');
    expect(client.welcome?.user).toBeUndefined();
    expect(eventsNamed(events, 'error')[0]?.message).toMatch(/does not know the connect operation/);
    client.close();
  });

  it('gives up on a socket whose connect is refused with an error, and retries', async () => {
    const { client, events, socket } = await startedClient({ token: 'tok-1' });
    answerConnect(socket, { type: 'error', code: 'bad_request', message: 'connect must come first' });
    expect(eventsNamed(events, 'error')[0]).toBeInstanceOf(ServerError);
    expect(client.state).toBe('reconnecting');
    client.close();
  });

  it('calls getToken when no token is given, and reuses the token across ordinary reconnects', async () => {
    const getToken = vi.fn(async () => 'from-backend');
    const { client } = makeClient({ getToken });
    await flush();
    acceptConnect(FakeWebSocket.last, { expires_at: NOW_S + 3600 });
    expect(getToken).toHaveBeenCalledTimes(1);
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    FakeWebSocket.last.open();
    expect(FakeWebSocket.last.framesWithOp('connect')).toMatchObject([{ token: 'from-backend' }]);
    expect(getToken).toHaveBeenCalledTimes(1);
    client.close();
  });

  it('uses a token string first, then getToken once that token is due for refresh', async () => {
    const getToken = vi.fn(async () => 'fresh');
    const { client } = makeClient({ token: 'initial', getToken, reconnect: { initialDelayMs: 1 } });
    await flush();
    acceptConnect(FakeWebSocket.last, { expires_at: NOW_S + 5 });
    expect(FakeWebSocket.last.framesWithOp('connect')).toMatchObject([{ token: 'initial' }]);
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(1);
    FakeWebSocket.last.open();
    // Less than 10 s left on the first token: a new one is fetched before reconnecting.
    expect(FakeWebSocket.last.framesWithOp('connect')).toMatchObject([{ token: 'fresh' }]);
    client.close();
  });

  it('refuses the removed tokenParam option with an explanation', () => {
    expect(() => makeClient({ tokenParam: 'token' })).toThrow(/tokenParam.*query string/);
  });
});

describe('token refresh', () => {
  it('sends a refresh with a new token at 80-90 % of the lifetime, then plans the next from the ack', async () => {
    const tokens = ['t1', 't2', 't3'];
    const getToken = vi.fn(async () => tokens.shift());
    const { client, events, socket } = await startedClient({ getToken });
    acceptConnect(socket, { expires_at: NOW_S + 100 });
    // random() = 0.5: 85 % of 100 s.
    await vi.advanceTimersByTimeAsync(84_999);
    expect(socket.framesWithOp('refresh')).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    const [refresh] = socket.framesWithOp('refresh');
    expect(refresh).toEqual({ op: 'refresh', id: expect.any(Number), token: 't2' });
    socket.receive({ type: 'ack', id: refresh?.id, expires_at: NOW_S + 85 + 1000 });
    await flush();
    expect(eventsNamed(events, 'refreshed')).toEqual([{ expiresAt: NOW_S + 1085 }]);
    // 1000 s left: the next refresh at 850 s.
    await vi.advanceTimersByTimeAsync(849_999);
    expect(socket.framesWithOp('refresh')).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(socket.framesWithOp('refresh')).toMatchObject([{ token: 't2' }, { token: 't3' }]);
    expect(client.state).toBe('connected');
    client.close();
  });

  it('refreshes a short-lived token halfway through and keeps the connection', async () => {
    let n = 0;
    const { client, socket } = await startedClient({ getToken: async () => `t${++n}` });
    acceptConnect(socket, { expires_at: NOW_S + 3 });
    await vi.advanceTimersByTimeAsync(1_500);
    const [refresh] = socket.framesWithOp('refresh');
    expect(refresh).toMatchObject({ token: 't2' });
    socket.receive({ type: 'ack', id: refresh?.id, expires_at: NOW_S + 5 });
    await vi.advanceTimersByTimeAsync(1_750);
    expect(socket.framesWithOp('refresh')).toHaveLength(2);
    client.close();
  });

  it('retries a failed refresh sooner, and reports it', async () => {
    let calls = 0;
    const getToken = async (): Promise<string> => {
      calls++;
      if (calls === 2) throw new Error('backend down');
      return `t${calls}`;
    };
    const { client, events, socket } = await startedClient({ getToken });
    acceptConnect(socket, { expires_at: NOW_S + 100 });
    await vi.advanceTimersByTimeAsync(85_000);
    expect(eventsNamed(events, 'error')[0]).toBeInstanceOf(TokenProviderError);
    expect(socket.framesWithOp('refresh')).toEqual([]);
    // 15 s left: retried at the latest halfway (7.5 s).
    await vi.advanceTimersByTimeAsync(7_500);
    expect(socket.framesWithOp('refresh')).toMatchObject([{ token: 't3' }]);
    client.close();
  });

  it('refreshes in time on a device whose clock is far ahead, going by the token’s iat', async () => {
    // The backend's clock is two hours behind this device's: by the device's clock, every token is long expired.
    const backendNow = NOW_S - 7200;
    const getToken = vi.fn(async () => jwt({ sub: '42', iat: backendNow, exp: backendNow + 100 }));
    const { client, socket } = await startedClient({ getToken });
    acceptConnect(socket, { expires_at: backendNow + 100 });
    await vi.advanceTimersByTimeAsync(84_999);
    expect(socket.framesWithOp('refresh')).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(socket.framesWithOp('refresh')).toHaveLength(1);
    client.close();
  });

  it('does not schedule a refresh without a way to get a new token, nor for a token without expiry', async () => {
    const { client } = makeClient({ token: 'static' });
    await flush();
    acceptConnect(FakeWebSocket.last, { expires_at: NOW_S + 100 });
    await vi.advanceTimersByTimeAsync(200_000);
    expect(FakeWebSocket.last.framesWithOp('refresh')).toEqual([]);
    client.close();

    const second = makeClient({ getToken: async () => 'x' });
    await flush();
    acceptConnect(FakeWebSocket.last);
    expect(vi.getTimerCount()).toBe(0);
    second.client.close();
  });

  it('stops refreshing when the connection is gone', async () => {
    const getToken = vi.fn(async () => 'x');
    const { client } = makeClient({ getToken });
    await flush();
    acceptConnect(FakeWebSocket.last, { expires_at: NOW_S + 100 });
    client.close();
    await vi.advanceTimersByTimeAsync(200_000);
    expect(getToken).toHaveBeenCalledTimes(1);
  });
});

describe('refreshDelayMs', () => {
  it('is 80-90 % of the remaining lifetime with jitter', () => {
    expect(refreshDelayMs(3_600_000, () => 0)).toBe(2_880_000);
    expect(refreshDelayMs(3_600_000, () => 1)).toBe(3_240_000);
  });

  it('is never later than 10 s before expiry for tokens that live long enough', () => {
    expect(refreshDelayMs(60_000, () => 1)).toBe(50_000);
    expect(refreshDelayMs(20_000, () => 0)).toBe(10_000);
  });

  it('is at most half of what is left for short tokens, and never below a floor', () => {
    expect(refreshDelayMs(3_000, () => 0.5)).toBe(1_500);
    expect(refreshDelayMs(1_000, () => 0.5)).toBe(MIN_REFRESH_DELAY_MS);
    expect(refreshDelayMs(-100_000, () => 0.5)).toBe(MIN_REFRESH_DELAY_MS);
  });
});

describe('remainingMs', () => {
  it('counts from the token’s own iat-exp lifetime and when it arrived, whatever this device’s clock says', () => {
    const issuedAt = NOW_S - 7200; // this device's clock is two hours ahead of the backend's
    const lifetime = { expiresAt: issuedAt + 600, issuedAt, receivedAtMs: NOW_MS - 100_000 };
    expect(remainingMs(lifetime, NOW_MS)).toBe(500_000);
  });

  it('falls back to the expiry against this device’s clock', () => {
    expect(remainingMs({ expiresAt: NOW_S + 60, issuedAt: undefined, receivedAtMs: 0 }, NOW_MS)).toBe(60_000);
  });
});

describe('tokenTimes', () => {
  it('reads the exp and iat claims of a JWT without verifying it', () => {
    expect(tokenTimes(jwt({ sub: '42', exp: 1798761600, iat: 1798758000, info: { name: 'Ådå' } }))).toEqual({
      expiresAt: 1798761600,
      issuedAt: 1798758000,
    });
  });

  it('is empty for tokens that are not JWTs or state no times', () => {
    expect(tokenTimes('opaque')).toEqual({});
    expect(tokenTimes('a.!!!.c')).toEqual({});
    expect(tokenTimes(`a.${Buffer.from('null').toString('base64url')}.c`)).toEqual({});
    expect(tokenTimes(jwt({ sub: '42' }))).toEqual({});
    expect(tokenTimes(jwt({ exp: 'soon' }))).toEqual({});
  });
});

describe('authentication close codes', () => {
  it('4002: fetches a new token, then reconnects with it', async () => {
    let n = 0;
    const getToken = vi.fn(async () => `t${++n}`);
    const { client, events } = makeClient({ getToken });
    await flush();
    acceptConnect(FakeWebSocket.last, { expires_at: NOW_S + 3600 });
    FakeWebSocket.last.serverClose(4002, 'token expired');
    expect(eventsNamed(events, 'disconnected')).toMatchObject([{ code: 4002, willReconnect: true }]);
    await vi.advanceTimersByTimeAsync(250);
    expect(getToken).toHaveBeenCalledTimes(2);
    FakeWebSocket.last.open();
    expect(FakeWebSocket.last.framesWithOp('connect')).toMatchObject([{ token: 't2' }]);
    client.close();
  });

  it('4002 without getToken: stops, since the only token is expired', async () => {
    const { client, events } = makeClient({ token: 'static' });
    await flush();
    acceptConnect(FakeWebSocket.last);
    FakeWebSocket.last.serverClose(4002, 'token expired');
    expect(client.state).toBe('closed');
    const [error] = eventsNamed(events, 'error');
    expect(error).toBeInstanceOf(AuthenticationError);
    expect(error).toMatchObject({ code: 4002 });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  for (const [code, reason] of [
    [4003, 'bad signature'],
    [4004, 'disconnected by an operator'],
  ] as const) {
    it(`${code}: does not reconnect and reports an AuthenticationError`, async () => {
      const getToken = vi.fn(async () => 'tok');
      const { client, events } = makeClient({ getToken });
      const subscribed = client.subscribe('news', () => undefined);
      await flush();
      FakeWebSocket.last.open();
      FakeWebSocket.last.serverClose(code, reason);
      expect(client.state).toBe('closed');
      expect(eventsNamed(events, 'disconnected')).toMatchObject([{ code, willReconnect: false }]);
      expect(eventsNamed(events, 'closed')).toEqual([{ code, reason }]);
      const [error] = eventsNamed(events, 'error');
      expect(error).toBeInstanceOf(AuthenticationError);
      expect(error).toMatchObject({ code, reason });
      await expect(subscribed).rejects.toMatchObject({ code });
      await vi.advanceTimersByTimeAsync(60_000);
      expect(FakeWebSocket.instances).toHaveLength(1);
      expect(getToken).toHaveBeenCalledTimes(1);
    });
  }

  it('4005: reconnects with backoff', async () => {
    const { client, events } = makeClient({ token: 'tok' });
    await flush();
    FakeWebSocket.last.open();
    FakeWebSocket.last.serverClose(4005, 'too many connections');
    expect(eventsNamed(events, 'reconnecting')).toMatchObject([{ attempt: 1, delayMs: 250, code: 4005 }]);
    await vi.advanceTimersByTimeAsync(250);
    FakeWebSocket.last.open();
    FakeWebSocket.last.serverClose(4005, 'too many connections');
    expect(eventsNamed(events, 'reconnecting')[1]).toMatchObject({ attempt: 2, delayMs: 500 });
    await vi.advanceTimersByTimeAsync(500);
    acceptConnect(FakeWebSocket.last);
    expect(client.state).toBe('connected');
    client.close();
  });
});

describe('subscription tokens', () => {
  it('asks getSubscriptionToken for every subscribe and sends the token it returns', async () => {
    const getSubscriptionToken = vi.fn(async (channel: string) => (channel.startsWith('private:') ? `sub-${channel}` : null));
    const { client, socket } = await connectedClient({ getSubscriptionToken });
    const priv = client.subscribe('private:report-9', () => undefined);
    const pub = client.subscribe('news', () => undefined);
    await flush();
    expect(getSubscriptionToken.mock.calls).toEqual([['private:report-9'], ['news']]);
    expect(socket.framesWithOp('subscribe')).toEqual([
      { op: 'subscribe', id: expect.any(Number), channel: 'private:report-9', token: 'sub-private:report-9' },
      { op: 'subscribe', id: expect.any(Number), channel: 'news' },
    ]);
    socket.ackSubscribes();
    await Promise.all([priv, pub]);
    // And again on the next connection.
    socket.serverClose(1006);
    await vi.advanceTimersByTimeAsync(250);
    FakeWebSocket.last.accept();
    await flush();
    expect(getSubscriptionToken).toHaveBeenCalledTimes(4);
    expect(FakeWebSocket.last.framesWithOp('subscribe')[0]).toMatchObject({ token: 'sub-private:report-9' });
    client.close();
  });

  it('refreshes a subscription token before its exp with sub_refresh', async () => {
    let n = 0;
    const getSubscriptionToken = vi.fn(async () => jwt({ sub: '42', channel: 'private:r', exp: NOW_S + 100 * ++n }));
    const { client, events, socket } = await connectedClient({ getSubscriptionToken });
    const subscription = client.subscribe('private:r', () => undefined);
    await flush();
    socket.ackSubscribes();
    await subscription;
    await vi.advanceTimersByTimeAsync(85_000);
    const [refresh] = socket.framesWithOp('sub_refresh');
    expect(refresh).toEqual({ op: 'sub_refresh', id: expect.any(Number), channel: 'private:r', token: expect.any(String) });
    expect(tokenTimes(refresh?.token as string).expiresAt).toBe(NOW_S + 200);
    // The ack's expires_at wins over the token's own: 100 s from now, so the next is at 85 s.
    socket.receive({ type: 'ack', id: refresh?.id, expires_at: NOW_S + 85 + 100 });
    await vi.advanceTimersByTimeAsync(85_000);
    expect(socket.framesWithOp('sub_refresh')).toHaveLength(2);
    expect(eventsNamed(events, 'error')).toEqual([]);
    client.close();
  });

  it('reports a refused sub_refresh on the subscription', async () => {
    const getSubscriptionToken = async (): Promise<string> => jwt({ exp: NOW_S + 100 });
    const { client, socket } = await connectedClient({ getSubscriptionToken });
    const pending = client.subscribe('private:r', () => undefined);
    await flush();
    socket.ackSubscribes();
    const subscription = await pending;
    const errors: ShardcastError[] = [];
    subscription.on('error', (error) => errors.push(error));
    await vi.advanceTimersByTimeAsync(85_000);
    const [refresh] = socket.framesWithOp('sub_refresh');
    socket.receive({ type: 'error', id: refresh?.id, code: 'unauthorized', message: 'bad signature' });
    await flush();
    expect(errors[0]).toBeInstanceOf(UnauthorizedError);
    expect(subscription.state).toBe('subscribed');
    client.close();
  });

  it('reports a throwing getSubscriptionToken and retries with backoff', async () => {
    let calls = 0;
    const getSubscriptionToken = async (): Promise<string> => {
      if (++calls === 1) throw new Error('backend down');
      return 'sub-token';
    };
    const { client, events, socket } = await connectedClient({ getSubscriptionToken });
    const subscribed = client.subscribe('private:r', () => undefined);
    await flush();
    expect(eventsNamed(events, 'error')[0]).toBeInstanceOf(TokenProviderError);
    expect(socket.framesWithOp('subscribe')).toEqual([]);
    await vi.advanceTimersByTimeAsync(250);
    expect(socket.framesWithOp('subscribe')).toMatchObject([{ token: 'sub-token' }]);
    socket.ackSubscribes();
    await subscribed;
    client.close();
  });

  it('does not send a subscribe whose token arrives after its socket is gone', async () => {
    let release: (token: string) => void = () => undefined;
    const tokens = [new Promise<string>((resolve) => (release = resolve)), Promise.resolve('second')];
    const { client } = makeClient({ getSubscriptionToken: () => tokens.shift() });
    await flush();
    const first = FakeWebSocket.last;
    first.accept();
    const subscribed = client.subscribe('private:r', () => undefined);
    await flush();
    first.serverClose(1006);
    release('first');
    await vi.advanceTimersByTimeAsync(250);
    const second = FakeWebSocket.last;
    second.accept();
    await flush();
    expect(second.framesWithOp('subscribe')).toMatchObject([{ token: 'second' }]);
    second.ackSubscribes();
    await subscribed;
    expect(second.framesWithOp('subscribe')).toHaveLength(1);
    client.close();
  });
});

describe('unsubscribed frames', () => {
  it('end the subscription: it hears why, becomes inactive, and gets no more messages', async () => {
    const received: unknown[] = [];
    const { client, events, socket } = await connectedClient();
    const pending = client.subscribe('private:report-9', (data) => received.push(data));
    socket.ackSubscribes();
    const subscription = await pending;
    const heard: unknown[] = [];
    subscription.on('unsubscribed', (payload) => heard.push(payload));
    socket.receive({ type: 'unsubscribed', channel: 'private:report-9', code: 'token_expired', message: 'subscription token expired' });
    expect(heard).toEqual([{ code: 'token_expired', message: 'subscription token expired' }]);
    expect(eventsNamed(events, 'unsubscribed')).toEqual([
      { channel: 'private:report-9', code: 'token_expired', message: 'subscription token expired' },
    ]);
    expect(subscription.active).toBe(false);
    expect(subscription.state).toBe('unsubscribed');
    expect(client.subscribedChannels).toEqual([]);
    socket.receive({ type: 'message', channel: 'private:report-9', seq: 2, data: 'late' });
    expect(received).toEqual([]);
    // Nothing to unsubscribe on the gateway any more.
    await subscription.unsubscribe();
    expect(socket.framesWithOp('unsubscribe')).toEqual([]);
    expect(client.state).toBe('connected');
    client.close();
  });

  it('stop the sub_refresh schedule of the channel', async () => {
    const getSubscriptionToken = vi.fn(async () => jwt({ exp: NOW_S + 100 }));
    const { client, socket } = await connectedClient({ getSubscriptionToken });
    const pending = client.subscribe('private:r', () => undefined);
    await flush();
    socket.ackSubscribes();
    await pending;
    socket.receive({ type: 'unsubscribed', channel: 'private:r', code: 'permission_denied', message: 'revoked' });
    await vi.advanceTimersByTimeAsync(200_000);
    expect(socket.framesWithOp('sub_refresh')).toEqual([]);
    expect(getSubscriptionToken).toHaveBeenCalledTimes(1);
    client.close();
  });

  it('reject a subscribe still waiting for its ack', async () => {
    const { client, socket } = await connectedClient();
    const pending = client.subscribe('private:r', () => undefined);
    socket.receive({ type: 'unsubscribed', channel: 'private:r', code: 'permission_denied', message: 'revoked' });
    await expect(pending).rejects.toBeInstanceOf(SubscriptionEndedError);
    client.close();
  });
});

describe('permission errors', () => {
  it('reject subscribe() with PermissionDeniedError, a ServerError with the code', async () => {
    const { client, socket } = await connectedClient();
    const pending = client.subscribe('notifications:#43', () => undefined);
    const [frame] = socket.framesWithOp('subscribe');
    socket.receive({ type: 'error', id: frame?.id, code: 'permission_denied', message: 'belongs to another user' });
    const error = await pending.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PermissionDeniedError);
    expect(error).toBeInstanceOf(ServerError);
    expect(error).toMatchObject({ code: 'permission_denied', channel: 'notifications:#43' });
    expect(client.subscribedChannels).toEqual([]);
    client.close();
  });

  it('reject subscribe() with UnauthorizedError for a refused subscription token', async () => {
    const { client, socket } = await connectedClient({ getSubscriptionToken: async () => 'expired' });
    const pending = client.subscribe('private:r', () => undefined);
    await flush();
    const [frame] = socket.framesWithOp('subscribe');
    socket.receive({ type: 'error', id: frame?.id, code: 'unauthorized', message: 'token expired' });
    await expect(pending).rejects.toBeInstanceOf(UnauthorizedError);
    client.close();
  });

  it('reach the subscription when a re-subscribe is refused', async () => {
    const { client, events } = await connectedClient();
    const pending = client.subscribe('team:7.chat', () => undefined);
    FakeWebSocket.last.ackSubscribes();
    const subscription = await pending;
    const errors: ShardcastError[] = [];
    subscription.on('error', (error) => errors.push(error));
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(250);
    const socket = FakeWebSocket.last;
    socket.accept();
    expect(subscription.state).toBe('subscribing');
    const [frame] = socket.framesWithOp('subscribe');
    socket.receive({ type: 'error', id: frame?.id, code: 'permission_denied', message: 'not granted' });
    expect(errors[0]).toBeInstanceOf(PermissionDeniedError);
    expect(eventsNamed(events, 'error')[0]).toBe(errors[0]);
    expect(subscription.state).toBe('unsubscribed');
    client.close();
  });

  it('reject a refused publish with PermissionDeniedError', async () => {
    const { client, socket } = await connectedClient();
    const published = client.publish('team:7.chat', 'hi');
    const [frame] = socket.framesWithOp('publish');
    socket.receive({ type: 'error', id: frame?.id, code: 'permission_denied', message: 'not granted' });
    await expect(published).rejects.toBeInstanceOf(PermissionDeniedError);
    client.close();
  });
});
