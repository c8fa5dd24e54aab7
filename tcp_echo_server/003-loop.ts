#!/usr/bin/env bun
/*
 * 003 - a loop, and the socket options
 *
 * Adds:   the server answers one client for as many messages as it sends, until the client closes its side
 *         (FIN); then the server closes and exits. A static EchoServer.getSocketOptions(fd) reads the real options
 *         of a socket with libc getsockopt() through bun:ffi (Linux) and the server logs them for its listening
 *         socket (and, at debug level, for the client's socket, where Bun has switched TCP_NODELAY on):
 *           SO_REUSEADDR  bind() may reuse a port whose old connections linger in TIME_WAIT, so a restarted
 *                         server does not fail with "address already in use". Bun sets it on listeners.
 *           SO_REUSEPORT  several sockets (processes) may listen on the same port; the kernel spreads new
 *                         connections between them (stage 011 uses it for one worker per core). Off here.
 *           SO_KEEPALIVE  the kernel probes a connection that has been silent for a long time (2 hours by
 *                         default on Linux) to find peers that vanished. Off by default.
 *           SO_RCVBUF     the kernel's receive buffer for this socket, in bytes (Linux reports double what is
 *           SO_SNDBUF     set, and autotunes between net.ipv4.tcp_rmem / tcp_wmem bounds); when the send buffer
 *                         is full, write() takes fewer bytes than asked: a partial write (006 handles those).
 *           TCP_NODELAY   1 = send small writes at once instead of waiting to coalesce them (Nagle's algorithm).
 *                         Latency over packet count: right for request/response.
 *           SO_ACCEPTCONN 1 on a listening socket.
 * Lacks:  a second client: the server exits once the first one is done (004 serves many in turn); concurrency
 *         (005); SIGINT handling (004); partial writes are not handled (006).
 *
 * The original's puzzle: after `echo "hello" | nc localhost 5000`, nc printed HELLO, stayed open, and the server
 * got no more calls. OpenBSD nc does not send FIN when its stdin ends unless given -N: the connection stays open,
 * nc has nothing more to send, and the server sits in its loop waiting for a next message that never comes. Both
 * sides wait: nothing is wrong, and the server's log shows it. With --log-level debug:
 *   echo "hello" | nc localhost 5000       server logs "received 6 bytes" and nothing more (no FIN); Ctrl-C nc
 *                                          and the server logs "client closed its side (FIN)" and exits.
 *   echo "hello" | nc -N localhost 5000    server logs "received 6 bytes", then at once "client closed its side
 *                                          (FIN)", closes, exits; nc prints HELLO and exits too.
 *
 * Try it: bun tcp_echo_server/003-loop.ts --port 5000 --log-level debug
 *         nc 127.0.0.1 5000           (type lines: each comes back uppercased; Ctrl-C to leave)
 *         it serves one client, then exits; started again: printf 'one\ntwo\n' | nc -N 127.0.0.1 5000
 */

import type { Socket, TCPSocketListener } from "bun";
import { dlopen, FFIType, ptr } from "bun:ffi";
import { parseArgs } from "node:util";
import pc from "picocolors";
import { basename, relative } from "node:path";

const LEVELS = ["debug", "info", "warn", "error"] as const;
type Level = (typeof LEVELS)[number];

const LEVEL_COLOURS: Record<Level, (text: string) => string> = {
  debug: pc.dim,
  info: pc.green,
  warn: pc.yellow,
  error: pc.red,
};

/** Timestamped, levelled log lines on stderr; stdout is kept for the machine-readable listening line. */
class Logger {
  private readonly threshold: number;

  constructor(level: Level) {
    this.threshold = LEVELS.indexOf(level);
  }

  private write(level: Level, message: string): void {
    if (LEVELS.indexOf(level) < this.threshold) return;
    const time = pc.dim(new Date().toISOString());
    const label = LEVEL_COLOURS[level](level.toUpperCase().padEnd(5));
    process.stderr.write(`${time} ${label} ${message}\n`);
  }

  debug(message: string): void {
    this.write("debug", message);
  }
  info(message: string): void {
    this.write("info", message);
  }
  warn(message: string): void {
    this.write("warn", message);
  }
  error(message: string): void {
    this.write("error", message);
  }
}

interface EchoServerConfig {
  host: string;
  port: number;
  logLevel: Level;
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

// Linux values of the constants getsockopt() takes (from <sys/socket.h> and <netinet/tcp.h>).
const SOL_SOCKET = 1;
const IPPROTO_TCP = 6;
const SOCKET_OPTIONS: ReadonlyArray<[name: string, level: number, option: number]> = [
  ["SO_REUSEADDR", SOL_SOCKET, 2],
  ["SO_REUSEPORT", SOL_SOCKET, 15],
  ["SO_KEEPALIVE", SOL_SOCKET, 9],
  ["SO_RCVBUF", SOL_SOCKET, 8],
  ["SO_SNDBUF", SOL_SOCKET, 7],
  ["SO_ACCEPTCONN", SOL_SOCKET, 30],
  ["TCP_NODELAY", IPPROTO_TCP, 1],
];

/** Bun sockets expose their file descriptor, but the typings do not say so. */
type WithFd = { fd?: number };

class EchoServer {
  readonly host: string;
  readonly port: number;
  private readonly log: Logger;
  private listener: TCPSocketListener | undefined;
  private served = false;

  constructor(config: EchoServerConfig) {
    this.host = config.host;
    this.port = config.port;
    this.log = new Logger(config.logLevel);
  }

