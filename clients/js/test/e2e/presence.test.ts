// Presence (PROTOCOL.md 21) end-to-end in Node.js, against the real gateway
// binary with a namespace that has `presence = true` and HS256 tokens minted
// here with `jose` (their `sub` is the member, their `info` what the others see):
// a member hears another's join once, on its subscription and on the client;
// `presence()` lists both members; a member that goes is announced as leaving
// once; a channel without presence is refused with `bad_channel`. Ann speaks
// JSON and Bob MessagePack, so both codecs carry the presence frames.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { ServerError, type JoinEvent, type LeaveEvent, type ShardcastClient } from '../../dist/index.js';
import { Gateway, killAllGateways, waitFor } from './gateway';
import { closeClients, makeClient, record } from './node-clients';

const SECRET = 'e2e-presence-secret-e2e-presence-secret';
const CHANNEL = 'room:lobby';
/** How long "once" is watched for a second announcement. */
const QUIET_MS = 400;

/** A connection token for `user`, whose `info` claim is its display name. */
function token(user: string, name: string): Promise<string> {
  const key = new TextEncoder().encode(SECRET);
  return new SignJWT({ sub: user, info: { name } }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('10m').sign(key);
}

let configDir: string;
let gateway: Gateway;

beforeAll(async () => {
  configDir = mkdtempSync(path.join(tmpdir(), 'shardcast-presence-e2e-'));
  const configFile = path.join(configDir, 'gateway.toml');
  writeFileSync(configFile, '[namespaces.room]\npresence = true\n');
  gateway = await Gateway.start({ args: ['--token-hmac-secret', SECRET, '--config', configFile] });
});

afterEach(() => {
  closeClients();
});

afterAll(async () => {
  await killAllGateways();
  if (configDir) rmSync(configDir, { recursive: true, force: true });
});

/** The joins and leaves of `user` among recorded events. */
function about<E extends JoinEvent | LeaveEvent>(events: E[], user: string): E[] {
  return events.filter((event) => event.user === user);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

it('announces joins and leaves once and lists the members', async () => {
  const ann: ShardcastClient = makeClient(gateway.wsUrl, { token: await token('ann', 'Ann'), encoding: 'json' });
  const annJoins = record(ann, 'join');
  const annLeaves = record(ann, 'leave');
  const annSubscription = await ann.subscribe(CHANNEL, () => undefined);
  const annSubscriptionJoins: JoinEvent[] = [];
  annSubscription.on('join', (event) => annSubscriptionJoins.push(event));

  const bob = makeClient(gateway.wsUrl, { token: await token('bob', 'Bob'), encoding: 'msgpack' });
  await bob.subscribe(CHANNEL, () => undefined);

  // Ann hears of Bob's join (her own may come before it, or not at all: it can be
  // announced before her subscription is acknowledged).
  await waitFor(() => about(annJoins, 'bob').length > 0, "ann to hear of bob's join");
  await sleep(QUIET_MS);
  expect(about(annJoins, 'bob')).toEqual([{ channel: CHANNEL, user: 'bob', info: { name: 'Bob' } }]);
  expect(about(annSubscriptionJoins, 'bob')).toEqual([{ channel: CHANNEL, user: 'bob', info: { name: 'Bob' } }]);

  // Bob joined after Ann: he learns of her from the member list.
  for (const client of [ann, bob]) {
    const presence = await client.presence(CHANNEL);
    expect(presence.channel).toBe(CHANNEL);
    expect(presence.count).toBe(2);
    expect([...presence.members].sort((a, b) => a.user.localeCompare(b.user))).toEqual([
      { user: 'ann', info: { name: 'Ann' } },
      { user: 'bob', info: { name: 'Bob' } },
    ]);
  }

  bob.close();
  await waitFor(() => about(annLeaves, 'bob').length > 0, "ann to hear of bob's leave");
  await sleep(QUIET_MS);
  expect(annLeaves).toEqual([{ channel: CHANNEL, user: 'bob' }]);
  expect((await ann.presence(CHANNEL)).members).toEqual([{ user: 'ann', info: { name: 'Ann' } }]);
});

it('refuses presence on a channel whose namespace has none with bad_channel', async () => {
  const client = makeClient(gateway.wsUrl, { token: await token('ann', 'Ann') });
  await waitFor(() => client.state === 'connected', 'the connection');
  const error = await client.presence('news').catch((e: unknown) => e);
  expect(error).toBeInstanceOf(ServerError);
  expect(error).toMatchObject({ code: 'bad_channel', channel: 'news' });
});
