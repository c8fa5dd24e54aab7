#!/usr/bin/env bun
/*
 * 005 - concurrent clients, bounded by a semaphore
 *
 * Adds:   clients are served at the same time, at most --max-clients at once: a Semaphore (acquire/release)
 *         hands out the slots; a client over the limit is held (paused, its bytes kept) and gets the next free
 *         slot in arrival order. Each connection runs in a handleConn method. Every log line carries the
 *         connection id and the number of active clients: the Bun counterpart of the original's thread id and
 *         running-thread count, since here one event loop thread serves every connection and a connection id is
 *         what tells them apart. An idle timeout per served client (--idle-timeout, 0 = none): a timer that
 *         every message re-arms. (Not Bun's socket.timeout(): it is checked on a 4-second tick, so it fires up
 *         to 4 s late, and under 4 s it cuts even a client that keeps talking.) Graceful shutdown on
 *         SIGINT/SIGTERM closes every client, served or waiting, and exits at once: nothing blocks, so nothing
 *         can hang (the original's threads did).
 * Lacks:  partial writes are not handled, so a client that sends a lot before it reads loses reply bytes (006);
 *         clients over the limit wait holding a file descriptor each, with no cap below the open-files limit, and
 *         no per-IP limit (008); shutdown cuts replies in flight instead of draining them (009).
 *
 * Try it: bun tcp_echo_server/005-bounded-concurrency.ts --port 5000 --max-clients 2 --idle-timeout 30
 *         nc 127.0.0.1 5000 in three terminals, typing a line in each: the third is answered only when one of
 *         the first two quits (Ctrl-C).
 *         bun test/002-client.ts -n 500 --port 5000      (many clients, with the default limit of 100)
 *
 * Layout: as in 004, except where marked:
 *         Logger                            each line names its connection and the active count
 *         Semaphore                         new
 *         EchoServerConfig                  new: maxClients, idleTimeout
 *         toUpperAscii; socket options
 *         Client                            new: served, closed, the idle timer
 *         EchoServer
 *           start, onOpen
 *           handleConn                      new: wait for a slot (paused), then be served
 *           onData, onEnd
 *           onIdle                          new: the idle timer fired
 *           onClose                         the slot passes on
 *           shutdown                        closes every client, served or waiting
 *         helpers, HELP, parseConfig        new: --max-clients, --idle-timeout
 *         main
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
// Each line says which connection it is about (or "server") and how many clients are active, as the original's
// lines carried the thread id and the number of running threads.
class Logger {
  private readonly threshold: number;

  constructor(
    level: Level,
    private readonly activeClients: () => string,
  ) {
    this.threshold = LEVELS.indexOf(level);
  }

  private write(level: Level, message: string, connId?: number): void {
    if (LEVELS.indexOf(level) < this.threshold) return;
    const time = pc.dim(new Date().toISOString());
    const label = LEVEL_COLOURS[level](level.toUpperCase().padEnd(5));
    const who = connId === undefined ? "server" : `conn ${connId}`;
    process.stderr.write(`${time} ${label} ${pc.cyan(`[${who} | active ${this.activeClients()}]`)} ${message}\n`);
  }

  debug(message: string, connId?: number): void {
    this.write("debug", message, connId);
  }
  info(message: string, connId?: number): void {
    this.write("info", message, connId);
  }
  warn(message: string, connId?: number): void {
    this.write("warn", message, connId);
  }
  error(message: string, connId?: number): void {
    this.write("error", message, connId);
  }
}

/** Counting semaphore: `acquire()` resolves when a slot is free, strictly in the order it was called. */
class Semaphore {
  private free: number;
  private readonly queue: Array<() => void> = [];

  constructor(readonly size: number) {
    this.free = size;
  }

  acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.queue.push(resolve));
  }

  release(): void {
    const next = this.queue.shift();
    if (next)
      next(); // the slot passes straight to the longest waiter
    else this.free++;
  }

  get taken(): number {
    return this.size - this.free;
  }

  /** Forgets every waiter (at shutdown: their clients are being closed, none will be served). */
  abandonWaiters(): void {
    this.queue.length = 0;
  }
}

interface EchoServerConfig {
  host: string;
  port: number;
  logLevel: Level;
  maxClients: number;
  /** Seconds a served client may stay silent; 0 disables the timeout. */
  idleTimeout: number;
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
  /** Holds a semaphore slot (is being served). */
  served: boolean;
  closed: boolean;
  idleTimer: Timer | undefined;
}

class EchoServer {
  readonly host: string;
  readonly port: number;
  readonly maxClients: number;
  readonly idleTimeout: number;
  private readonly log: Logger;
  private readonly slots: Semaphore;
  private listener: TCPSocketListener<Client> | undefined;
  private nextId = 1;
  /** Every open connection, served or waiting for a slot: shutdown closes them all. */
  private readonly clients = new Set<Socket<Client>>();
  private stopping = false;

  constructor(config: EchoServerConfig) {
    this.host = config.host;
    this.port = config.port;
    this.maxClients = config.maxClients;
    this.idleTimeout = config.idleTimeout;
    this.slots = new Semaphore(config.maxClients);
    this.log = new Logger(config.logLevel, () => `${this.slots.taken}/${this.maxClients}`);
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
    this.log.info(
      `listening on ${formatAddress(this.host, listener.port)} ` +
        `(at most ${this.maxClients} clients at once, ` +
        `idle timeout ${this.idleTimeout ? `${this.idleTimeout} s` : "off"})`,
    );
    this.log.info(`listening socket options: ${formatOptions((listener as WithFd).fd)}`);
    return listener.port;
  }

