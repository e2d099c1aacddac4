// pusher-js (Pusher's own browser build, from the npm package) in real headless
// Chromium against the gateway's Pusher endpoint (PROTOCOL.md 20): a loopback HTTP
// server serves the page, pusher.min.js and the app backend's /pusher/auth,
// which signs channel auth with the `pusher` server library. Two clients in the
// page connect, subscribe to a public, a private and a presence channel, get an
// event the backend triggers through the Pusher HTTP API, exchange a client event
// (not echoed to its sender) and see each other join; the gateway then restarts
// on the same port and pusher-js reconnects, re-subscribes and receives again.
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Pusher from 'pusher';
import { type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { launchChromium } from './chromium';
import { Gateway, killAllGateways, restartOnSamePort } from './gateway';

const here = path.dirname(fileURLToPath(import.meta.url));
const packageRoot = path.resolve(here, '../..');
const APP = { appId: '4', key: 'browser-key', secret: 'browser-secret' };

/** The page: two pusher-js clients, `a` and `b`, logging what they see to window.__pusher. */
function pageHtml(wsPort: number): string {
  return `<!doctype html><meta charset="utf-8"><title>pusher-js</title>
<script src="/pusher.min.js"></script>
<script>
  window.__pusher = [];
  const log = (entry) => window.__pusher.push(entry);
  function client(who) {
    const pusher = new Pusher(${JSON.stringify(APP.key)}, {
      wsHost: '127.0.0.1', wsPort: ${wsPort}, forceTLS: false, enabledTransports: ['ws'], cluster: 'x',
      channelAuthorization: { endpoint: '/pusher/auth', transport: 'ajax', params: { user: who } },
    });
    pusher.connection.bind('state_change', (s) => log({ who, type: 'state', current: s.current }));
    pusher.bind_global((event, data) => {
      if (event === 'pusher:subscription_succeeded') return;
      if (event.startsWith('pusher')) log({ who, type: event, data });
    });
    const watch = (name) => {
      const channel = pusher.subscribe(name);
      channel.bind('pusher:subscription_succeeded', (m) => log({ who, type: 'subscribed', channel: name, count: m && m.count }));
      channel.bind('pusher:member_added', (m) => log({ who, type: 'member_added', channel: name, user: m.id }));
      channel.bind_global((event, data) => {
        if (!event.startsWith('pusher')) log({ who, type: 'event', channel: name, event, data });
      });
      return channel;
    };
    return { pusher, watch };
  }
  window.__a = client('a');
  window.__b = client('b');
  for (const name of ['news', 'private-chat', 'presence-room']) window.__a.watch(name);
  window.__b.watch('private-chat');
</script>`;
}

let server: Server | undefined;
let browser: Browser | undefined;
let origin = '';
let wsPort = 0;
const backend = () => new Pusher({ ...APP, host: '127.0.0.1', port: adminPort, useTLS: false });
let adminPort = '';

beforeAll(async () => {
  const pusherJs = path.join(packageRoot, 'node_modules/pusher-js/dist/web/pusher.min.js');
  server = createServer((request, response) => {
    const url = new URL(request.url ?? '/', 'http://localhost');
    if (url.pathname === '/pusher/auth' && request.method === 'POST') {
      // The app's backend: it signs the subscription, with the member on presence channels.
      let body = '';
      request.on('data', (chunk: Buffer) => (body += chunk.toString()));
      request.on('end', () => {
        const form = new URLSearchParams(body);
        const socketId = form.get('socket_id') ?? '';
        const channel = form.get('channel_name') ?? '';
        const user = form.get('user') ?? 'nobody';
        const member = channel.startsWith('presence-') ? { user_id: user, user_info: { name: user } } : undefined;
        const auth = backend().authorizeChannel(socketId, channel, member);
        response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(auth));
      });
      return;
    }
    if (url.pathname === '/pusher.min.js') {
      readFile(pusherJs).then(
        (js) => response.writeHead(200, { 'content-type': 'text/javascript' }).end(js),
        () => response.writeHead(500).end('pusher-js is not installed'),
      );
      return;
    }
    if (url.pathname === '/') {
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(pageHtml(wsPort));
      return;
    }
    response.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  await killAllGateways();
});

interface Logged {
  who: string;
  type: string;
  channel?: string;
  event?: string;
  data?: unknown;
  current?: string;
  count?: number;
  user?: string;
}

/** Waits until the page logged an entry matching `predicate` (a JS expression over `e`), and returns them all. */
async function waitForLog(page: Page, predicate: string, what: string, timeoutMs = 10_000): Promise<Logged[]> {
  try {
    await page.waitForFunction(`window.__pusher && window.__pusher.some((e) => ${predicate})`, undefined, {
      timeout: timeoutMs,
      polling: 50,
    });
  } catch (error) {
    const seen = await page.evaluate(() => (window as unknown as { __pusher?: unknown[] }).__pusher);
    throw new Error(`${what}: ${String(error)}\nthe page saw: ${JSON.stringify(seen)}`);
  }
  return page.evaluate(() => (window as unknown as { __pusher: Logged[] }).__pusher);
}

it('pusher-js in Chromium subscribes, receives, exchanges client events and reconnects after a restart', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shardcast-pusher-browser-'));
  const config = path.join(dir, 'gw.toml');
  await writeFile(
    config,
    `[pusher.apps."${APP.appId}"]\nkey = "${APP.key}"\nsecret = "${APP.secret}"\nclient_events = true\n`,
  );
  const args = ['--config', config];
  let gateway = await Gateway.start({ args });
  wsPort = gateway.wsPort;
  adminPort = gateway.adminAddress.split(':').pop() ?? '';
  const page = await browser!.newPage();
  try {
    await page.goto(`${origin}/`, { timeout: 10_000 });
    for (const channel of ['news', 'private-chat', 'presence-room']) {
      await waitForLog(page, `e.who === 'a' && e.type === 'subscribed' && e.channel === '${channel}'`, `a subscribes ${channel}`);
    }
    await waitForLog(page, `e.who === 'b' && e.type === 'subscribed' && e.channel === 'private-chat'`, 'b subscribes');

    await backend().trigger('news', 'created', { id: 1 });
    let log = await waitForLog(page, `e.who === 'a' && e.type === 'event' && e.event === 'created'`, 'the triggered event');
    expect(log.find((e) => e.event === 'created')?.data).toEqual({ id: 1 });

    await page.evaluate(() =>
      (window as unknown as { __b: { pusher: { channel(n: string): { trigger(e: string, d: unknown): boolean } } } }).__b.pusher
        .channel('private-chat')
        .trigger('client-typing', { who: 'b' }),
    );
    log = await waitForLog(page, `e.who === 'a' && e.event === 'client-typing'`, 'the client event');
    expect(log.find((e) => e.event === 'client-typing')?.data).toEqual({ who: 'b' });
    expect(log.some((e) => e.who === 'b' && e.event === 'client-typing')).toBe(false);

    await page.evaluate(() => (window as unknown as { __b: { watch(n: string): unknown } }).__b.watch('presence-room'));
    log = await waitForLog(page, `e.who === 'a' && e.type === 'member_added'`, 'a sees b join');
    expect(log.find((e) => e.type === 'member_added')?.user).toBe('b');

    const connections = `window.__pusher.filter((x) => x.who === 'a' && x.type === 'state' && x.current === 'connected').length`;
    const before = (await page.evaluate(connections)) as number;
    gateway = await restartOnSamePort(gateway, args);
    adminPort = gateway.adminAddress.split(':').pop() ?? '';
    await waitForLog(page, `${connections} > ${before}`, 'a reconnects after the restart', 20_000);
    // Re-subscribed by pusher-js itself: the next event arrives.
    const deadline = Date.now() + 15_000;
    for (;;) {
      await backend().trigger('news', 'created', { id: 2 });
      const seen = await page.evaluate(() =>
        (window as unknown as { __pusher: Logged[] }).__pusher.some(
          (e) => e.who === 'a' && e.event === 'created' && (e.data as { id: number }).id === 2,
        ),
      );
      if (seen) break;
      if (Date.now() > deadline) throw new Error('no event after the restart');
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
  } finally {
    await page.close();
    await gateway.stop();
  }
});
