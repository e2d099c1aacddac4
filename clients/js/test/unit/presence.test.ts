// Presence (PROTOCOL.md 21) over a scripted WebSocket: `presence()` sends the
// op and resolves with the reply, its refusals become typed errors, and `join`
// and `leave` frames reach the channel's subscriptions and the client, in both
// encodings, and nobody once the channel is unsubscribed.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  HandlerError,
  InvalidChannelError,
  NotConnectedError,
  PermissionDeniedError,
  ServerError,
  type Encoding,
  type JoinEvent,
  type LeaveEvent,
} from '../../src/index';
import { FakeWebSocket } from './fake-websocket';
import { eventsNamed, flush, scriptedClients } from './scripted-client';

const { makeClient, connectedClient } = scriptedClients();

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
});

/** The id of the newest `presence` request the client sent. */
function presenceId(socket: FakeWebSocket): unknown {
  return socket.framesWithOp('presence').at(-1)?.id;
}

describe.each<Encoding>(['json', 'msgpack'])('presence() with %s frames', (encoding) => {
  it('sends the presence op and resolves with the members and their count', async () => {
    const { client, socket } = await connectedClient({ encoding });
    const read = client.presence('room:lobby');
    expect(socket.framesWithOp('presence')).toEqual([{ op: 'presence', id: expect.any(Number), channel: 'room:lobby' }]);
    socket.receive({
      type: 'presence',
      id: presenceId(socket),
      channel: 'room:lobby',
      count: 3,
      members: [
        { user: '42', info: { name: 'Ann' } },
        { user: '43', info: null },
      ],
    });
    await expect(read).resolves.toEqual({
      channel: 'room:lobby',
      count: 3,
      members: [
        { user: '42', info: { name: 'Ann' } },
        { user: '43', info: null },
      ],
    });
    client.close();
  });
});

describe('presence() refusals', () => {
  /** What `presence(channel)` rejects with when the gateway answers with this error code. */
  async function refusal(channel: string, code: string, message: string): Promise<unknown> {
    const { client, socket } = await connectedClient();
    const read = client.presence(channel);
    socket.receive({ type: 'error', id: presenceId(socket), code, message });
    const error = await read.catch((e: unknown) => e);
    client.close();
    return error;
  }

  it('rejects with a PermissionDeniedError when the channel rules refuse the connection', async () => {
    const error = await refusal('team:a', 'permission_denied', 'not granted');
    expect(error).toBeInstanceOf(PermissionDeniedError);
    expect(error).toMatchObject({ code: 'permission_denied', channel: 'team:a' });
  });

  it('rejects with a bad_channel ServerError where the namespace has no presence', async () => {
    const error = await refusal('news', 'bad_channel', 'news has no presence');
    expect(error).toBeInstanceOf(ServerError);
    expect(error).toMatchObject({ code: 'bad_channel', channel: 'news' });
  });

  it('says a gateway that answers unknown_op predates presence', async () => {
    const error = await refusal('room:lobby', 'unknown_op', 'unknown op `presence`');
    expect(error).toBeInstanceOf(ServerError);
    expect(error).toMatchObject({ code: 'unknown_op', channel: 'room:lobby' });
    expect((error as Error).message).toMatch(/predates presence/);
  });

  it('refuses an invalid channel name and a disconnected client before sending anything', async () => {
    const { client } = makeClient();
    await expect(client.presence('#room')).rejects.toBeInstanceOf(InvalidChannelError);
    await expect(client.presence('room:lobby')).rejects.toBeInstanceOf(NotConnectedError);
    client.close();
  });
});

describe('join and leave', () => {
  it('reach every subscription of the channel and the client, with the channel', async () => {
    const { client, events, socket } = await connectedClient();
    const first = client.subscribe('room:lobby', () => undefined);
    const second = client.subscribe('room:lobby', () => undefined);
    await flush();
    socket.ackSubscribes();
    const subscriptions = await Promise.all([first, second]);
    const seen: [number, string, JoinEvent | LeaveEvent][] = [];
    subscriptions.forEach((subscription, n) => {
      subscription.on('join', (event) => seen.push([n, 'join', event]));
      subscription.on('leave', (event) => seen.push([n, 'leave', event]));
    });
    socket.receive({ type: 'join', channel: 'room:lobby', user: '42', info: { name: 'Ann' } });
    socket.receive({ type: 'leave', channel: 'room:lobby', user: '42' });
    const join = { channel: 'room:lobby', user: '42', info: { name: 'Ann' } };
    const leave = { channel: 'room:lobby', user: '42' };
    expect(seen).toEqual([
      [0, 'join', join],
      [1, 'join', join],
      [0, 'leave', leave],
      [1, 'leave', leave],
    ]);
    expect(eventsNamed(events, 'join')).toEqual([join]);
    expect(eventsNamed(events, 'leave')).toEqual([leave]);
    expect(eventsNamed(events, 'error')).toHaveLength(0);
    client.close();
  });

  it('carry a null info, and reach nobody for a channel not subscribed', async () => {
    const { client, events, socket } = await connectedClient({ encoding: 'msgpack' });
    const subscribed = client.subscribe('room:lobby', () => undefined);
    await flush();
    socket.ackSubscribes();
    const subscription = await subscribed;
    const joins: JoinEvent[] = [];
    subscription.on('join', (event) => joins.push(event));
    socket.receive({ type: 'join', channel: 'room:lobby', user: '43', info: null });
    socket.receive({ type: 'join', channel: 'room:other', user: '44', info: null });
    expect(joins).toEqual([{ channel: 'room:lobby', user: '43', info: null }]);
    // Not awaited: the channel is forgotten at once, and a leave that races the unsubscribe reaches nobody.
    void subscription.unsubscribe();
    socket.receive({ type: 'leave', channel: 'room:lobby', user: '43' });
    expect(eventsNamed(events, 'join')).toEqual([{ channel: 'room:lobby', user: '43', info: null }]);
    expect(eventsNamed(events, 'leave')).toEqual([]);
    client.close();
  });

  it('reports a throwing listener and still tells the others', async () => {
    const { client, events, socket } = await connectedClient();
    const subscribed = client.subscribe('room:lobby', () => undefined);
    await flush();
    socket.ackSubscribes();
    const subscription = await subscribed;
    subscription.on('leave', () => {
      throw new Error('listener bug');
    });
    socket.receive({ type: 'leave', channel: 'room:lobby', user: '42' });
    expect(eventsNamed(events, 'leave')).toEqual([{ channel: 'room:lobby', user: '42' }]);
    const [error] = eventsNamed(events, 'error');
    expect(error).toBeInstanceOf(HandlerError);
    client.close();
  });
});
