// The gateway's web console (GET / on the admin port) in real headless Chromium
// (Debian's /usr/bin/chromium, driven by playwright-core) against two real
// gateways sharing one redis-server, with an API key configured: a wrong key is
// refused on the sign-in form and counted; a right one signs in; the page loads
// with no console error and no request to another origin; with 30 clients
// connected its figures match /api/cluster and /api/stats within one update; a
// publish from its form reaches a subscriber on the other instance; disconnecting
// a user from it closes that user's sockets. Screenshots at 1280 px and at phone
// width go to test-results/ (gitignored). Skipped, saying so, when the gateway
// binary predates the console (GET / answers 404).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { createServer, Socket, type AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SignJWT } from 'jose';
import { type Browser, type BrowserContext, type Page } from 'playwright-core';
import { launchChromium } from './chromium';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import type { ClientEvents, ShardcastClient } from '../../dist/index.js';
import { Gateway, gatewayBinary, killAllGateways, waitFor } from './gateway';
import { closeClients, makeClient, record } from './node-clients';

const here = path.dirname(fileURLToPath(import.meta.url));
const artifacts = path.resolve(here, '../../test-results');
const API_KEY = 'console-e2e-key-console-e2e-key';
const TOKEN_SECRET = 'console-e2e-secret-console-e2e-secret';
/** How many clients the figures are checked with. */
const CLIENTS = 30;
/** One console update (1 s) plus one heartbeat interval and scheduling slack. */
const ONE_UPDATE_MS = 2_500;

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A throwaway redis-server on loopback, no persistence. */
async function startRedis(): Promise<{ url: string; process: ChildProcess }> {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const socket = new Socket();
      socket.once('connect', () => (socket.destroy(), resolve(true)));
      socket.once('error', () => resolve(false));
      socket.connect(port, '127.0.0.1');
    }).catch(() => false);
    if (up) break;
    if (Date.now() > deadline) throw new Error('redis-server did not start within 10 s');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { url: `redis://127.0.0.1:${port}`, process: child };
}

async function mint(sub: string): Promise<string> {
  return new SignJWT({ sub })
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime(Math.floor(Date.now() / 1000) + 300)
    .sign(new TextEncoder().encode(TOKEN_SECRET));
}

/** GET on a gateway's admin API with the Bearer key, as a script would. */
async function adminGet(gateway: Gateway, route: string): Promise<any> {
  const response = await fetch(`http://${gateway.adminAddress}${route}`, {
    headers: { authorization: `Bearer ${API_KEY}` },
    signal: AbortSignal.timeout(5_000),
  });
  if (route === '/metrics') return response.text();
  return response.json();
}

function connected(client: ShardcastClient): Promise<ClientEvents['connected']> {
  return new Promise((resolve) => client.once('connected', resolve));
}

let redis: { url: string; process: ChildProcess } | undefined;
let browser: Browser | undefined;
let gateways: Gateway[] = [];
let consoleServed = false;
/** Console errors and other-origin requests a test's page saw. */
let problems: string[] = [];
/** The paths the test's page requested, in order. */
let requested: string[] = [];

beforeAll(async () => {
  mkdirSync(artifacts, { recursive: true });
  redis = await startRedis();
  const args = [
    '--redis',
    redis.url,
    '--heartbeat-interval',
    '300ms',
    '--api-key',
    API_KEY,
    '--token-hmac-secret',
    TOKEN_SECRET,
    '--allow-anonymous',
    'true',
  ];
  gateways = [await Gateway.start({ args }), await Gateway.start({ args })];
  const probe = await fetch(`http://${gateways[0]!.adminAddress}/`, { signal: AbortSignal.timeout(5_000) });
  consoleServed = probe.status === 200;
  if (!consoleServed) {
    console.warn(`[console e2e] skipped: the gateway binary ${gatewayBinary()} serves no console (GET / is ${probe.status})`);
    return;
  }
  browser = await launchChromium();
});

afterEach(() => {
  closeClients();
});

afterAll(async () => {
  await browser?.close();
  await killAllGateways();
  redis?.process.kill('SIGKILL');
});

/** A fresh browser context on the first gateway's console, recording what must not happen. */
async function openConsole(viewport = { width: 1280, height: 900 }): Promise<{ context: BrowserContext; page: Page; origin: string }> {
  const origin = `http://${gateways[0]!.adminAddress}`;
  const context = await browser!.newContext({ viewport });
  const page = await context.newPage();
  problems = [];
  requested = [];
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console.error: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`pageerror: ${error.message}`));
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (url.protocol !== 'data:' && url.origin !== origin) problems.push(`request to another origin: ${request.url()}`);
    requested.push(`${request.method()} ${url.pathname}`);
  });
  await page.goto(`${origin}/`, { timeout: 10_000 });
  return { context, page, origin };
}