  private onOpen(socket: Socket<Client>): void {
    socket.data = { id: this.nextId++, served: false, closed: false, idleTimer: undefined };
    this.clients.add(socket);
    this.log.debug(`socket options: ${formatOptions((socket as WithFd).fd)}`, socket.data.id);
    void this.handleConn(socket);
  }

  /** One connection's life: wait for a slot (paused, so its bytes wait in the kernel), then be served. */
  private async handleConn(socket: Socket<Client>): Promise<void> {
    const client = socket.data;
    if (this.slots.taken >= this.maxClients) {
      socket.pause();
      this.log.info(
        `from ${peerAddress(socket)}: all ${this.maxClients} slots taken, ` +
          `waiting (${this.clients.size - this.slots.taken} waiting)`,
        client.id,
      );
    }
    await this.slots.acquire();
    if (client.closed || this.stopping) {
      this.slots.release(); // it left (or we are stopping) while it waited: pass the slot on
      return;
    }
    client.served = true;
    socket.resume();
    if (this.idleTimeout > 0) client.idleTimer = setTimeout(() => this.onIdle(socket), this.idleTimeout * 1000);
    this.log.info(`serving ${peerAddress(socket)}`, client.id);
  }

  // The loop: Bun calls this for every chunk a served client sends, for as long as its connection is open.
  private onData(socket: Socket<Client>, data: Uint8Array): void {
    const client = socket.data;
    this.log.debug(`received ${data.length} bytes`, client.id);
    client.idleTimer?.refresh(); // activity: start the idle clock again
    const reply = toUpperAscii(data);
    socket.write(reply);
    this.log.debug(`replied ${reply.length} bytes`, client.id);
  }

  // The client has nothing more to send (it called shutdown() or close(); `nc -N` does at the end of its input).
  // The replies written so far are delivered; Bun then closes our side too, because allowHalfOpen is off.
  private onEnd(socket: Socket<Client>): void {
    this.log.info("client closed its side (FIN)", socket.data.id);
  }

  private onIdle(socket: Socket<Client>): void {
    this.log.info(`idle for ${this.idleTimeout} s: closing`, socket.data.id);
    socket.end();
  }

  private onClose(socket: Socket<Client>, error?: Error): void {
    const client = clientOf(socket);
    if (client === undefined) return; // its `open` threw: it holds no slot and waits for none
    client.closed = true;
    clearTimeout(client.idleTimer);
    this.clients.delete(socket);
    if (error) this.log.warn(`failed: ${error.message}`, client.id);
    if (client.served) {
      client.served = false;
      this.slots.release();
      if (!this.stopping) this.log.info("done", client.id);
    } else if (!this.stopping) {
      this.log.info("left while waiting", client.id);
    }
  }

  /**
   * A handler threw: Bun hands the exception to `error` (without an `error` handler, or if this one threw too, it
   * would end the process, and every client with it). Only this client pays: its connection is closed with a log
   * line, and the server carries on with the others.
   */
  private onHandlerError(socket: Socket<Client>, error: Error): void {
    const client = clientOf(socket);
    this.log.error(`${client ? "" : "a client being accepted: "}${error.message}; closing that connection`, client?.id);
    socket.terminate();
  }

  /** Stops accepting, closes every client (served or waiting), and reports how many there were. */
  shutdown(signal: string): void {
    if (this.stopping) return;
    this.stopping = true;
    this.log.info(`${signal} received: shutting down`);
    this.listener?.stop();
    const active = this.slots.taken;
    const waiting = this.clients.size - active;
    this.slots.abandonWaiters(); // so that the slots released below are not handed to clients being closed
    for (const socket of this.clients) socket.end();
    this.log.info(`closed ${active} active and ${waiting} waiting client(s); bye`);
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

Serves up to --max-clients clients at once: every message uppercased (ASCII a-z).
Clients over the limit wait for a free slot, in arrival order. SIGINT/SIGTERM: graceful shutdown.

Options:
  --host HOST         address to listen on (default 127.0.0.1)
  --port PORT         port to listen on, 0 for a free one (default 5000)
  --max-clients N     clients served at once; others wait their turn (default 100)
  --idle-timeout S    close a served client silent for S seconds, 0 = never (default 60)
  --log-level LEVEL   debug, info, warn or error (default info)
  -h, --help          show this help
`;

class UsageError extends Error {}

const MAX_TIMER_SECONDS = Math.floor((2 ** 31 - 1) / 1000);

function parseConfig(argv: string[]): EchoServerConfig | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        host: { type: "string", default: "127.0.0.1" },
        port: { type: "string", default: "5000" },
        "max-clients": { type: "string", default: "100" },
        "idle-timeout": { type: "string", default: "60" },
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
  const maxClients = Number(values["max-clients"]);
  if (!/^\d+$/.test(values["max-clients"]) || maxClients < 1) {
    throw new UsageError(`--max-clients must be a positive integer, got "${values["max-clients"]}"`);
  }
  const idleTimeout = Number(values["idle-timeout"]);
  // setTimeout() takes at most 2^31-1 ms (about 24.8 days); beyond that it would fire at once.
  if (!/^\d+(\.\d+)?$/.test(values["idle-timeout"]) || idleTimeout > MAX_TIMER_SECONDS) {
    throw new UsageError(
      `--idle-timeout must be a number of seconds from 0 (never) to ${MAX_TIMER_SECONDS}, ` +
        `got "${values["idle-timeout"]}"`,
    );
  }
  return { host: values.host, port: Number(values.port), logLevel: logLevel as Level, maxClients, idleTimeout };
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
