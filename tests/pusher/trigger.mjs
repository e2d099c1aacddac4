// Drives shardcast's Pusher HTTP API with Pusher's own server library (the
// `pusher` npm package), as a backend would: tests/pusher_api.rs runs it.
// Usage: node trigger.mjs <host> <port> <appId> <key> <secret> <mode> <json args>
//   mode trigger:   args = {"channels": [...], "event": "...", "data": ..., "socket_id"?: "..."}
//   mode batch:     args = [{"channel": "...", "name": "...", "data": ...}, ...]
//   mode get:       args = {"path": "/channels...", "params": {...}}
//   mode terminate: args = {"user": "..."}
// Prints the HTTP status (trigger, batch, terminate), or for get one JSON line
// {"status", "body"}; a refused request prints its status too.
import Pusher from "pusher";

const [host, port, appId, key, secret, mode, json] = process.argv.slice(2);
const pusher = new Pusher({ appId, key, secret, host, port, useTLS: false });
const args = JSON.parse(json);

async function run() {
  switch (mode) {
    case "batch":
      return pusher.triggerBatch(args);
    case "get":
      return pusher.get({ path: args.path, params: args.params ?? {} });
    case "terminate":
      return pusher.terminateUserConnections(args.user);
    default:
      return pusher.trigger(args.channels, args.event, args.data, args.socket_id ? { socket_id: args.socket_id } : {});
  }
}

try {
  const response = await run();
  if (mode === "get") {
    console.log(JSON.stringify({ status: response.status, body: await response.json() }));
  } else {
    console.log(response.status);
  }
} catch (e) {
  if (mode === "get") {
    console.log(JSON.stringify({ status: e.status ?? 0, body: e.body ?? e.message }));
  } else {
    console.log(e.status ?? `error ${e.message}`);
  }
}
