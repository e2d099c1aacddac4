// Clients over the scripted FakeWebSocket, for the unit tests: made with the
// test defaults and with every client event recorded, and brought to a chosen
// point (started connecting, or connected) in one call.
import { vi } from 'vitest';
import { ShardcastClient, type ClientEvents, type ClientOptions } from '../../src/index';
import { FakeWebSocket } from './fake-websocket';

/** One emitted client event. */
export type Recorded = { [K in keyof ClientEvents]: { event: K; payload: ClientEvents[K] } }[keyof ClientEvents];

/** A client and the events it emitted so far. */
export interface ScriptedClient {
  client: ShardcastClient;
  events: Recorded[];
}

/** A scripted client and its newest socket. */
export interface ScriptedConnection extends ScriptedClient {
  socket: FakeWebSocket;
}

const RECORDED_EVENTS = [
  'state',
  'connecting',
  'connected',
  'disconnected',
  'reconnecting',
  'closed',
  'subscribed',
  'unsubscribed',
  'refreshed',
  'gap',
  'stale',
  'join',
  'leave',
  'error',
] as const;

/** The payloads of the recorded events named `name`, oldest first. */
export function eventsNamed<K extends keyof ClientEvents>(events: Recorded[], name: K): ClientEvents[K][] {
  return events.filter((e) => e.event === name).map((e) => e.payload as ClientEvents[K]);
}

/** Lets promise callbacks (token providers, then-chains) run under fake timers. */
export async function flush(): Promise<void> {
  await vi.advanceTimersByTimeAsync(0);
}

/** The ways a test file makes its clients, each with the file's `defaults` under the options it passes. */
export function scriptedClients(defaults: Partial<ClientOptions> = {}) {
  /** A new client (not started) on the FakeWebSocket. */
  function makeClient(options: Partial<ClientOptions> = {}): ScriptedClient {
    const client = new ShardcastClient({
      url: 'ws://gateway.test/ws',
      WebSocket: FakeWebSocket,
      random: () => 0.5,
      ...defaults,
      ...options,
    });
    const events: Recorded[] = [];
    for (const name of RECORDED_EVENTS) client.on(name, (payload) => events.push({ event: name, payload } as Recorded));
    return { client, events };
  }

  /** A new client that has opened its socket (token providers have run); the socket is not open yet. */
  async function startedClient(options: Partial<ClientOptions> = {}): Promise<ScriptedConnection> {
    const made = makeClient(options);
    await flush();
    return { ...made, socket: FakeWebSocket.last };
  }

  /** A new client whose socket the gateway opened and welcomed, with this ping interval. */
  async function connectedClient(options: Partial<ClientOptions> = {}, pingIntervalMs?: number): Promise<ScriptedConnection> {
    const started = await startedClient(options);
    started.socket.accept(pingIntervalMs);
    return started;
  }

  return { makeClient, startedClient, connectedClient };
}