async function signIn(page: Page, key: string): Promise<void> {
  await page.waitForSelector('#login-form', { state: 'visible', timeout: 5_000 });
  await page.fill('#login-key', key);
  await page.click('#login-form button[type=submit]');
}

/** The raw value a figure holds (data-value), or null. */
async function figureValue(page: Page, selector: string): Promise<number | null> {
  const value = await page.$eval(selector, (el) => (el as HTMLElement).dataset.value ?? '').catch(() => '');
  return value === '' ? null : Number(value);
}

it('refuses a wrong key on the sign-in form and counts it', async (ctx) => {
  if (!consoleServed) ctx.skip();
  const metricOf = (text: string): number => {
    const line = text.split('\n').find((l) => l.startsWith('shardcast_console_logins_total{result="wrong_key"}'));
    return Number(line?.split(' ').pop() ?? 0);
  };
  const before = metricOf(await adminGet(gateways[0]!, '/metrics'));
  const { context, page } = await openConsole();
  try {
    await signIn(page, 'not-the-key');
    await page.waitForFunction(() => document.getElementById('login-error')?.textContent === 'Wrong API key.', undefined, {
      timeout: 5_000,
    });
    expect(await page.isVisible('#console')).toBe(false);
    // The feed is refused without a session, too.
    expect(await page.evaluate(async () => (await fetch('/console/events')).status)).toBe(401);
    expect(metricOf(await adminGet(gateways[0]!, '/metrics'))).toBe(before + 1);
    const cookies = await context.cookies();
    expect(cookies.filter((c) => c.name === 'shardcast_console')).toEqual([]);
  } finally {
    await context.close();
  }
});

