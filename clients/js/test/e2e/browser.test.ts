// End-to-end in real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; no browser is ever downloaded) against the real gateway: a
// loopback HTTP server serves a test page and the built browser bundles, the
// page's clients (JSON and MessagePack, the browser's own WebSocket) subscribe,
// an HTTP publish arrives, the gateway restarts on the same port, and the page
// reconnects, re-subscribes and receives again. Where the gateway binary has
// authentication (`--token-hmac-secret`), the page also connects with 3-second
// tokens from the server's /token (minted with `jose`) and keeps its connections
// for 10 seconds by refreshing them. Where it has history (`--history-size`), the
// page's clients get every publication exactly once and in order while their
// gateway is killed and started again (two gateways on one redis-server, the
// publications going through the other one).
import { readFile, mkdir } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SignJWT } from 'jose';
import { type Browser, type Page } from 'playwright-core';
import { launchChromium } from './chromium';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Gateway, gatewayBinary, gatewaySupports, killAllGateways, restartOnSamePort, waitFor } from './gateway';
import { RedisServer } from './redis-server';
import { publishSteadily } from './steady-publisher';

const here = path.dirname(fileURLToPath(import.meta.url));
const packageRoot = path.resolve(here, '../..');
const TOKEN_SECRET = 'browser-e2e-secret-browser-e2e-secret';
const authSupported = gatewaySupports('--token-hmac-secret');
if (!authSupported) {
  console.warn(
    `[browser e2e] token refresh check skipped: the gateway binary ${gatewayBinary()} has no --token-hmac-secret flag ` +
      '(it predates authentication, issue #11)',
  );
}

const historySupported = gatewaySupports('--history-size');
if (!historySupported) {
  console.warn(
    `[browser e2e] recovery check skipped: the gateway binary ${gatewayBinary()} has no --history-size flag ` +
      '(it predates history, issue #12)',
  );
}

/** The page's backend: a connection token for user 42 that lives 3 seconds. */
async function mintPageToken(): Promise<string> {
  return new SignJWT({ sub: '42' })
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime(Math.floor(Date.now() / 1000) + 3)
    .sign(new TextEncoder().encode(TOKEN_SECRET));
}

/** What the page records in window.__shardcast for each encoding. */
interface PageClient {
  state: string;
  events: { name: string; payload: Record<string, unknown> }[];
  messages: { data: unknown; seq: number; offset?: number; epoch?: string }[];
  subscribed: { channel: string; resubscribed: boolean; recovered?: boolean }[];
}

/** The files the page needs, by URL path. */
const routes: Record<string, { file: string; type: string }> = {
  '/': { file: path.join(here, 'page/index.html'), type: 'text/html; charset=utf-8' },
  '/shardcast.browser.mjs': { file: path.join(packageRoot, 'dist/shardcast.browser.mjs'), type: 'text/javascript' },
  '/shardcast.browser.mjs.map': { file: path.join(packageRoot, 'dist/shardcast.browser.mjs.map'), type: 'application/json' },
  '/shardcast.browser.global.js': {
    file: path.join(packageRoot, 'dist/shardcast.browser.global.js'),
    type: 'text/javascript',
  },
  '/shardcast.browser.global.js.map': {
    file: path.join(packageRoot, 'dist/shardcast.browser.global.js.map'),
    type: 'application/json',
  },
};

let server: Server | undefined;
let browser: Browser | undefined;
let pageOrigin = '';
const pageLog: string[] = [];

beforeAll(async () => {
  server = createServer((request, response) => {
    const pathname = new URL(request.url ?? '/', 'http://localhost').pathname;
    if (pathname === '/token') {
      mintPageToken().then(
        (token) => response.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' }).end(token),
        (error: unknown) => response.writeHead(500).end(String(error)),
      );
      return;
    }
    const route = routes[pathname];
    if (!route) {
      response.writeHead(404).end();
      return;
    }
    readFile(route.file).then(
      (body) => response.writeHead(200, { 'content-type': route.type, 'cache-control': 'no-store' }).end(body),
      () => response.writeHead(500).end(`cannot read ${route.file}: run the build first`),
    );
  });
  await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', resolve));
  pageOrigin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  await killAllGateways();
});

