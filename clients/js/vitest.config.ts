// Test projects: `unit` (vectors, backoff and the client state machine over a
// fake WebSocket with fake timers), `e2e-node` (the real gateway binary and the
// `ws` package; authentication with tokens minted by `jose`; history and recovery; presence, with redis-server; also the README's code blocks, run as pasted) and `e2e-browser` (the real gateway and headless Debian
// Chromium driven by playwright-core; also the gateway's web console). Every test is bounded in time.
import { readFileSync } from 'node:fs';
import { defineConfig } from 'vitest/config';

// As in tsup.config.ts: the version the client names in its connect frame.
const { version } = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8')) as { version: string };

export default defineConfig({
  define: { __SHARDCAST_CLIENT_VERSION__: JSON.stringify(version) },
  test: {
    projects: [
      {
        extends: true,
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          environment: 'node',
          testTimeout: 5_000,
        },
      },
      {
        extends: true,
        test: {
          name: 'e2e-node',
          include: [
            'test/e2e/node.test.ts',
            'test/e2e/auth.test.ts',
            'test/e2e/recovery.test.ts',
            'test/e2e/presence.test.ts',
            'test/e2e/readme.test.ts',
          ],
          environment: 'node',
          testTimeout: 30_000,
          hookTimeout: 120_000,
        },
      },
      {
        extends: true,
        test: {
          name: 'e2e-browser',
          include: ['test/e2e/browser.test.ts', 'test/e2e/console.test.ts', 'test/e2e/pusher-browser.test.ts'],
          environment: 'node',
          testTimeout: 45_000,
          hookTimeout: 120_000,
        },
      },
    ],
  },
});