it('signs in, shows the cluster as the API reports it, publishes and disconnects', async (ctx) => {
  if (!consoleServed) ctx.skip();
  const [a, b] = gateways as [Gateway, Gateway];
  const { context, page } = await openConsole();
  try {
    await signIn(page, API_KEY);
    await page.waitForSelector('#console', { state: 'visible', timeout: 5_000 });
    const [cookie] = (await context.cookies()).filter((c) => c.name === 'shardcast_console');
    expect(cookie).toMatchObject({ httpOnly: true, sameSite: 'Strict' });
    expect(cookie!.expires).toBeGreaterThan(Date.now() / 1000);
    expect(await page.evaluate(() => JSON.stringify(localStorage) + document.cookie)).not.toContain(API_KEY);

    // 30 clients, half on each instance.
    const clients = Array.from({ length: CLIENTS }, (_, i) => makeClient((i % 2 ? b : a).wsUrl));
    await Promise.all(clients.map((client) => (client.state === 'connected' ? undefined : connected(client))));
    const deadline = Date.now() + 10_000;
    let cluster = await adminGet(a, '/api/cluster');
    while (cluster.total_connections !== CLIENTS) {
      if (Date.now() > deadline) throw new Error(`the cluster view never counted ${CLIENTS}: ${JSON.stringify(cluster)}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
      cluster = await adminGet(a, '/api/cluster');
    }
    const stats = await adminGet(a, '/api/stats');
    expect(stats.connections).toBe(CLIENTS / 2);

    // Within one update the page shows what the API answered.
    const shown = async () => ({
      total: await figureValue(page, '[data-figure="cluster-total"]'),
      instances: await figureValue(page, '[data-figure="cluster-instances"]'),
      perInstance: await Promise.all(
        cluster.instances.map((i: { node: string }) => figureValue(page, `#instances tr[data-node="${i.node}"] [data-figure="connections"]`)),
      ),
      perInstanceShards: await Promise.all(
        cluster.instances.map((i: { node: string }) =>
          page
            .$eval(`#instances tr[data-node="${i.node}"] [data-figure="shard-connections"]`, (el) => (el as HTMLElement).dataset.value ?? '')
            .catch(() => ''),
        ),
      ),
      local: await figureValue(page, '[data-figure="local-connections"]'),
      shards: await Promise.all(stats.shards.map((_: number, i: number) => figureValue(page, `#shards tr[data-shard="${i}"] [data-figure="connections"]`))),
    });
    const expected = {
      total: cluster.total_connections,
      instances: cluster.instances.length,
      perInstance: cluster.instances.map((i: { connections: number }) => i.connections),
      // Every instance's connections per shard, as its heartbeat carried them.
      perInstanceShards: cluster.instances.map((i: { health: { shards: number[] } }) => i.health.shards.join(',')),
      local: stats.connections,
      shards: stats.shards,
    };
    const until = Date.now() + ONE_UPDATE_MS;
    let seen = await shown();
    while (JSON.stringify(seen) !== JSON.stringify(expected) && Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      seen = await shown();
    }
    expect(seen).toEqual(expected);
    expect(expected.instances).toBe(2);
    const headroom = await figureValue(page, '[data-figure="fd-headroom"]');
    expect(Math.abs(headroom! - stats.fd_headroom)).toBeLessThanOrEqual(10);
    // Pushed, not polled: one feed, and no figure fetched on its own.
    expect(requested.filter((r) => r === 'GET /console/events')).toEqual(['GET /console/events']);
    expect(requested.filter((r) => r.includes('/api/'))).toEqual([]);
    expect(await page.textContent('[data-figure="broker-kind"]')).toBe('redis');
    expect(await page.textContent('[data-figure="broker-up"]')).toBe('connected');

    // A publish from the form reaches a subscriber on the other instance.
    const subscriber = makeClient(b.wsUrl);
    const received: unknown[] = [];
    await subscriber.subscribe('console-news', (data) => received.push(data));
    await page.fill('#publish-channel', 'console-news');
    await page.fill('#publish-data', '{"from": "the console"}');
    await page.click('#publish-form button[type=submit]');
    await page.waitForFunction(() => document.getElementById('publish-result')?.dataset.subscribers !== undefined, undefined, {
      timeout: 5_000,
    });
    await waitFor(() => received.length === 1, 'the publication from the console form', 5_000);
    expect(received).toEqual([{ from: 'the console' }]);

    // The inspector lists every instance with its subscribers of the channel (each
    // instance asked on its admin port): the one subscriber is on b.
    await page.fill('#inspect-channel', 'console-news');
    await page.click('#inspect-form button[type=submit]');
    await page.waitForSelector('#inspect-result', { state: 'visible', timeout: 5_000 });
    expect(await page.$$eval('#inspect-rows tr', (rows) => rows.map((row) => (row as HTMLElement).dataset.node))).toEqual(
      cluster.instances.map((i: { node: string }) => i.node),
    );
    await page.waitForSelector(`#inspect-rows tr[data-node="${stats.node}"] [data-figure="subscribers"]`, { timeout: 5_000 });
    const perInstance = await Promise.all(
      cluster.instances.map((i: { node: string }) => figureValue(page, `#inspect-rows tr[data-node="${i.node}"] [data-figure="subscribers"]`)),
    );
    expect(perInstance.reduce((sum: number, n) => sum + (n ?? 0), 0)).toBe(1);
    expect(await figureValue(page, `#inspect-rows tr[data-node="${stats.node}"] [data-figure="subscribers"]`)).toBe(0);
    expect(await page.textContent('#inspect-history-note')).toBe('This channel keeps no history.');
    expect(await page.isVisible('#inspect-presence')).toBe(true);

    // Disconnecting a user from the page closes its sockets, here and on the other instance.
    const victims = [a, b].map((gateway) => makeClient(gateway.wsUrl, { getToken: () => mint('victim') }));
    // The 4004 each gets is asserted below; the client's own report of it is only noise here.
    for (const client of victims) client.on('error', () => undefined);
    await Promise.all(victims.map((client) => (client.state === 'connected' ? undefined : connected(client))));
    const drops = victims.map((client) => record(client, 'disconnected'));
    await page.fill('#disconnect-user', 'victim');
    await page.click('#disconnect-form button[type=submit]');
    await page.waitForFunction(() => document.getElementById('disconnect-result')?.dataset.disconnected === '1', undefined, {
      timeout: 5_000,
    });
    await waitFor(() => drops.every((d) => d.length >= 1), 'both of the user’s sockets to close', 5_000);
    for (const d of drops) expect(d[0]).toMatchObject({ code: 4004, wasConnected: true });

    // Without the CSRF token the same session may not publish.
    const refused = await page.evaluate(async () => {
      const response = await fetch('/api/publish', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ channel: 'console-news', data: 1 }),
      });
      return response.status;
    });
    expect(refused).toBe(403);
    problems = problems.filter((p) => !p.includes('status of 403'));

    expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(1280);
    await page.screenshot({ path: path.join(artifacts, 'console-1280.png'), fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    // Readable on a phone: nothing wider than the screen but the tables' own scrollers.
    expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
    await page.screenshot({ path: path.join(artifacts, 'console-phone.png'), fullPage: true });
    expect(problems).toEqual([]);
  } finally {
    await context.close();
  }
});