async function pageClients(page: Page): Promise<Record<'json' | 'msgpack', PageClient>> {
  return page.evaluate(() => (window as unknown as { __shardcast: { clients: Record<'json' | 'msgpack', PageClient> } }).__shardcast.clients);
}

/** Waits until `predicate` holds for both of the page's clients. */
async function waitForBoth(page: Page, predicate: string, what: string, timeoutMs = 10_000): Promise<void> {
  try {
    await page.waitForFunction(
      `(() => { const c = window.__shardcast && window.__shardcast.clients; return !!c && !!c.json && !!c.msgpack && [c.json, c.msgpack].every((client) => ${predicate}); })()`,
      undefined,
      { timeout: timeoutMs, polling: 50 },
    );
  } catch (error) {
    throw new Error(`${what}: ${String(error)}\npage log:\n${pageLog.join('\n')}`);
  }
}

it('receives publications in Chromium, and again after the gateway restarts', async () => {
  let gateway = await Gateway.start();
  const page = await browser!.newPage();
  page.on('console', (message) => pageLog.push(`console.${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => pageLog.push(`pageerror: ${error.message}`));
  try {
    await page.goto(`${pageOrigin}/?ws=${encodeURIComponent(gateway.wsUrl)}`, { timeout: 10_000 });
    await waitForBoth(page, 'client.subscribed.length >= 1', 'both page clients subscribe');
    expect(await page.evaluate(() => (window as unknown as { __shardcast: { iifeLoaded: boolean } }).__shardcast.iifeLoaded)).toBe(true);

    expect(await gateway.publish('news', { n: 1, text: 'to the browser' })).toBe(2);
    await waitForBoth(page, 'client.messages.length >= 1', 'the first publication reaches the page');
    let clients = await pageClients(page);
    for (const client of Object.values(clients)) {
      expect(client.messages).toEqual([{ data: { n: 1, text: 'to the browser' }, seq: 1 }]);
      expect(client.state).toBe('connected');
    }

    gateway = await restartOnSamePort(gateway);
    await waitForBoth(
      page,
      'client.subscribed.some((s) => s.resubscribed)',
      'both page clients re-subscribe after the restart',
      15_000,
    );
    expect(await gateway.publish('news', 'after restart')).toBe(2);
    await waitForBoth(page, 'client.messages.length >= 2', 'the publication after the restart reaches the page');

    clients = await pageClients(page);
    for (const client of Object.values(clients)) {
      expect(client.messages.map((m) => m.data)).toEqual([{ n: 1, text: 'to the browser' }, 'after restart']);
      const disconnected = client.events.find((e) => e.name === 'disconnected');
      expect(disconnected?.payload).toMatchObject({ code: 1001, wasConnected: true, willReconnect: true });
      expect(String(disconnected?.payload.reason)).toMatch(/retry_ms=\d+/);
      expect(client.events.some((e) => e.name === 'reconnecting')).toBe(true);
    }

    // Kept for a person to look at; test-results/ is not committed.
    await mkdir(path.join(packageRoot, 'test-results'), { recursive: true });
    await page.screenshot({ path: path.join(packageRoot, 'test-results/browser.png') });
  } finally {
    await page.close();
    await gateway.stop();
  }
});

it.skipIf(!gatewaySupports('--compression'))('round-trips permessage-deflate in Chromium', async () => {
  // Chromium offers permessage-deflate on every WebSocket; with --compression on the
  // gateway accepts, so the page clients' subscribes arrive compressed and the
  // publication leaves compressed (built once, shared by both page clients).
  const gateway = await Gateway.start({ args: ['--compression', 'on'] });
  const page = await browser!.newPage();
  page.on('console', (message) => pageLog.push(`console.${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => pageLog.push(`pageerror: ${error.message}`));
  try {
    await page.goto(`${pageOrigin}/?ws=${encodeURIComponent(gateway.wsUrl)}`, { timeout: 10_000 });
    const extensions = await page.evaluate(
      (url) =>
        new Promise<string>((resolve, reject) => {
          const ws = new WebSocket(url, 'shardcast.v1.json');
          ws.onopen = () => {
            resolve(ws.extensions);
            ws.close();
          };
          ws.onerror = () => reject(new Error('the probe socket failed'));
        }),
      gateway.wsUrl,
    );
    expect(extensions).toContain('permessage-deflate');
    await waitForBoth(page, 'client.subscribed.length >= 1', 'both page clients subscribe over deflate');
    const text = 'compressible '.repeat(150);
    expect(await gateway.publish('news', { n: 1, text })).toBe(2);
    await waitForBoth(page, 'client.messages.length >= 1', 'the compressed publication reaches the page');
    for (const client of Object.values(await pageClients(page))) {
      expect(client.messages).toEqual([{ data: { n: 1, text }, seq: 1 }]);
    }
  } finally {
    await page.close();
    await gateway.stop();
  }
});

it.skipIf(!authSupported)('keeps authenticated connections alive in Chromium by refreshing 3-second tokens', async () => {
  const gateway = await Gateway.start({ args: ['--token-hmac-secret', TOKEN_SECRET, '--allow-anonymous', 'false'] });
  const page = await browser!.newPage();
  page.on('console', (message) => pageLog.push(`console.${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => pageLog.push(`pageerror: ${error.message}`));
  try {
    await page.goto(`${pageOrigin}/?ws=${encodeURIComponent(gateway.wsUrl)}&token=/token`, { timeout: 10_000 });
    await waitForBoth(page, 'client.subscribed.length >= 1', 'both authenticated page clients subscribe');
    await new Promise((resolve) => setTimeout(resolve, 10_000));
    expect(await gateway.publish('news', 'after 10 s')).toBe(2);
    await waitForBoth(page, 'client.messages.length >= 1', 'the publication reaches the refreshed connections');
    const clients = await pageClients(page);
    for (const client of Object.values(clients)) {
      expect(client.state).toBe('connected');
      expect(client.events.filter((e) => e.name === 'connected').map((e) => e.payload)).toEqual([
        { node: expect.any(String), user: '42' },
      ]);
      expect(client.events.filter((e) => e.name === 'disconnected')).toEqual([]);
      expect(client.events.filter((e) => e.name === 'refreshed').length).toBeGreaterThanOrEqual(3);
    }
  } finally {
    await page.close();
    await gateway.stop();
  }
});

it.skipIf(!historySupported)('recovers every publication exactly once, in order, across a gateway kill in Chromium', async () => {
  const redis = await RedisServer.start();
  const args = ['--redis', redis.url, '--history-size', '100'];
  let subscribed = await Gateway.start({ args });
  const publishing = await Gateway.start({ args });
  const page = await browser!.newPage();
  page.on('console', (message) => pageLog.push(`console.${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => pageLog.push(`pageerror: ${error.message}`));
  try {
    await page.goto(`${pageOrigin}/?ws=${encodeURIComponent(subscribed.wsUrl)}&channel=feed`, { timeout: 10_000 });
    await waitForBoth(page, 'client.subscribed.length >= 1', 'both page clients subscribe');
    const count = 150;
    const publisher = publishSteadily(publishing, 'feed', count, 20);
    await waitForBoth(page, 'client.messages.length >= 30', 'the first publications reach the page');
    // A crash: no close frame, no retry hint.
    const port = subscribed.wsPort;
    const before = publisher.published;
    await subscribed.kill();
    await waitFor(() => publisher.published >= before + 10, 'publications while the page is away');
    subscribed = await Gateway.start({ wsPort: port, args });
    await publisher.done;
    await waitForBoth(page, `client.messages.length >= ${count}`, `all ${count} publications reach the page`, 20_000);

    const clients = await pageClients(page);
    for (const client of Object.values(clients)) {
      expect(client.messages.map((m) => m.data)).toEqual(Array.from({ length: count }, (_, i) => i + 1));
      const offsets = client.messages.map((m) => m.offset ?? NaN);
      expect(offsets.every((offset, i) => i === 0 || offset === offsets[i - 1]! + 1)).toBe(true);
      expect(client.subscribed.filter((s) => s.resubscribed)).toEqual([{ channel: 'feed', resubscribed: true, recovered: true }]);
      expect(client.events.filter((e) => e.name === 'stale')).toEqual([]);
      expect(client.state).toBe('connected');
    }
  } finally {
    await page.close();
    await Promise.all([subscribed.stop(), publishing.stop()]);
    await redis.stop();
  }
});
