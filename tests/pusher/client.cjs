// A pusher-js client (Pusher's own JavaScript library, its Node build) against
// shardcast's Pusher endpoint, as an app would use it: tests/pusher_ws.rs runs it.
// Channel auth is signed by the `pusher` server library's authorizeChannel, as
// an app's backend would sign it.
// Usage: node client.cjs <host> <wsPort> <appId> <key> <secret> [sourceAddress]
//   sourceAddress: the local address its sockets connect from (a 127.0.0.x), so
//   that several clients look like several machines to a load balancer that is
//   sticky by client address.
// Prints what it sees as JSON lines:
//   {"type":"state","current":..,"socket_id":..}  connection state changes
//   {"type":"error","data":..}                     connection errors (pusher:error)
//   {"type":"subscribed","channel":..,"members":[..]}  pusher:subscription_succeeded
//       (members: the user ids, on a presence channel)
//   {"type":"member_added"|"member_removed","channel":..,"user_id":..}
//   {"type":"subscription_error","channel":..,"data":..}
//   {"type":"event","channel":..,"event":..,"data":..}  anything else on a channel
// Reads commands as JSON lines on stdin:
//   {"op":"subscribe","channel":..,"forge":bool,"user":{user_id,user_info}}
//       forge: send a wrong signature; user: the member, on a presence channel
//   {"op":"unsubscribe","channel":..}
//   {"op":"trigger","channel":..,"event":..,"data":..}  a client event
//   {"op":"disconnect"}
const net = require("node:net");

const [host, port, appId, key, secret, source] = process.argv.slice(2);
if (source) {
  // pusher-js's Node transport (faye-websocket) calls net.connect without a
  // local address and takes no socket options, so it is given one here.
  const connect = net.connect;
  net.connect = (options, ...rest) => connect.call(net, { ...options, localAddress: source }, ...rest);
}

const Pusher = require("pusher-js");
const PusherServer = require("pusher");
const readline = require("node:readline");

const backend = new PusherServer({ appId, key, secret, useTLS: false, host, port });
const forged = new Set();
const users = new Map();
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");

const pusher = new Pusher(key, {
  wsHost: host,
  wsPort: Number(port),
  forceTLS: false,
  enabledTransports: ["ws"],
  cluster: "x",
  channelAuthorization: {
    customHandler: ({ socketId, channelName }, callback) => {
      if (forged.has(channelName)) {
        callback(null, { auth: `${key}:${"0".repeat(64)}` });
      } else {
        callback(null, backend.authorizeChannel(socketId, channelName, users.get(channelName)));
      }
    },
  },
});

pusher.connection.bind("state_change", ({ current }) =>
  print({ type: "state", current, socket_id: pusher.connection.socket_id ?? null }),
);
pusher.connection.bind("error", (error) => print({ type: "error", data: error?.data ?? error?.error?.data ?? null }));

const channels = new Map();

function subscribe(name) {
  const channel = pusher.subscribe(name);
  channel.bind("pusher:subscription_succeeded", (members) => {
    const ids = [];
    if (members && typeof members.each === "function") members.each((m) => ids.push(String(m.id)));
    print({ type: "subscribed", channel: name, members: members?.each ? ids.sort() : null });
  });
  channel.bind("pusher:member_added", (m) => print({ type: "member_added", channel: name, user_id: String(m.id) }));
  channel.bind("pusher:member_removed", (m) => print({ type: "member_removed", channel: name, user_id: String(m.id) }));
  channel.bind("pusher:subscription_error", (data) => print({ type: "subscription_error", channel: name, data }));
  channel.bind_global((event, data) => {
    if (!event.startsWith("pusher:") && !event.startsWith("pusher_internal:")) {
      print({ type: "event", channel: name, event, data });
    }
  });
  channels.set(name, channel);
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  switch (cmd.op) {
    case "subscribe":
      if (cmd.forge) forged.add(cmd.channel);
      if (cmd.user) users.set(cmd.channel, cmd.user);
      subscribe(cmd.channel);
      break;
    case "unsubscribe":
      pusher.unsubscribe(cmd.channel);
      channels.delete(cmd.channel);
      break;
    case "trigger":
      print({ type: "triggered", ok: channels.get(cmd.channel)?.trigger(cmd.event, cmd.data) ?? false });
      break;
    case "disconnect":
      pusher.disconnect();
      setTimeout(() => process.exit(0), 100);
      break;
  }
});
