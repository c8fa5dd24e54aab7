#!/usr/bin/env bun
/*
 * 004 - many clients, one after another, and a graceful shutdown
 *
 * Adds:   the server keeps running and serves clients in turn, in arrival order. While one client is served, the
 *         newcomers are accepted but held: their sockets are paused, so what they send waits in the kernel's
 *         receive buffer (nothing is lost, nothing is refused) until their turn comes. SIGINT (Ctrl-C) and SIGTERM
 *         (docker stop, kill) trigger a graceful shutdown: stop accepting, close the current and the waiting
 *         clients, log what was closed, exit 0. Per-client state lives in `socket.data`, set in `open`, and no
 *         client can take the server down through it: Bun still calls `error` and `close` for a socket whose
 *         `open` threw before setting it, so those two check (`clientOf`); an exception in any handler reaches
 *         `error`, which closes that client's connection with a log line while the others carry on (with no
 *         `error` handler, one exception would end the process and every connection with it).
 * Lacks:  concurrency: a slow or idle client holds everyone else up (005 serves several at once, bounded); an idle
 *         timeout (005); partial writes are not handled (006); no cap on waiting clients: each holds a file
 *         descriptor until its turn (a paused socket does not even notice its client's FIN), so enough of them
 *         exhaust the open-files limit and the server stalls until they go (008 caps connections below it).
 *
 * Try it: bun tcp_echo_server/004-sequential-clients.ts --port 5000
 *         terminal 2: nc 127.0.0.1 5000              (served: type lines, they come back uppercased)
 *         terminal 3: echo "waiting" | nc -N 127.0.0.1 5000   (held: no answer until terminal 2 quits)
 *         then Ctrl-C the server: it logs the clients it closed and exits 0.
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

/** Per-client state, assigned in `open` (the listen-level `data` object would be shared by every socket). */
interface Client {
  id: number;
}

class EchoServer {
  readonly host: string;
  readonly port: number;
  private readonly log: Logger;
  private listener: TCPSocketListener<Client> | undefined;
  private nextId = 1;
  /** The client being served, if any. */
  private current: Socket<Client> | undefined;
  /** Clients accepted while another was served, paused, in arrival order. */
  private readonly waiting: Socket<Client>[] = [];
  private stopping = false;

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
    const listener = Bun.listen<Client>({
      hostname: this.host,
      port: this.port,
      socket: {
        open: (socket) => this.onOpen(socket),
        data: (socket, data) => this.onData(socket, data),
        end: (socket) => this.onEnd(socket),
        close: (socket, error) => this.onClose(socket, error),
        error: (socket, error) => this.onHandlerError(socket, error),
      },
    });
    this.listener = listener;
    this.log.info(`listening on ${formatAddress(this.host, listener.port)} (clients served one at a time)`);
    this.log.info(`listening socket options: ${formatOptions((listener as WithFd).fd)}`);
    return listener.port;
  }

  private onOpen(socket: Socket<Client>): void {
    socket.data = { id: this.nextId++ };
    this.log.debug(`client #${socket.data.id} socket options: ${formatOptions((socket as WithFd).fd)}`);
    if (this.current === undefined) return this.serve(socket);
    // Busy: hold the newcomer. Paused, Bun does not read from it, so its bytes wait in the kernel for its turn.
    socket.pause();
    this.waiting.push(socket);
    this.log.info(`client #${socket.data.id} from ${peerAddress(socket)} waits (${this.waiting.length} waiting)`);
  }

  private serve(socket: Socket<Client>): void {
    this.current = socket;
    socket.resume();
    this.log.info(`serving client #${socket.data.id} from ${peerAddress(socket)}`);
  }

  // The loop: Bun calls this for every chunk the client sends, for as long as the connection is open.
  private onData(socket: Socket<Client>, data: Uint8Array): void {
    this.log.debug(`client #${socket.data.id}: received ${data.length} bytes`);
    const reply = toUpperAscii(data);
    socket.write(reply);
    this.log.debug(`client #${socket.data.id}: replied ${reply.length} bytes`);
  }

  // The client has nothing more to send (it called shutdown() or close(); `nc -N` does at the end of its input).
  // The replies written so far are delivered; Bun then closes our side too, because allowHalfOpen is off.
  private onEnd(socket: Socket<Client>): void {
    this.log.info(`client #${socket.data.id} closed its side (FIN)`);
  }

  private onClose(socket: Socket<Client>, error?: Error): void {
    if (clientOf(socket) === undefined) return; // its `open` threw: it was never served nor waiting
    if (error) this.log.warn(`client #${socket.data.id} failed: ${error.message}`);
    if (this.stopping) return; // shutdown() closes everyone and reports it
    if (socket === this.current) {
      this.log.info(`client #${socket.data.id} done`);
      this.current = undefined;
      const next = this.waiting.shift();
      if (next) this.serve(next);
      return;
    }
    // A waiting client gave up before its turn.
    const index = this.waiting.indexOf(socket);
    if (index >= 0) this.waiting.splice(index, 1);
    this.log.info(`client #${socket.data.id} left while waiting`);
  }

  /**
   * A handler threw: Bun hands the exception to `error` (without an `error` handler, or if this one threw too, it
   * would end the process, and every client with it). Only this client pays: its connection is closed with a log
   * line, and the server carries on with the others.
   */
  private onHandlerError(socket: Socket<Client>, error: Error): void {
    const who = clientOf(socket) === undefined ? "a client being accepted" : `client #${socket.data.id}`;
    this.log.error(`${who}: ${error.message}; closing that connection`);
    socket.terminate();
  }

  /** Stops accepting, closes the current and the waiting clients, and reports how many there were. */
  shutdown(signal: string): void {
    if (this.stopping) return;
    this.stopping = true;
    this.log.info(`${signal} received: shutting down`);
    this.listener?.stop();
    const waiting = this.waiting.splice(0);
    const current = this.current;
    current?.end();
    for (const socket of waiting) socket.end();
    this.log.info(`closed ${current ? 1 : 0} active and ${waiting.length} waiting client(s); bye`);
  }
}

/**
 * The client a socket belongs to, or undefined before `open` has set `socket.data`: Bun still calls `error` and
 * `close` for a socket whose `open` threw, so those two must not take `socket.data` for granted.
 */
function clientOf(socket: Socket<Client>): Client | undefined {
  return socket.data as Client | undefined;
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

Serves clients one at a time, in arrival order: every message uppercased (ASCII a-z).
Clients that arrive while another is served wait their turn. SIGINT/SIGTERM: graceful shutdown.

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
    for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => server.shutdown(signal));
  } catch (error) {
    const { code, message } = error as NodeJS.ErrnoException;
    const reason = code === "EADDRINUSE" ? "address already in use" : (code ?? message);
    console.error(`error: cannot listen on ${formatAddress(config.host, config.port)}: ${reason}`);
    process.exit(1);
  }
}

main();
