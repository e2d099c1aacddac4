// A real redis-server process on a loopback port (no persistence), for the
// end-to-end tests that run two gateways on one Redis. Every started server is
// tracked so a failing test still kills it.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

const running = new Set<RedisServer>();

process.on('exit', () => {
  for (const server of running) server.killNow();
});

/** A port that was free a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** Whether something answers `PING` with `+PONG` on the port. */
async function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    let reply = '';
    socket.setTimeout(500, () => socket.destroy());
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString('utf8');
      if (reply.includes('\r\n')) socket.end();
    });
    socket.on('close', () => resolve(reply.startsWith('+PONG')));
    socket.on('error', () => resolve(false));
  });
}

/** A running redis-server. */
export class RedisServer {
  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
    private readonly dir: string,
    private readonly exited: Promise<void>,
  ) {}

  /** redis://127.0.0.1:port */
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Starts redis-server on a free loopback port and resolves once it answers PING. */
  static async start(): Promise<RedisServer> {
    const port = await freePort();
    const dir = mkdtempSync(path.join(tmpdir(), 'shardcast-js-redis-'));
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
    const child = spawn('redis-server', args, { stdio: 'ignore' });
    const exited = new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      // Not installed: the PING loop below reports it.
      child.once('error', () => resolve());
    });
    const server = new RedisServer(child, port, dir, exited);
    running.add(server);
    const deadline = Date.now() + 10_000;
    while (!(await answersPing(port))) {
      if (Date.now() > deadline) {
        await server.stop();
        throw new Error(`redis-server did not answer on port ${port} within 10 s (apt-get install redis-server)`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return server;
  }

  /** Kills the server and removes its directory. */
  async stop(): Promise<void> {
    this.child.kill('SIGKILL');
    await this.exited;
    running.delete(this);
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Synchronous SIGKILL, for the process exit hook. */
  killNow(): void {
    this.child.kill('SIGKILL');
  }
}
