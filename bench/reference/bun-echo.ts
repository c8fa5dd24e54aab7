#!/usr/bin/env bun
// The minimal reference for the echo benchmark: Bun.listen, uppercase each chunk, write it, nothing else (no write
// queue, no limits, no logs). What a stage costs is measured against this. Usage: bun bench/reference/bun-echo.ts
// [--host 127.0.0.1] [--port 0]; prints `listening on HOST:PORT` like the stages.
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: { host: { type: "string", default: "127.0.0.1" }, port: { type: "string", default: "0" } },
});

function toUpperAscii(bytes: Uint8Array): Uint8Array {
  const reply = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!;
    reply[i] = byte >= 0x61 && byte <= 0x7a ? byte - 0x20 : byte;
  }
  return reply;
}

const listener = Bun.listen({
  hostname: values.host,
  port: Number(values.port),
  socket: {
    data(socket, data) {
      socket.write(toUpperAscii(data));
    },
  },
});
console.log(`listening on ${values.host}:${listener.port}`);
