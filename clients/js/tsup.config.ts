// Build definitions: the npm package (ESM + CommonJS + type declarations) and
// the browser bundles (ESM and a classic-script IIFE exposing `Shardcast`), used
// by the browser tests and by pages that load the client without a bundler. The
// package has no runtime dependencies, so every output is self-contained.
import { readFileSync } from 'node:fs';
import { defineConfig } from 'tsup';

// The version the client names in its connect frame (src/connection.ts), from package.json.
const { version } = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8')) as { version: string };
const define = { __SHARDCAST_CLIENT_VERSION__: JSON.stringify(version) };

// ES2018 so that older browsers and React Native's Metro/Hermes toolchain take the output as is.
const target = 'es2018';

export default defineConfig([
  {
    entry: { index: 'src/index.ts' },
    format: ['esm', 'cjs'],
    dts: true,
    sourcemap: true,
    target,
    define,
    platform: 'neutral',
  },
  {
    entry: { 'shardcast.browser': 'src/index.ts' },
    format: ['esm', 'iife'],
    globalName: 'Shardcast',
    outExtension: ({ format }) => ({ js: format === 'iife' ? '.global.js' : '.mjs' }),
    minify: true,
    sourcemap: true,
    target,
    define,
    platform: 'browser',
  },
]);
