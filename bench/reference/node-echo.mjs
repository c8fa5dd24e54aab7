#!/usr/bin/env node
// The Node.js reference for the echo benchmark: node:net, uppercase each chunk, write it (Node buffers what the
// kernel does not take). Run it with the `node` binary. Usage: node bench/reference/node-echo.mjs [--host H]
// [--port P]; prints `listening on HOST:PORT` like the stages.
import { createServer } from "node:net";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: { host: { type: "string", default: "127.0.0.1" }, port: { type: "string", default: "0" } },
});

function toUpperAscii(bytes) {
  const reply = Buffer.allocUnsafe(bytes.length);
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i];
    reply[i] = byte >= 0x61 && byte <= 0x7a ? byte - 0x20 : byte;
  }
  return reply;
}

const server = createServer({ noDelay: true }, (socket) => {
  socket.on("data", (data) => socket.write(toUpperAscii(data)));
  socket.on("error", () => socket.destroy());
});
server.listen({ host: values.host, port: Number(values.port), backlog: 4096 }, () => {
  console.log(`listening on ${values.host}:${server.address().port}`);
});
