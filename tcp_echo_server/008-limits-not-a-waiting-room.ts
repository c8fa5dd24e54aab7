#!/usr/bin/env bun
/*
 * 008 - limits instead of a waiting room: refuse what does not fit, below the open-files limit
 *
 * Adds:   005's semaphore gives way to refusal. A waiting room looks kind, but each waiting client holds an open
 *         file descriptor (and a paused socket does not even notice its client leave), so enough of them exhaust
 *         the open-files limit; and it hides overload: the client sees a connection that works but does not
 *         answer, for as long as the queue ahead of it. Refusing is honest (the client sees the close at once,
 *         and can retry or go elsewhere) and bounded. So: at most --max-clients at once and --max-per-ip from
 *         one address; a client over a limit is closed at once, with a log line naming the limit. --max-clients
 *         is capped below the process's open-files limit, and the log says so: past it accept() fails with
 *         EMFILE, and Bun stops accepting and spins a core until descriptors free up.
 * Lacks:  shutdown drops the replies still queued (009); one process on one core (011).
 *
 * Try it: bun tcp_echo_server/008-limits-not-a-waiting-room.ts --port 5000 --max-per-ip 2
 *         nc 127.0.0.1 5000 in two terminals (interactive: each line comes back uppercased), then in a third:
 *         echo hi | nc -N 127.0.0.1 5000    (no answer: refused at once, the log says by which limit; 007 waits)
 *         prlimit --nofile=64:64 bun tcp_echo_server/008-limits-not-a-waiting-room.ts --port 5000
 *             (its first line says how many clients fit under 64 open files)
 *
 * Layout: as in 007, except where marked:
 *         Logger                            active: the connected clients (no semaphore any more)
 *         EchoServerConfig                  new: maxPerIp
 *         toUpperAscii; socket options
 *         clientsAllowedByFdLimit           new: room under the open-files limit
 *         Client                            new: ip, admitted (served is gone)
 *         EchoServer
 *           constructor                     new: --max-clients capped below the open-files limit
 *           start, onOpen
 *           handleConn                      new: admit, or refuse naming the limit
 *           onData, send, flush, countSent, afterFlush, onEnd, onIdle
 *           onClose                         the per-address count goes down
 *           shutdown                        no waiting clients any more
 *         helpers, HELP, parseConfig        new: --max-per-ip; --max-clients defaults to 10000
 *         main
 */

import type { Socket, TCPSocketListener } from "bun";
import { dlopen, FFIType, ptr } from "bun:ffi";
import { readdirSync, readFileSync } from "node:fs";
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

interface EchoServerConfig {
  host: string;
  port: number;
  logLevel: Level;
  maxClients: number;
  /** Connections allowed from one remote address; 0 = no per-address limit. */
  maxPerIp: number;
  /** Bytes of unsent reply a client may have queued before its reading is paused. */
  maxBuffer: number;
  /** Seconds a client may stay silent; 0 disables the timeout. */
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

/** File descriptors kept free for the server itself (listener, stdio, event loop, a log file, a DNS lookup...). */
const RESERVED_FDS = 32;

/**
 * How many client sockets fit under the process's open-files limit (RLIMIT_NOFILE, which Bun raises to the hard
 * limit at start), leaving room for what is already open and a reserve. Undefined where /proc does not tell.
 */
function clientsAllowedByFdLimit(): { limit: number; allowed: number } | undefined {
  try {
    const line = readFileSync("/proc/self/limits", "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max open files"));
    const soft = line?.split(/\s{2,}/)[1];
    if (soft === undefined || soft === "unlimited") return undefined;
    const limit = Number(soft);
    const open = readdirSync("/proc/self/fd").length;
    return { limit, allowed: Math.max(1, limit - open - RESERVED_FDS) };
  } catch {
    return undefined;
  }
}

/** Per-client state, assigned in `open` (the listen-level `data` object would be shared by every socket). */
interface Client {
  id: number;
  ip: string;
  /** Counted in the limits; false for a refused client. */
  admitted: boolean;
  /** Reply bytes the kernel has not taken yet, oldest first: sent on `drain`, never dropped or reordered. */
  queue: Uint8Array[];
  queued: number;
  /** Reading is paused because the queue went over --max-buffer. */
  paused: boolean;
  /** The client sent FIN: close once the queue is flushed. */
  peerEnded: boolean;
  idleTimer: Timer | undefined;
  bytesIn: number;
  bytesOut: number;
  closed: boolean;
}

