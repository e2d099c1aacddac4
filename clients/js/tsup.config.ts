// Build definitions: the npm package (ESM + CommonJS + type declarations) and
// the browser bundles (ESM and a classic-script IIFE exposing `Shardcast`), used
// by the browser tests and by pages that load the client without a bundler. The
// package has no runtime dependencies, so every output is self-contained.
import { defineConfig } from 'tsup';

// ES2018 so that older browsers and React Native's Metro/Hermes toolchain take the output as is.
const target = 'es2018';

export default defineConfig([
  {
    entry: { index: 'src/index.ts' },
    format: ['esm', 'cjs'],
    dts: true,
    sourcemap: true,
    target,
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
    platform: 'browser',
  },
]);
