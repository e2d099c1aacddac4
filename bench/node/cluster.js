'use strict';
// The process model both Node.js baselines share: WORKERS processes in a `cluster`,
// sharing the WebSocket and admin ports, configured from the environment (WS_PORT,
// ADMIN_PORT, WORKERS, REDIS_URL). The primary forks and supervises, prints one JSON
// line {"message":"listening","ws":...,"admin":...} on stderr once every worker
// listens, exits if a worker dies, and takes every worker down on SIGTERM/SIGINT.

const cluster = require('node:cluster');
const os = require('node:os');

const WS_PORT = Number(process.env.WS_PORT || 8000);
const ADMIN_PORT = Number(process.env.ADMIN_PORT || 8001);
const WORKERS = Number(process.env.WORKERS || os.availableParallelism());
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const HOST = '127.0.0.1';

/** Runs the primary in this process if it is the primary, else `runWorker()`. */
function runCluster(runWorker) {
  if (cluster.isPrimary) {
    runPrimary();
    return;
  }
  // A worker never outlives its primary (which may be killed with SIGKILL).
  process.on('disconnect', () => process.exit(0));
  runWorker().catch((e) => {
    console.error(JSON.stringify({ message: 'worker failed', error: String(e) }));
    process.exit(1);
  });
}

function runPrimary() {
  let listening = 0;
  let stopping = false;
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  cluster.on('message', (_worker, msg) => {
    if (msg === 'listening' && ++listening === WORKERS) {
      console.error(JSON.stringify({ message: 'listening', ws: `${HOST}:${WS_PORT}`, admin: `${HOST}:${ADMIN_PORT}` }));
    }
  });
  cluster.on('exit', (_worker, code, signal) => {
    if (!stopping) {
      console.error(JSON.stringify({ message: 'worker exited', code, signal }));
      process.exit(1);
    }
  });
  const stop = () => {
    stopping = true;
    for (const w of Object.values(cluster.workers)) w.kill('SIGKILL');
    setTimeout(() => process.exit(0), 200);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

/** In a worker: starts its WebSocket and admin HTTP servers, then tells the primary. */
async function listen(wsHttp, admin) {
  await Promise.all([
    new Promise((resolve) => wsHttp.listen({ port: WS_PORT, host: HOST, backlog: 4096 }, resolve)),
    new Promise((resolve) => admin.listen({ port: ADMIN_PORT, host: HOST, backlog: 511 }, resolve)),
  ]);
  process.send('listening');
}

module.exports = { runCluster, listen, WORKERS, REDIS_URL };