class EchoServer {
  readonly host: string;
  readonly port: number;
  readonly maxClients: number;
  readonly maxPerIp: number;
  readonly maxBuffer: number;
  readonly idleTimeout: number;
  private readonly log: Logger;
  private listener: TCPSocketListener<Client> | undefined;
  private nextId = 1;
  /** Every admitted connection: the limits count them, shutdown closes them. */
  private readonly clients = new Set<Socket<Client>>();
  private readonly perIp = new Map<string, number>();
  private stopping = false;

  constructor(config: EchoServerConfig) {
    this.host = config.host;
    this.port = config.port;
    this.maxPerIp = config.maxPerIp;
    this.maxBuffer = config.maxBuffer;
    this.idleTimeout = config.idleTimeout;
    this.log = new Logger(config.logLevel, () => `${this.clients.size}/${this.maxClients}`);
    // Past the open-files limit accept() fails with EMFILE, and Bun then stops accepting and spins a core until
    // descriptors free up: better to refuse clients below the limit, cleanly, and say why.
    const fds = clientsAllowedByFdLimit();
    this.maxClients = fds === undefined ? config.maxClients : Math.min(config.maxClients, fds.allowed);
    if (fds !== undefined && config.maxClients > fds.allowed) {
      this.log.warn(
        `--max-clients ${config.maxClients} does not fit under the open-files limit of ${fds.limit}: ` +
          `serving at most ${fds.allowed} clients at once (raise it with ulimit -n)`,
      );
    }
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
      // We close after the queue is flushed; by default Bun would close as soon as the client's FIN arrives.
      allowHalfOpen: true,
      socket: {
        open: (socket) => this.onOpen(socket),
        data: (socket, data) => this.onData(socket, data),
        drain: (socket) => this.flush(socket),
        end: (socket) => this.onEnd(socket),
        close: (socket, error) => this.onClose(socket, error),
        error: (socket, error) => this.onHandlerError(socket, error),
      },
    });
    this.listener = listener;
    const perIp = this.maxPerIp > 0 ? `${this.maxPerIp} per address` : "no per-address limit";
    this.log.info(
      `listening on ${formatAddress(this.host, listener.port)} ` +
        `(at most ${this.maxClients} clients at once, ${perIp}, ` +
        `${formatBytes(this.maxBuffer)} reply queue per client, ` +
        `idle timeout ${this.idleTimeout ? `${this.idleTimeout} s` : "off"})`,
    );
    this.log.info(`listening socket options: ${formatOptions((listener as WithFd).fd)}`);
    return listener.port;
  }

  private onOpen(socket: Socket<Client>): void {
    socket.data = {
      id: this.nextId++,
      ip: peerAddress(socket),
      admitted: false,
      queue: [],
      queued: 0,
      paused: false,
      peerEnded: false,
      idleTimer: undefined,
      bytesIn: 0,
      bytesOut: 0,
      closed: false,
    };
    this.log.debug(`socket options: ${formatOptions((socket as WithFd).fd)}`, socket.data.id);
    this.handleConn(socket);
  }

  /**
   * Admits a connection, or refuses it (closes at once) when a limit is reached: nobody waits in a queue. 005's
   * semaphore held the clients over its limit, each on an open file descriptor, answering nothing for as long as
   * the queue ahead of them: an unbounded waiting room that hides overload. A refusal is seen at once.
   */
  private handleConn(socket: Socket<Client>): void {
    const client = socket.data;
    const fromIp = this.perIp.get(client.ip) ?? 0;
    let refusal: string | undefined;
    if (this.stopping) refusal = "shutting down";
    else if (this.clients.size >= this.maxClients)
      refusal = `${this.clients.size} clients connected, the limit (--max-clients ${this.maxClients})`;
    else if (this.maxPerIp > 0 && fromIp >= this.maxPerIp)
      refusal = `${fromIp} connections from this address, the limit (--max-per-ip ${this.maxPerIp})`;
    if (refusal !== undefined) {
      this.log.warn(`refused ${client.ip}: ${refusal}`, client.id);
      socket.end();
      return;
    }
    client.admitted = true;
    this.clients.add(socket);
    this.perIp.set(client.ip, fromIp + 1);
    if (this.idleTimeout > 0) client.idleTimer = setTimeout(() => this.onIdle(socket), this.idleTimeout * 1000);
    this.log.info(`serving ${client.ip}`, client.id);
  }

  // The loop: Bun calls this for every chunk a client sends, for as long as its connection is open and not paused.
  private onData(socket: Socket<Client>, data: Uint8Array): void {
    const client = socket.data;
    client.bytesIn += data.length;
    this.log.debug(`received ${data.length} bytes`, client.id);
    client.idleTimer?.refresh(); // activity: start the idle clock again
    this.send(socket, toUpperAscii(data));
  }

  /** Writes what the kernel takes now and queues the rest; pauses reading while the queue is over --max-buffer. */
  private send(socket: Socket<Client>, reply: Uint8Array): void {
    const client = socket.data;
    let rest = reply;
    if (client.queued === 0) {
      const written = socket.write(reply);
      if (written > 0) this.countSent(client, written);
      if (written === reply.length) return;
      if (written < 0) return; // the connection is gone; `close` cleans up
      rest = reply.subarray(written);
    }
    client.queue.push(rest); // behind older bytes: order is kept
    client.queued += rest.length;
    if (client.queued > this.maxBuffer && !client.paused) {
      client.paused = true;
      socket.pause();
      this.log.debug(`reply queue at ${client.queued} bytes, over --max-buffer: pausing its reading`, client.id);
    }
  }

  /** Hands queued bytes to the kernel, oldest first, until it takes no more (Bun then calls `drain` again). */
  private flush(socket: Socket<Client>): void {
    const client = socket.data;
    while (client.queue.length > 0) {
      const head = client.queue[0]!;
      const written = socket.write(head);
      if (written < 0) return;
      if (written > 0) {
        client.queued -= written;
        this.countSent(client, written);
        client.idleTimer?.refresh(); // the client is reading: not idle
      }
      if (written < head.length) {
        client.queue[0] = head.subarray(written);
        break;
      }
      client.queue.shift();
    }
    // Resume below half the mark rather than at it, so a slow reader is not paused and resumed for every chunk.
    if (client.paused && client.queued <= this.maxBuffer / 2) {
      client.paused = false;
      socket.resume();
      this.log.debug(`reply queue down to ${client.queued} bytes: reading again`, client.id);
    }
    if (client.queued === 0) this.afterFlush(socket);
  }

  private countSent(client: Client, bytes: number): void {
    client.bytesOut += bytes;
  }

  /** Everything owed is with the kernel: finish a half-close. */
  private afterFlush(socket: Socket<Client>): void {
    if (socket.data.peerEnded) socket.end(); // the client FINned earlier and now has its complete reply
  }

  // The client has nothing more to send (it called shutdown() or close(); `nc -N` does at the end of its input).
  // With allowHalfOpen we can still write: the reply is completed before we close.
  private onEnd(socket: Socket<Client>): void {
    const client = socket.data;
    client.peerEnded = true;
    this.log.info(
      `client closed its side (FIN)${client.queued > 0 ? `: flushing ${client.queued} queued bytes first` : ""}`,
      client.id,
    );
    if (client.queued === 0) socket.end();
  }

  private onIdle(socket: Socket<Client>): void {
    this.log.info(`idle for ${this.idleTimeout} s: closing`, socket.data.id);
    socket.end();
  }

  private onClose(socket: Socket<Client>, error?: Error): void {
    const client = clientOf(socket);
    if (client === undefined || client.closed) return; // undefined: its `open` threw, it was never counted
    client.closed = true;
    clearTimeout(client.idleTimer);
    if (!client.admitted) return;
    this.clients.delete(socket);
    const fromIp = (this.perIp.get(client.ip) ?? 1) - 1;
    if (fromIp > 0) this.perIp.set(client.ip, fromIp);
    else this.perIp.delete(client.ip);
    if (error) this.log.info(`connection failed: ${error.message}`, client.id); // a client's RST is routine
    const lost = client.queued > 0 ? `, ${client.queued} reply bytes undelivered` : "";
    if (!this.stopping)
      this.log.info(`done: received ${client.bytesIn} bytes, sent ${client.bytesOut}${lost}`, client.id);
  }
  /**
   * A handler threw: Bun hands the exception to `error` (without an `error` handler, or if this one threw too, it
   * would end the process, and every client with it). Only this client pays: its connection is closed (RST) with a
   * log line, and the server carries on with the others.
   */
  private onHandlerError(socket: Socket<Client>, error: Error): void {
    const client = clientOf(socket);
    this.log.error(`${client ? "" : "a client being accepted: "}${error.message}; closing that connection`, client?.id);
    socket.terminate();
  }

  /** Stops accepting, closes every client, and reports how many there were. */
  shutdown(signal: string): void {
    if (this.stopping) return;
    this.stopping = true;
    this.log.info(`${signal} received: shutting down`);
    this.listener?.stop();
    const clients = this.clients.size;
    for (const socket of this.clients) socket.end();
    this.log.info(`closed ${clients} client(s); bye`);
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

function formatBytes(bytes: number): string {
  if (bytes % (1024 * 1024) === 0) return `${bytes / (1024 * 1024)} MiB`;
  if (bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}

// The usage line names the command as it was started, so renaming or copying the stage changes nothing here:
// `bun PATH` for this file, or the name it was built under (`bun run build`: an executable or an installed command).
const THIS_COMMAND = import.meta.path.endsWith(".ts")
  ? `bun ${relative(process.cwd(), import.meta.path)}`
  : basename(import.meta.path);

const HELP = `Usage: ${THIS_COMMAND} [options]

Serves up to --max-clients clients at once: every message uppercased (ASCII a-z). Replies are queued when the
client reads slowly, never dropped. Clients over a limit are refused. SIGINT/SIGTERM: graceful shutdown.

Options:
  --host HOST         address to listen on (default 127.0.0.1)
  --port PORT         port to listen on, 0 for a free one (default 5000)
  --max-clients N     clients served at once, capped below the open-files limit (default 10000)
  --max-per-ip N      connections from one address, 0 = no limit (default 0)
  --max-buffer BYTES  unsent reply bytes per client before its reading pauses; k and m suffixes for KiB
                      and MiB (default 256k)
  --idle-timeout S    close a client silent for S seconds, 0 = never (default 60)
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
        "max-clients": { type: "string", default: "10000" },
        "max-per-ip": { type: "string", default: "0" },
        "max-buffer": { type: "string", default: "256k" },
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
  if (!/^\d+$/.test(values["max-per-ip"])) {
    throw new UsageError(`--max-per-ip must be an integer (0 = no limit), got "${values["max-per-ip"]}"`);
  }
  const size = /^(\d+)([km]?)$/i.exec(values["max-buffer"]);
  const maxBuffer = size
    ? Number(size[1]) * { "": 1, k: 1024, m: 1024 * 1024 }[size[2]!.toLowerCase() as "" | "k" | "m"]
    : 0;
  if (maxBuffer < 1) {
    throw new UsageError(
      `--max-buffer must be a positive number of bytes (k, m suffixes allowed), got "${values["max-buffer"]}"`,
    );
  }
  const idleTimeout = Number(values["idle-timeout"]);
  // setTimeout() takes at most 2^31-1 ms (about 24.8 days); beyond that it would fire at once.
  if (!/^\d+(\.\d+)?$/.test(values["idle-timeout"]) || idleTimeout > MAX_TIMER_SECONDS) {
    throw new UsageError(
      `--idle-timeout must be a number of seconds from 0 (never) to ${MAX_TIMER_SECONDS}, ` +
        `got "${values["idle-timeout"]}"`,
    );
  }
  return {
    host: values.host,
    port: Number(values.port),
    logLevel: logLevel as Level,
    maxClients,
    maxPerIp: Number(values["max-per-ip"]),
    maxBuffer,
    idleTimeout,
  };
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
