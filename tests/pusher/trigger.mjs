// Publishes through shardcast's Pusher HTTP API with Pusher's own server library
// (the `pusher` npm package), as a backend would: tests/pusher_api.rs runs it.
// Usage: node trigger.mjs <host> <port> <appId> <key> <secret> <mode> <json args>
//   mode trigger: args = {"channels": [...], "event": "...", "data": ..., "socket_id"?: "..."}
//   mode batch:   args = [{"channel": "...", "name": "...", "data": ...}, ...]
// Prints the HTTP status; a refused request prints its status too.
import Pusher from "pusher";

const [host, port, appId, key, secret, mode, json] = process.argv.slice(2);
const pusher = new Pusher({ appId, key, secret, host, port, useTLS: false });
const args = JSON.parse(json);
try {
  const response =
    mode === "batch"
      ? await pusher.triggerBatch(args)
      : await pusher.trigger(args.channels, args.event, args.data, args.socket_id ? { socket_id: args.socket_id } : {});
  console.log(response.status);
} catch (e) {
  console.log(e.status ?? `error ${e.message}`);
}