  /**
   * Reads the options of the socket behind file descriptor `fd` with libc getsockopt(). Returns an empty object
   * where that is not possible (not Linux, no libc), so callers can log "unavailable" instead of failing.
   */
  static getSocketOptions(fd: number): Record<string, number> {
    if (process.platform !== "linux") return {};
    let libc;
    try {
      libc = dlopen("libc.so.6", {
        getsockopt: {
          args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr],
          returns: FFIType.i32,
        },
      });
    } catch {
      return {};
    }
    try {
      const options: Record<string, number> = {};
      const value = new Int32Array(1);
      const length = new Uint32Array(1);
      for (const [name, level, option] of SOCKET_OPTIONS) {
        length[0] = value.byteLength;
        if (libc.symbols.getsockopt(fd, level, option, ptr(value), ptr(length)) === 0) options[name] = value[0]!;
      }
      return options;
    } finally {
      libc.close();
    }
  }

  /** Binds and starts accepting; returns the port actually bound (useful with --port 0). */
  start(): number {
    const listener = Bun.listen({
      hostname: this.host,
      port: this.port,
      socket: {
        open: (socket) => this.onOpen(socket),
        data: (socket, data) => this.onData(socket, data),
        end: (socket) => this.onEnd(socket),
        close: (socket, error) => this.onClose(socket, error),
      },
    });
    this.listener = listener;
    this.log.info(`listening on ${formatAddress(this.host, listener.port)} (one client, as many messages as it sends)`);
    this.log.info(`listening socket options: ${formatOptions((listener as WithFd).fd)}`);
    return listener.port;
  }

  private onOpen(socket: Socket): void {
    // Still one client, as in 002: a second one that raced in before stop() is refused.
    if (this.served) return void socket.terminate();
    this.served = true;
    this.listener?.stop();
    this.log.info(`connected by ${peerAddress(socket)}`);
    this.log.debug(`client socket options: ${formatOptions((socket as WithFd).fd)}`);
  }

  // The loop: Bun calls this for every chunk the client sends, for as long as the connection is open.
  private onData(socket: Socket, data: Uint8Array): void {
    this.log.debug(`received ${data.length} bytes`);
    const reply = toUpperAscii(data);
    socket.write(reply);
    this.log.debug(`replied ${reply.length} bytes`);
  }

  // The client has nothing more to send (it called shutdown() or close(); `nc -N` does at the end of its input).
  // The replies written so far are delivered; Bun then closes our side too, because allowHalfOpen is off.
  private onEnd(socket: Socket): void {
    this.log.info(`client ${peerAddress(socket)} closed its side (FIN)`);
  }

  private onClose(socket: Socket, error?: Error): void {
    if (error) this.log.warn(`connection from ${peerAddress(socket)} failed: ${error.message}`);
    this.log.info("connection closed, exiting");
  }
}

function formatOptions(fd: number | undefined): string {
  const options = fd === undefined ? {} : EchoServer.getSocketOptions(fd);
  const entries = Object.entries(options);
  return entries.length === 0 ? "unavailable on this platform" : entries.map(([k, v]) => `${k}=${v}`).join(" ");
}

// Bun has no address for a client that reset its connection before we asked.
function peerAddress(socket: Socket<unknown>): string {
  return socket.remoteAddress || "(a client already gone)";
}

function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

// The usage line names the command as it was started, so renaming or copying the stage changes nothing here:
// `bun PATH` for this file, or the name it was built under (`bun run build`: an executable or an installed command).
const THIS_COMMAND = import.meta.path.endsWith(".ts")
  ? `bun ${relative(process.cwd(), import.meta.path)}`
  : basename(import.meta.path);

const HELP = `Usage: ${THIS_COMMAND} [options]

Answers one client, every message uppercased (ASCII a-z), until it closes; then exits.
Logs the listening socket's options (SO_REUSEADDR, SO_RCVBUF, TCP_NODELAY, ...).

Options:
  --host HOST         address to listen on (default 127.0.0.1)
  --port PORT         port to listen on, 0 for a free one (default 5000)
  --log-level LEVEL   debug, info, warn or error (default info)
  -h, --help          show this help
`;

class UsageError extends Error {}

function parseConfig(argv: string[]): EchoServerConfig | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        host: { type: "string", default: "127.0.0.1" },
        port: { type: "string", default: "5000" },
        "log-level": { type: "string", default: "info" },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    // parseArgs can explain over several lines; a usage error is one.
    throw new UsageError((error as Error).message.replace(/\s*\n\s*/g, " "));
  }
  if (values.help) return "help";
  if (!/^\d+$/.test(values.port) || Number(values.port) > 65535) {
    throw new UsageError(`--port must be an integer from 0 to 65535, got "${values.port}"`);
  }
  const logLevel = values["log-level"];
  if (!LEVELS.includes(logLevel as Level)) {
    throw new UsageError(`--log-level must be one of ${LEVELS.join(", ")}, got "${logLevel}"`);
  }
  if (values.host === "") throw new UsageError("--host must not be empty");
  return { host: values.host, port: Number(values.port), logLevel: logLevel as Level };
}

function main(): void {
  let config: EchoServerConfig | "help";
  try {
    config = parseConfig(process.argv.slice(2));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`error: ${error.message} (see --help)`);
    process.exit(2);
  }
  if (config === "help") {
    process.stdout.write(HELP);
    return;
  }
  const server = new EchoServer(config);
  try {
    const port = server.start();
    console.log(`listening on ${formatAddress(config.host, port)}`);
  } catch (error) {
    const { code, message } = error as NodeJS.ErrnoException;
    const reason = code === "EADDRINUSE" ? "address already in use" : (code ?? message);
    console.error(`error: cannot listen on ${formatAddress(config.host, config.port)}: ${reason}`);
    process.exit(1);
  }
}

main();
