// The code blocks of this package's README.md, run as a reader would paste them:
// against a live gateway, through the built package (dist/). Every ```js or ```ts
// block carries an HTML comment on a line of its own just before it:
//
//   <!-- test: run -->            Node.js runs the block (a js block: .cjs if it uses
//                                 require(), else .mjs) and it must exit 0 within
//                                 BLOCK_TIMEOUT_MS.
//   <!-- test: skip (why) -->     not run, for the reason given (a backend, a token).
//
// A block without either fails this test, so nothing is left out by accident.
// A ```sh block marked `<!-- test: publish -->` right after a run block holds the
// `curl -X POST …/api/publish -d '…'` a reader runs in a second terminal: its
// request is made, every PUBLISH_EVERY_MS, while that block runs.
//
// In a block, the package name is rewritten to dist/, and the gateway's default
// addresses (localhost or 127.0.0.1, ports 8000 and 8001) to the test gateway's.
// Other imports (`ws`) resolve from this package's node_modules, where the blocks
// are written.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Gateway, killAllGateways } from './gateway';

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const readmePath = path.join(packageRoot, 'README.md');
const BLOCK_TIMEOUT_MS = 20_000;
const PUBLISH_EVERY_MS = 250;

/** A fenced code block of the README and the test marker before it. */
interface CodeBlock {
  /** 1-based line of the opening fence. */
  line: number;
  lang: string;
  code: string;
  marker: string | undefined;
}

function readBlocks(markdown: string): CodeBlock[] {
  const blocks: CodeBlock[] = [];
  const lines = markdown.split('\n');
  let marker: string | undefined;
  for (let i = 0; i < lines.length; i++) {
    const text = lines[i] ?? '';
    const comment = /^<!--\s*test:\s*(.*?)\s*-->\s*$/.exec(text);
    if (comment) {
      marker = comment[1];
      continue;
    }
    const fence = /^(```+)\s*(\S*)/.exec(text);
    if (fence) {
      const close = fence[1] ?? '```';
      const body: string[] = [];
      let j = i + 1;
      while (j < lines.length && !(lines[j] ?? '').startsWith(close)) body.push(lines[j++] ?? '');
      blocks.push({ line: i + 1, lang: fence[2] ?? '', code: body.join('\n'), marker });
      marker = undefined;
      i = j;
      continue;
    }
    // A marker belongs to the block right after it, blank lines aside.
    if (text.trim() !== '') marker = undefined;
  }
  return blocks;
}

const blocks = readBlocks(readFileSync(readmePath, 'utf8'));
const isScript = (block: CodeBlock): boolean => ['js', 'javascript', 'ts', 'typescript'].includes(block.lang);
const runBlocks = blocks.filter((block) => isScript(block) && block.marker === 'run');

/** The publish request of the `publish` block right after `block`, if there is one. */
function publishAfter(block: CodeBlock): { url: string; body: string } | undefined {
  const next = blocks[blocks.indexOf(block) + 1];
  if (next?.marker !== 'publish') return undefined;
  const curl = /curl\s+-X\s+POST\s+(\S+)\s+-d\s+'([^']*)'/.exec(next.code);
  if (!curl) throw new Error(`README.md:${next.line}: a publish block must hold curl -X POST <url> -d '<json>'`);
  return { url: curl[1] ?? '', body: curl[2] ?? '' };
}

let gateway: Gateway;
let workDir: string;

beforeAll(async () => {
  // History and client publishing on, for the History and recovery block.
  gateway = await Gateway.start({ args: ['--history-size', '100', '--allow-client-publish'] });
  // Inside node_modules, so that the blocks' other imports resolve from this package's dependencies.
  const cacheDir = path.join(packageRoot, 'node_modules/.cache');
  mkdirSync(cacheDir, { recursive: true });
  workDir = mkdtempSync(path.join(cacheDir, 'readme-blocks-'));
});

afterAll(async () => {
  await killAllGateways();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

/** Points the package name at dist/ and the gateway's default addresses at the test gateway. */
function rewrite(code: string, commonJs: boolean): string {
  const entry = commonJs ? path.join(packageRoot, 'dist/index.cjs') : pathToFileURL(path.join(packageRoot, 'dist/index.js')).href;
  return code
    .replace(/(['"])@shardcast\/client\1/g, JSON.stringify(entry))
    .replace(/(?:localhost|127\.0\.0\.1):8000\b/g, gateway.wsAddress)
    .replace(/(?:localhost|127\.0\.0\.1):8001\b/g, gateway.adminAddress);
}

/** Runs a file with Node.js; resolves with its exit code (null if killed at the timeout) and output. */
function runNode(file: string, whileRunning: () => Promise<void>): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [file], { cwd: path.dirname(file), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    let running = true;
    const timer = setTimeout(() => child.kill('SIGKILL'), BLOCK_TIMEOUT_MS);
    void (async () => {
      while (running) {
        await whileRunning().catch((error: unknown) => (output += `\n[test] ${String(error)}`));
        await new Promise((wake) => setTimeout(wake, PUBLISH_EVERY_MS));
      }
    })();
    child.once('close', (code) => {
      running = false;
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

it('marks every js and ts block of README.md to run or to skip, with a reason', () => {
  const unmarked = blocks
    .filter((block) => isScript(block) && block.marker !== 'run' && !/^skip \(.+\)$/.test(block.marker ?? ''))
    .map((block) => `README.md:${block.line} (${block.marker ?? 'no marker'})`);
  expect(unmarked).toEqual([]);
  const misplaced = blocks
    .filter((block) => block.marker !== undefined)
    .filter((block) => (isScript(block) ? block.marker === 'publish' : block.marker !== 'publish' || block.lang !== 'sh'))
    .map((block) => `README.md:${block.line} (${block.lang}: ${block.marker ?? ''})`);
  expect(misplaced, 'run and skip mark js or ts blocks; publish marks sh blocks').toEqual([]);
  for (const block of blocks.filter((b) => b.marker === 'publish')) {
    const previous = blocks[blocks.indexOf(block) - 1];
    expect(previous?.marker, `README.md:${block.line}: a publish block follows a run block`).toBe('run');
  }
  expect(runBlocks.length).toBeGreaterThan(0);
});

it.each(runBlocks.map((block) => [`README.md:${block.line}`, block] as const))(
  'runs the block at %s against a live gateway',
  async (_where, block) => {
    // Node.js runs JavaScript as pasted; a runnable TypeScript block would need a compiler in between.
    expect(block.lang, 'a runnable block is js').toMatch(/^(js|javascript)$/);
    const commonJs = /\brequire\(/.test(block.code);
    const file = path.join(workDir, `block-${block.line}.${commonJs ? 'cjs' : 'mjs'}`);
    writeFileSync(file, rewrite(block.code, commonJs));
    const publish = publishAfter(block);
    const result = await runNode(file, async () => {
      if (!publish) return;
      // The request curl -d makes (its default content type included).
      const response = await fetch(rewrite(publish.url, false), {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: publish.body,
        signal: AbortSignal.timeout(5_000),
      });
      if (!response.ok) throw new Error(`publish: HTTP ${response.status} ${await response.text()}`);
    });
    expect(result, result.output).toMatchObject({ code: 0 });
  },
  BLOCK_TIMEOUT_MS + 5_000,
);
