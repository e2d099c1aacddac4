// Authentication end-to-end in Node.js, against the real gateway binary started
// with an HS256 secret (`--token-hmac-secret`) and channel rules from a TOML
// file (`--config`), through the built package with `ws`; tokens are minted here
// with `jose`, as an application's backend would. Covers the connect frame and
// the welcome's user (with and without anonymous connections allowed), subscribe
// allowed or refused by the token's `channels` claim, a subscription token, a
// refused token (4003, no reconnect), and a 3-second token that the client keeps
// refreshing so the connection lasts. Skipped, saying so, when the binary
// predates authentication (no `--token-hmac-secret` in its --help).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  AuthenticationError,
  PermissionDeniedError,
  ShardcastClient,
  type ClientEvents,
  type ClientOptions,
} from '../../dist/index.js';
import { Gateway, gatewayBinary, gatewaySupports, killAllGateways, waitFor } from './gateway';
import { closeClients, makeClient as makeNodeClient, record } from './node-clients';

const SECRET = 'e2e-secret-e2e-secret-e2e-secret!';
const supported = gatewaySupports('--token-hmac-secret');
if (!supported) {
  console.warn(
    `[auth e2e] skipped: the gateway binary ${gatewayBinary()} has no --token-hmac-secret flag ` +
      '(it predates authentication, issue #11); set SHARDCAST_BIN to a gateway that has it',
  );
}

/** A connection or subscription token signed with the gateway's secret, valid for `ttlSeconds`. */
async function mint(claims: Record<string, unknown>, ttlSeconds = 60, secret = SECRET): Promise<string> {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'HS256' })
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds)
    .sign(new TextEncoder().encode(secret));
}

function makeClient(url: string, options: Partial<ClientOptions> = {}): ShardcastClient {
  const client = makeNodeClient(url, { connectTimeoutMs: 3_000, ...options });
  // Errors are asserted where a test expects them; the rest would only be console noise.
  client.on('error', () => undefined);
  return client;
}

function connected(client: ShardcastClient): Promise<ClientEvents['connected']> {
  return new Promise((resolve) => client.once('connected', resolve));
}

let configDir: string;
let configFile: string;

beforeAll(() => {
  configDir = mkdtempSync(path.join(tmpdir(), 'shardcast-auth-e2e-'));
  configFile = path.join(configDir, 'gateway.toml');
  writeFileSync(configFile, '[namespaces.team]\nsubscribe = "granted"\n');
});

afterEach(() => {
  closeClients();
});

afterAll(async () => {
  await killAllGateways();
  if (configDir) rmSync(configDir, { recursive: true, force: true });
});

function startGateway(allowAnonymous: boolean): Promise<Gateway> {
  return Gateway.start({
    args: ['--token-hmac-secret', SECRET, '--allow-anonymous', String(allowAnonymous), '--config', configFile],
  });
}

describe.skipIf(!supported)('authentication against the gateway', () => {
  for (const allowAnonymous of [false, true]) {
    it(`connects with a token and is welcomed as its user (anonymous connections ${allowAnonymous ? 'allowed' : 'refused'})`, async () => {
      const gateway = await startGateway(allowAnonymous);
      try {
        const client = makeClient(gateway.wsUrl, { getToken: () => mint({ sub: '42' }) });
        const { welcome } = await connected(client);
        expect(welcome.user).toBe('42');
        expect(welcome.expires_at).toBeGreaterThan(Date.now() / 1000);
        expect(client.state).toBe('connected');
      } finally {
        await gateway.stop();
      }
    });
  }

  it('subscribes where the token grants the channel, and is refused where it does not', async () => {
    const gateway = await startGateway(false);
    try {
      const client = makeClient(gateway.wsUrl, { getToken: () => mint({ sub: '42', channels: ['team:7.*'] }) });
      const received: unknown[] = [];
      await client.subscribe('team:7.chat', (data) => received.push(data));
      expect(await gateway.publish('team:7.chat', { text: 'granted' })).toBe(1);
      await waitFor(() => received.length === 1, 'the publication on the granted channel');
      expect(received).toEqual([{ text: 'granted' }]);

      const refusal = await client.subscribe('team:8.chat', () => undefined).catch((error: unknown) => error);
      expect(refusal).toBeInstanceOf(PermissionDeniedError);
      expect(refusal).toMatchObject({ code: 'permission_denied', channel: 'team:8.chat' });
      expect(client.state).toBe('connected');
    } finally {
      await gateway.stop();
    }
  });

  it('subscribes to a channel its connection token does not grant with a subscription token', async () => {
    const gateway = await startGateway(false);
    try {
      const client = makeClient(gateway.wsUrl, {
        getToken: () => mint({ sub: '42' }),
        getSubscriptionToken: (channel) => (channel.startsWith('team:') ? mint({ sub: '42', channel }) : null),
      });
      const received: unknown[] = [];
      const subscription = await client.subscribe('team:9.report', (data) => received.push(data));
      expect(subscription.state).toBe('subscribed');
      await gateway.publish('team:9.report', 'by subscription token');
      await waitFor(() => received.length === 1, 'the publication on the channel of the subscription token');
    } finally {
      await gateway.stop();
    }
  });

  it('stops, without reconnecting, when the gateway refuses the token (4003)', async () => {
    const gateway = await startGateway(false);
    try {
      let calls = 0;
      const client = makeClient(gateway.wsUrl, {
        getToken: () => {
          calls++;
          return mint({ sub: '42' }, 60, 'not-the-gateways-secret-not-the-gateways');
        },
      });
      const errors = record(client, 'error');
      const closed = await new Promise<ClientEvents['closed']>((resolve) => client.once('closed', resolve));
      expect(closed.code).toBe(4003);
      expect(errors.find((e) => e instanceof AuthenticationError)).toMatchObject({ code: 4003 });
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(calls).toBe(1);
      expect(client.state).toBe('closed');
    } finally {
      await gateway.stop();
    }
  });

  it('keeps a connection with a 3-second token for 10 seconds by refreshing it', async () => {
    const gateway = await startGateway(false);
    try {
      let minted = 0;
      const client = makeClient(gateway.wsUrl, {
        getToken: () => {
          minted++;
          return mint({ sub: '42', channels: ['team:7.*'] }, 3);
        },
      });
      const disconnected = record(client, 'disconnected');
      const refreshed = record(client, 'refreshed');
      const received: unknown[] = [];
      await client.subscribe('team:7.chat', (data) => received.push(data));
      await new Promise((resolve) => setTimeout(resolve, 10_000));
      expect(disconnected).toEqual([]);
      expect(client.state).toBe('connected');
      // At least one refresh per token lifetime.
      expect(refreshed.length).toBeGreaterThanOrEqual(3);
      // The first token, one per refresh, and perhaps one whose refresh is still on its way.
      expect(minted - refreshed.length).toBeGreaterThanOrEqual(1);
      expect(minted - refreshed.length).toBeLessThanOrEqual(2);
      await gateway.publish('team:7.chat', 'still here');
      await waitFor(() => received.length === 1, 'a publication after 10 s on the refreshed connection');
    } finally {
      await gateway.stop();
    }
  }, 30_000);
});
