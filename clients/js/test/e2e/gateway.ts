// Runs the real shardcast gateway binary for end-to-end tests: finds (or builds)
// it, starts it on loopback, reads its addresses from the JSON "listening" log
// line, publishes through its admin HTTP API, and stops or kills it. Every
// started process is tracked so a failing test still kills it.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');

let binaryPath: string | undefined;

/** The gateway binary: `$SHARDCAST_BIN`, else built with `cargo build` at the repository root. */
export function gatewayBinary(): string {
  if (binaryPath) return binaryPath;
  const fromEnv = process.env.SHARDCAST_BIN;
  if (fromEnv) {
    if (!existsSync(fromEnv)) throw new Error(`SHARDCAST_BIN=${fromEnv} does not exist`);
    binaryPath = fromEnv;
    return fromEnv;
  }
  execFileSync('cargo', ['build', '--quiet', '--bin', 'shardcast'], { cwd: repoRoot, stdio: 'inherit' });
  const targetDir = process.env.CARGO_TARGET_DIR
    ? path.resolve(repoRoot, process.env.CARGO_TARGET_DIR)
    : path.join(repoRoot, 'target');
  binaryPath = path.join(targetDir, 'debug', 'shardcast');
  return binaryPath;
}

/**
 * Whether the gateway binary takes a command-line flag, read from its `--help`:
 * tests of a feature the binary may predate probe for it and skip, saying why.
 */
export function gatewaySupports(flag: string): boolean {
  try {
    const help = execFileSync(gatewayBinary(), ['--help'], { encoding: 'utf8', timeout: 30_000 });
    return help.split(/[\s=,[\]]+/).includes(flag);
  } catch {
    return false;
  }
}

const running = new Set<Gateway>();

// A test worker that exits with gateways still running (a failed assertion, a
// timeout) must not leave them behind.
process.on('exit', () => {
  for (const gateway of running) gateway.killNow();
});

/** A running gateway process. */
export class Gateway {
  private exitCode: number | null | undefined;
  private readonly exited: Promise<number | null>;
  readonly logLines: string[] = [];

  private constructor(
    private readonly child: ChildProcess,
    /** The WebSocket address, host:port. */
    readonly wsAddress: string,
    /** The admin address, host:port. */
    readonly adminAddress: string,
    exited: Promise<number | null>,
  ) {
    this.exited = exited;
    void exited.then((code) => (this.exitCode = code));
  }

  /** ws://…/ws */
  get wsUrl(): string {
    return `ws://${this.wsAddress}/ws`;
  }

  /** The port of the WebSocket listener. */
  get wsPort(): number {
    return Number(this.wsAddress.split(':').pop());
  }

  /**
   * Starts the gateway on 127.0.0.1 (`wsPort` 0 picks a free port) and resolves
   * once it logged that it listens.
   */
  static async start(options: { wsPort?: number; args?: string[]; timeoutMs?: number } = {}): Promise<Gateway> {
    const args = [
      '--listen',
      `127.0.0.1:${options.wsPort ?? 0}`,
      '--admin-listen',
      '127.0.0.1:0',
      '--log-format',
      'json',
      '--shards',
      '1',
      '--drain-window',
      '500ms',
      ...(options.args ?? []),
    ];
    const child = spawn(gatewayBinary(), args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const lines: string[] = [];
    const addresses = await new Promise<{ ws: string; admin: string }>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`gateway did not log "listening" within ${options.timeoutMs ?? 10_000} ms:\n${lines.join('\n')}`));
      }, options.timeoutMs ?? 10_000);
      let buffered = '';
      child.stderr?.setEncoding('utf8');
      child.stderr?.on('data', (chunk: string) => {
        buffered += chunk;
        let newline: number;
        while ((newline = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, newline);
          buffered = buffered.slice(newline + 1);
          lines.push(line);
          try {
            const entry = JSON.parse(line) as { message?: string; ws?: string; admin?: string };
            if (entry.message === 'listening' && entry.ws && entry.admin) {
              clearTimeout(timer);
              resolve({ ws: entry.ws, admin: entry.admin });
            }
          } catch {
            // Not every line has to be JSON (a panic message, say); it is kept for the report.
          }
        }
      });
      void exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`gateway exited with ${code} before listening:\n${lines.join('\n')}`));
      });
    });
    const gateway = new Gateway(child, addresses.ws, addresses.admin, exited);
    gateway.logLines.push(...lines);
    child.stderr?.on('data', (chunk: string) => gateway.logLines.push(...chunk.split('\n').filter(Boolean)));
    running.add(gateway);
    return gateway;
  }

  /**
   * Publishes through the admin API (with an idempotency key, if given); resolves
   * with the subscriber count the gateway reports.
   */
  async publish(channel: string, data: unknown, idempotencyKey?: string): Promise<number> {
    const response = await fetch(`http://${this.adminAddress}/api/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(idempotencyKey === undefined ? { channel, data } : { channel, data, idempotency_key: idempotencyKey }),
      signal: AbortSignal.timeout(5_000),
    });
    const body = (await response.json()) as { ok?: boolean; subscribers?: number };
    if (!response.ok || body.ok !== true) throw new Error(`publish failed: ${response.status} ${JSON.stringify(body)}`);
    return body.subscribers ?? 0;
  }

  /** SIGTERM (a graceful drain), then SIGKILL if it does not exit in time; resolves with the exit code. */
  async stop(timeoutMs = 10_000): Promise<number | null> {
    if (this.exitCode !== undefined) {
      running.delete(this);
      return this.exitCode;
    }
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(timer);
    running.delete(this);
    return code;
  }

  /** Kills the process at once. */
  async kill(): Promise<void> {
    if (this.exitCode === undefined) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
    running.delete(this);
  }

  /** Synchronous SIGKILL (and SIGCONT, in case it was frozen), for the process exit hook. */
  killNow(): void {
    if (this.exitCode !== undefined) return;
    this.child.kill('SIGCONT');
    this.child.kill('SIGKILL');
  }

  /** Freezes (SIGSTOP) or thaws (SIGCONT) the process: its sockets stay open but nothing answers. */
  freeze(frozen: boolean): void {
    this.child.kill(frozen ? 'SIGSTOP' : 'SIGCONT');
  }
}

/** Kills every gateway still running; for afterAll/afterEach hooks. */
export async function killAllGateways(): Promise<void> {
  await Promise.all(
    Array.from(running, async (gateway) => {
      gateway.freeze(false);
      await gateway.kill();
    }),
  );
}

/** Waits until `condition` holds, polling; throws with `what` after `timeoutMs`. */
export async function waitFor(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * Starts a gateway on a port that was just free. Restart tests need a fixed port,
 * so it is taken from a first start on port 0 and reused.
 */
export async function restartOnSamePort(gateway: Gateway, args?: string[]): Promise<Gateway> {
  const port = gateway.wsPort;
  await gateway.stop();
  return Gateway.start({ wsPort: port, args });
}
