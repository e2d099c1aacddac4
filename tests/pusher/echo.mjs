// Laravel Echo (with pusher-js underneath, as a Laravel app's front end uses it)
// against shardcast's Pusher endpoint: tests/pusher_echo.rs runs it. Channel auth
// is signed by the `pusher` server library, as a Laravel backend's broadcaster
// would sign it.
// Usage: node echo.mjs <host> <wsPort> <appId> <key> <secret> <userId> <userName>
// Prints JSON lines:
//   {"type":"connected","socket_id":..}
//   {"type":"event","channel":..,"event":..,"data":..}   a listen() callback
//   {"type":"here","channel":..,"users":[names]}         join().here()
//   {"type":"joining"|"leaving","channel":..,"user":name} join().joining()/leaving()
//   {"type":"subscribed","channel":..}                    subscription succeeded
//   {"type":"error","channel":..,"data":..}              subscription error
//   {"type":"whisper","channel":..,"data":..}           listenForWhisper("typing")
// Reads commands as JSON lines on stdin:
//   {"op":"channel"|"private","name":..,"event":..}  Echo.channel/private(name).listen(event)
//   {"op":"join","name":..}                          Echo.join(name).here().joining().leaving()
//   {"op":"leave","name":..}                         Echo.leave(name)
//   {"op":"whisper","name":..,"event":..,"data":..}  Echo.private(name).whisper(event, data)
//   {"op":"disconnect"}
import Echo from "laravel-echo";
import Pusher from "pusher-js";
import PusherServer from "pusher";
import readline from "node:readline";

const [host, port, appId, key, secret, userId, userName] = process.argv.slice(2);
const backend = new PusherServer({ appId, key, secret, useTLS: false, host, port });
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const me = { user_id: userId, user_info: { name: userName } };

const client = new Pusher(key, {
  wsHost: host,
  wsPort: Number(port),
  forceTLS: false,
  enabledTransports: ["ws"],
  cluster: "x",
  channelAuthorization: {
    customHandler: ({ socketId, channelName }, callback) => {
      const data = channelName.startsWith("presence-") ? me : undefined;
      callback(null, backend.authorizeChannel(socketId, channelName, data));
    },
  },
});
const echo = new Echo({ broadcaster: "pusher", key, client });
client.connection.bind("connected", () => print({ type: "connected", socket_id: echo.socketId() }));

// Echo hands here/joining/leaving the members' user_info: ours carry a name.
const name = (user) => String(user.name);

function watch(channel, name) {
  channel.subscribed(() => print({ type: "subscribed", channel: name }));
  channel.error((data) => print({ type: "error", channel: name, data }));
  return channel;
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  switch (cmd.op) {
    case "channel":
    case "private": {
      const channel = watch(cmd.op === "channel" ? echo.channel(cmd.name) : echo.private(cmd.name), cmd.name);
      channel.listen(cmd.event, (data) => print({ type: "event", channel: cmd.name, event: cmd.event, data }));
      if (cmd.op === "private") {
        channel.listenForWhisper("typing", (data) => print({ type: "whisper", channel: cmd.name, data }));
      }
      break;
    }
    case "join":
      watch(echo.join(cmd.name), cmd.name)
        .here((users) => print({ type: "here", channel: cmd.name, users: users.map(name).sort() }))
        .joining((user) => print({ type: "joining", channel: cmd.name, user: name(user) }))
        .leaving((user) => print({ type: "leaving", channel: cmd.name, user: name(user) }));
      break;
    case "leave":
      echo.leave(cmd.name);
      break;
    case "whisper":
      echo.private(cmd.name).whisper(cmd.event, cmd.data);
      break;
    case "disconnect":
      echo.disconnect();
      process.exit(0);
  }
});
