#!/usr/bin/env bun
/*
 * 001 - simple one echo
 *
 * Adds:   the smallest TCP echo server. It listens on 127.0.0.1:5000, accepts ONE client, replies once with the
 *         first chunk it received uppercased (ASCII a-z only, every other byte unchanged, same length), closes the
 *         connection and exits.
 * Lacks:  logs, just bare prints (002 adds a logger); configuration and CLI arguments (002: an EchoServer class and
 *         --host/--port); a loop, the connection closes after one echo (003); more than one client (004); any
 *         concurrency (005); SIGINT handling (004). Those are the original Python stage's limits, kept on purpose.
 *         Like every stage before 006, it writes each reply once and does not handle a partial write.
 *
 * Try it: bun tcp_echo_server/001-simple-one-echo.ts
 *         then, in another terminal: echo "hello" | nc -N 127.0.0.1 5000      ->  HELLO
 *         (or nc 127.0.0.1 5000, type a line: it comes back uppercased and the server exits; Ctrl-C leaves nc)
 *         The tests run it on a free port through the PORT environment variable (PORT=0 picks one); that
 *         is its only setting. It takes no options (002 adds them): -h says so, anything else is refused.
 */

import type { SocketHandler, TCPSocketListener } from "bun";
import { basename, relative } from "node:path";

const HOST = "127.0.0.1";
const PORT = Number(process.env.PORT || 5000);

// The usage line names the command as it was started, so renaming or copying the stage changes nothing here:
// `bun PATH` for this file, or the name it was built under (`bun run build`: an executable or an installed command).
const THIS_COMMAND = import.meta.path.endsWith(".ts")
  ? `bun ${relative(process.cwd(), import.meta.path)}`
  : basename(import.meta.path);

// Bad input gets one line and a non-zero exit, never a stack trace, even in the smallest stage.
const USAGE = `usage: [PORT=5000] ${THIS_COMMAND}   (no options; stage 002 adds them)`;
const [firstArgument] = process.argv.slice(2);
if (firstArgument === "-h" || firstArgument === "--help") {
  console.log(USAGE);
  process.exit(0);
}
if (firstArgument !== undefined) {
  console.error(`error: unexpected argument "${firstArgument}"; ${USAGE}`);
  process.exit(2);
}
if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) {
  console.error(`error: PORT must be an integer from 0 to 65535, got "${process.env.PORT}"`);
  process.exit(2);
}

// Bytes, not strings: a reply must be exactly as long as the request whatever the client sends.
function toUpperAscii(bytes: Uint8Array): Uint8Array {
  const reply = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!;
    reply[i] = byte >= 0x61 && byte <= 0x7a ? byte - 0x20 : byte; // 'a'..'z' -> 'A'..'Z'
  }
  return reply;
}

let served = false;

const handlers: SocketHandler = {
  open(socket) {
    // One client only: stop accepting as soon as it is here. The process exits once its socket is closed.
    // A second client that raced in before stop() is refused (RST), as the original's unaccepted ones were.
    if (served) return void socket.terminate();
    served = true;
    listener.stop();
    console.log(`Connected by ${socket.remoteAddress}`);
  },
  data(socket, data) {
    const reply = toUpperAscii(data);
    socket.write(reply);
    console.log(`Received ${data.length} bytes, replied ${reply.length} bytes`);
    socket.end();
  },
  close() {
    console.log("Connection closed, bye");
  },
};

let listener: TCPSocketListener;
try {
  listener = Bun.listen({ hostname: HOST, port: PORT, socket: handlers });
} catch (error) {
  const { code, message } = error as NodeJS.ErrnoException;
  console.error(
    `error: cannot listen on ${HOST}:${PORT}: ${code === "EADDRINUSE" ? "address already in use" : message}`,
  );
  process.exit(1);
}

console.log(`listening on ${HOST}:${listener.port}`);
