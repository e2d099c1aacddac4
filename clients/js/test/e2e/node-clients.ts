// Clients of the built package (dist/) over the `ws` package, for the Node.js
// end-to-end tests: made with short reconnect and request timeouts, kept so the
// test's afterEach closes them all, and their events recorded.
import WebSocket from 'ws';
import { ShardcastClient, type ClientEvents, type ClientOptions } from '../../dist/index.js';

/** The clients {@link closeClients} closes (some come from the CommonJS build, a ShardcastClient of its own). */
const clients: { close(): void }[] = [];

/** A new client of the gateway at `url`, closed by {@link closeClients}. */
export function makeClient(url: string, options: Partial<ClientOptions> = {}): ShardcastClient {
  const client = new ShardcastClient({
    url,
    WebSocket,
    reconnect: { initialDelayMs: 100, maxDelayMs: 500 },
    connectTimeoutMs: 2_000,
    requestTimeoutMs: 3_000,
    ...options,
  });
  return closeAfterTest(client);
}

/** Has {@link closeClients} close `client` too. */
export function closeAfterTest<C extends { close(): void }>(client: C): C {
  clients.push(client);
  return client;
}

/** Closes every client made since the last call. */
export function closeClients(): void {
  for (const client of clients.splice(0)) client.close();
}

/** The payloads of the client's `event`, as they come. */
export function record<K extends keyof ClientEvents>(client: ShardcastClient, event: K): ClientEvents[K][] {
  const seen: ClientEvents[K][] = [];
  client.on(event, (payload) => seen.push(payload));
  return seen;
}
