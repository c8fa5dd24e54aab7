#!/usr/bin/env bun
/*
 * 004 - half-close, and timeouts
 *
 * Adds:   half-close. TCP lets each side say "I have finished sending" (FIN) while it keeps reading: `nc -N`,
 *         `shutdown(SHUT_WR)`, an HTTP/1.0 client, `printf 'hello' | nc -N proxy 6000`. Both sockets are opened with
 *         allowHalfOpen, so a FIN no longer closes anything: it is passed on to the other side with shutdown(),
 *         but only once everything queued for that side has been written (a FIN overtaking the last bytes would
 *         truncate them), and the other direction keeps flowing until its own FIN. When both FINs have been passed
 *         on, the proxy closes both sockets. A reset or error on one side still closes the other at once, after
 *         what is queued for it; a peer that does not take that within --idle-timeout is cut (RST), so a client
 *         that floods, stops reading and resets cannot leave its upstream connection behind for good.
 *         Two timers: --connect-timeout (the upstream must open within it, or the client is closed and the reason
 *         logged: a host that drops SYNs would otherwise leave the client hanging for minutes) and --idle-timeout
 *         (no byte either way for that long closes both sides). JS timers, not socket.timeout(), which Bun checks
 *         on a ~4 s sweep and which traffic does not reset.
 * Lacks:  limits on clients, graceful shutdown on SIGINT/SIGTERM, a log line per connection (005); several
 *         upstreams (006).
 *
 * Try it: bun tcp_echo_server/005-bounded-concurrency.ts --port 5000
 *         bun tcp_proxy/004-half-close-and-timeouts.ts --port 6000 --upstream 127.0.0.1:5000 --log-level debug
 *         printf 'hello' | nc -N 127.0.0.1 6000      ->  HELLO   (003 prints nothing: the reply lost with the FIN)
 *         bun tcp_proxy/004-half-close-and-timeouts.ts --port 6001 --upstream 127.0.0.1:5000 --idle-timeout 3
 *         nc 127.0.0.1 6001     (say nothing for 3 s: the proxy closes both sides and logs "closed (idle for 3s)")
 *
 * Layout: as in 003, except where marked:
 *         Logger; Address
 *         ProxyConfig                        new: timeouts
 *         EARLY_BYTES_LIMIT, Side, Link, Queue
 *         Timeouts                           new
 *         Connection                         new: the connect and idle timers; sideEnded() and forwardFin()
 *                                            pass a FIN on once the queue in front of it is out; close()
 *         seconds                            new
 *         connectionOf
 *         Proxy                              new: allowHalfOpen and `end` handlers on both sockets
 *         describeError, formatAddress
 *         HELP, parse*(), main               new: --connect-timeout, --idle-timeout (parseSeconds)
 */

import type { Socket, TCPSocketListener } from "bun";
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

  enabled(level: Level): boolean {
    return LEVELS.indexOf(level) >= this.threshold;
  }

  private write(level: Level, message: string): void {
    if (!this.enabled(level)) return;
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

interface Address {
  host: string;
  port: number;
}

interface ProxyConfig {
  host: string;
  port: number;
  upstream: Address;
  timeouts: Timeouts;
  logLevel: Level;
}

/**
 * Most bytes held for a direction whose destination is not connected yet. One `data` event can bring up to
 * 512 KiB, so the queue may briefly hold a little more; the point is that it stops growing.
 */
const EARLY_BYTES_LIMIT = 256 * 1024;

type Side = "client" | "upstream";

/** What each socket carries in `socket.data`: its connection and which end of it this socket is. */
interface Link {
  connection: Connection;
  side: Side;
}

/** Bytes on their way to one socket that it has not taken yet, oldest first. */
class Queue {
  private chunks: Uint8Array[] = [];
  bytes = 0;

  get empty(): boolean {
    return this.bytes === 0;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
  }

  /** Writes as much as `socket` takes; true when everything went out. */
  flushTo(socket: Socket<Link>): boolean {
    while (this.chunks.length > 0) {
      const head = this.chunks[0]!;
      const written = socket.write(head);
      if (written < 0) return false; // closed: `close` will tidy up
      this.bytes -= written;
      if (written < head.length) {
        this.chunks[0] = head.subarray(written);
        return false; // the kernel is full: `drain` calls us again
      }
      this.chunks.shift();
    }
    return true;
  }
}

let nextConnectionId = 1;

interface Timeouts {
  /** Milliseconds to wait for the upstream connection to open. */
  connectMs: number;
  /** Milliseconds without a byte in either direction before the connection is closed; 0 = never. */
  idleMs: number;
}

const other = (side: Side): Side => (side === "client" ? "upstream" : "client");

/** One client, its upstream connection, and a queue for each direction. */
class Connection {
  readonly id = nextConnectionId++;
  readonly client: Socket<Link>;
  upstream: Socket<Link> | undefined;
  readonly toUpstream = new Queue();
  readonly toClient = new Queue();
  /** For the logs: `#id client-address:port` (read once: a closed socket no longer knows its peer). */
  readonly name: string;
  closed = false;
  /** Set once one side has closed: the other is closed as soon as what is queued for it has been written. */
  private closing = false;
  /** FIN received from that side: it will send nothing more, but may still be reading. */
  private readonly ended: Record<Side, boolean> = { client: false, upstream: false };
  /** FIN passed on to that side, once everything queued for it had been written. */
  private readonly finSent: Record<Side, boolean> = { client: false, upstream: false };
  private connectTimer: Timer | undefined;
  private idleTimer: Timer | undefined;
  private lastActivity = performance.now();

  constructor(
    client: Socket<Link>,
    private readonly log: Logger,
    private readonly timeouts: Timeouts,
  ) {
    this.client = client;
    this.name = `#${this.id} ${formatAddress(client.remoteAddress, client.remotePort)}`;
    // Timers, not socket.timeout(): Bun checks that one on a coarse sweep and traffic does not reset it.
    this.connectTimer = setTimeout(() => {
      this.close(`upstream connect timed out after ${seconds(timeouts.connectMs)}`, "warn");
    }, timeouts.connectMs);
    if (timeouts.idleMs > 0) this.armIdleTimer(timeouts.idleMs);
  }

  private socket(side: Side): Socket<Link> | undefined {
    return side === "client" ? this.client : this.upstream;
  }

  /** The queue of bytes on their way to `side`. */
  private queueTo(side: Side): Queue {
    return side === "client" ? this.toClient : this.toUpstream;
  }

  // Re-arming one timer per chunk would cost more than the bytes: note the time of the last byte instead, and when
  // the timer fires, sleep again for whatever is left of the idle period.
  private armIdleTimer(delayMs: number): void {
    this.idleTimer = setTimeout(() => {
      const idleFor = performance.now() - this.lastActivity;
      if (idleFor >= this.timeouts.idleMs) this.close(`idle for ${seconds(this.timeouts.idleMs)}`, "info");
      else this.armIdleTimer(this.timeouts.idleMs - idleFor);
    }, delayMs);
  }

  /** The upstream connection is open: deliver what the client said meanwhile, then let it speak again. */
  upstreamOpened(upstream: Socket<Link>): void {
    if (this.closed) return void upstream.end(); // the client left (or we gave up) while we were connecting
    clearTimeout(this.connectTimer);
    this.upstream = upstream;
    this.log.debug(`${this.name} upstream connected from local port ${upstream.localPort}`);
    if (!this.toUpstream.empty) this.log.debug(`${this.name} delivering ${this.toUpstream.bytes} early bytes`);
    this.flush("upstream");
  }

  /** Bytes arrived on `from`: pass them to the other side, or queue them and stop reading `from` for now. */
  forward(from: Side, chunk: Uint8Array): void {
    if (this.closed) return; // the other side has closed: nothing can reach it any more
    this.lastActivity = performance.now();
    const queue = this.queueTo(other(from));
    const source = this.socket(from)!;
    const destination = this.socket(other(from));
    if (destination === undefined) {
      // The upstream is not connected yet: keep the bytes, in order, but only so many.
      queue.push(chunk);
      if (queue.bytes >= EARLY_BYTES_LIMIT) source.pause();
      return;
    }
    if (queue.empty) {
      const written = destination.write(chunk);
      if (written >= chunk.length || written < 0) return;
      queue.push(chunk.subarray(written));
    } else {
      queue.push(chunk); // older bytes are still waiting: these go after them
    }
    this.log.debug(`${this.name} ${other(from)} is slow, ${queue.bytes} bytes queued`);
    source.pause(); // backpressure: read no more from this side until the other has taken the queue
  }

  /**
   * `to` can take bytes again (`drain`, or the upstream just opened): write its queue, then read its peer again,
   * or, if the peer has finished sending, pass its FIN on now that nothing is left in front of it.
   */
  flush(to: Side): void {
    const socket = this.socket(to);
    if (socket === undefined) return;
    if (!this.queueTo(to).flushTo(socket)) return;
    if (this.closing) return void socket.end();
    if (this.ended[other(to)]) this.forwardFin(to);
    else this.socket(other(to))?.resume();
  }

  /** `side` sent FIN: it has finished sending. The other direction goes on until its own FIN. */
  sideEnded(side: Side): void {
    this.ended[side] = true;
    this.log.debug(`${this.name} ${side} finished sending (FIN)`);
    if (this.socket(other(side)) !== undefined && this.queueTo(other(side)).empty) this.forwardFin(other(side));
  }

  private forwardFin(to: Side): void {
    if (this.finSent[to] || this.closed) return;
    this.finSent[to] = true;
    this.socket(to)!.shutdown(); // FIN, and keep reading what `to` still has to say
    this.log.debug(`${this.name} FIN passed on to ${to}`);
    if (this.finSent.client && this.finSent.upstream) this.close("both sides finished", "info");
  }

  /**
   * One side has closed: close the other once what is queued for it is out. Without an error this is a FIN too:
   * when our FIN to a side has already gone, Bun reports that side's own FIN as `close`, not `end`.
   */
  sideClosed(side: Side, error?: Error): void {
    if (this.closed) return void this.clearTimers(); // the other socket, closed before: nothing left to wait for
    this.closed = true;
    this.clearTimers();
    const finished = !error && this.finSent[side];
    const reason = error
      ? `${side} connection failed: ${error.message}`
      : finished
        ? "both sides finished"
        : `${side} closed`;
    this.log.info(`${this.name} closed (${reason})`);
    const peer = this.socket(other(side));
    if (this.queueTo(other(side)).empty) return void peer?.end();
    // What `side` sent last is still queued for the peer: `flush` ends the peer once it has taken it. The peer's
    // answers can go nowhere now, yet a peer may wait for us to read them before it takes the rest (an echo server
    // does): read it again and drop what it says (`forward`), or both would wait forever, holding both sockets.
    // A peer that does not take the rest within --idle-timeout is cut.
    this.closing = true;
    if (peer === undefined) return; // not connected yet: `upstreamOpened` drops it
    peer.resume();
    if (this.timeouts.idleMs > 0)
      this.idleTimer = setTimeout(() => this.cutLeftover(other(side)), this.timeouts.idleMs);
  }

  private cutLeftover(to: Side): void {
    this.log.warn(`${this.name} ${to} did not take the last ${this.queueTo(to).bytes} bytes in time: cut`);
    this.socket(to)?.terminate();
  }

  /** Closes both sides now (timeouts; both FINs passed on). */
  close(reason: string, level: "info" | "warn"): void {
    if (this.closed) return;
    this.closed = true;
    this.clearTimers();
    this.log[level](`${this.name} closed (${reason})`);
    this.client.end();
    this.upstream?.end();
  }

  private clearTimers(): void {
    clearTimeout(this.connectTimer);
    clearTimeout(this.idleTimer);
  }
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(ms % 1000 === 0 ? 0 : ms % 100 === 0 ? 1 : 3)}s`;
}

/**
 * The connection a socket belongs to, or undefined before `open` has set `socket.data`. Bun still calls the other
 * handlers for such a socket: after `open` threw, or after it turned away a client that was already gone.
 */
function connectionOf(socket: Socket<Link>): Connection | undefined {
  return (socket.data as Link | undefined)?.connection;
}

/** A TCP proxy: every client accepted on host:port gets its own connection to the upstream. */
class Proxy {
  readonly host: string;
  readonly port: number;
  readonly upstream: Address;
  readonly timeouts: Timeouts;
  private readonly log: Logger;
  private listener: TCPSocketListener<Link> | undefined;

  constructor(config: ProxyConfig) {
    this.host = config.host;
    this.port = config.port;
    this.upstream = config.upstream;
    this.timeouts = config.timeouts;
    this.log = new Logger(config.logLevel);
  }

  /** Binds and starts accepting; returns the port actually bound (useful with --port 0). */
  start(): number {
    const listener = Bun.listen<Link>({
      hostname: this.host,
      port: this.port,
      allowHalfOpen: true, // a client's FIN must not close its socket: the reply may still be on its way
      socket: {
        open: (socket) => this.onClientOpen(socket),
        data: (socket, data) => connectionOf(socket)?.forward("client", data),
        drain: (socket) => connectionOf(socket)?.flush("client"),
        end: (socket) => connectionOf(socket)?.sideEnded("client"),
        close: (socket, error) => connectionOf(socket)?.sideClosed("client", error),
        error: (socket, error) => this.onHandlerError(socket, error),
      },
    });
    this.listener = listener;
    const upstream = formatAddress(this.upstream.host, this.upstream.port);
    this.log.info(`listening on ${formatAddress(this.host, listener.port)}, forwarding to ${upstream}`);
    return listener.port;
  }

  private onClientOpen(client: Socket<Link>): void {
    // A client that resets before the accept completes reaches `open` with no address: it is gone already.
    if (!client.remoteAddress) return void client.terminate();
    const connection = new Connection(client, this.log, this.timeouts);
    client.data = { connection, side: "client" }; // a fresh object: the listen-level `data` is shared by all
    this.log.info(`${connection.name} connected`);
    this.connectUpstream(connection);
  }

  /**
   * A handler threw (Bun passes the exception to `error`). Only that connection pays: it is closed, with a log
   * line, and every other client carries on. Before `open` has set `socket.data` there is no connection yet.
   */
  private onHandlerError(socket: Socket<Link>, error: Error): void {
    const connection = connectionOf(socket);
    this.log.error(`${connection?.name ?? "a client being accepted"}: ${error.message}; closing that connection`);
    if (connection) connection.close(`${error.message} in a handler`, "warn");
    else socket.terminate();
  }

  private connectUpstream(connection: Connection): void {
    const target = formatAddress(this.upstream.host, this.upstream.port);
    Bun.connect<Link>({
      hostname: this.upstream.host,
      port: this.upstream.port,
      data: { connection, side: "upstream" },
      allowHalfOpen: true,
      socket: {
        open: (socket) => connection.upstreamOpened(socket),
        data: (_socket, data) => connection.forward("upstream", data),
        drain: () => connection.flush("upstream"),
        end: () => connection.sideEnded("upstream"),
        close: (_socket, error) => connection.sideClosed("upstream", error),
        error: (socket, error) => this.onHandlerError(socket, error),
        connectError: () => {}, // the promise rejects too, and is handled below
      },
    }).catch((error: NodeJS.ErrnoException) => {
      // Nothing to say to the client but goodbye: it must not hang.
      connection.close(`cannot connect to upstream ${target}: ${describeError(error)}`, "warn");
    });
  }
}

function describeError(error: NodeJS.ErrnoException): string {
  if (error.code === "ECONNREFUSED") return "connection refused";
  if (error.code === "ENOTFOUND" || error.code === "EAI_NONAME") return "host not found";
  return error.code ?? error.message;
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

Forwards every TCP connection accepted on HOST:PORT to the upstream, bytes intact in both directions.

Options:
  --host HOST           address to listen on (default 127.0.0.1)
  --port PORT           port to listen on, 0 for a free one (default 6000)
  --upstream HOST:PORT  where to forward connections (default 127.0.0.1:5000); IPv6 as [::1]:5000
  --connect-timeout S   seconds to wait for the upstream connection to open (default 5)
  --idle-timeout S      seconds without traffic either way before closing both sides, 0 = never (default 300)
  --log-level LEVEL     debug, info, warn or error (default info)
  -h, --help            show this help
`;

class UsageError extends Error {}

function parsePort(text: string, flag: string): number {
  if (!/^\d+$/.test(text) || Number(text) > 65535) {
    throw new UsageError(`${flag} must be an integer from 0 to 65535, got "${text}"`);
  }
  return Number(text);
}

/** Seconds on the command line (fractions allowed: 0.25), milliseconds inside. */
function parseSeconds(text: string, flag: string, zeroAllowed: boolean): number {
  const value = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || (value === 0 && !zeroAllowed) || value > 86_400) {
    throw new UsageError(
      `${flag} must be a number of seconds ${zeroAllowed ? "from 0" : "above 0"} to 86400, got "${text}"`,
    );
  }
  return Math.round(value * 1000);
}

function parseAddress(text: string, flag: string): Address {
  const match = text.match(/^(?:\[([^\]]+)\]|([^:\s]+)):(\d+)$/);
  if (!match) throw new UsageError(`${flag} must look like HOST:PORT or [IPV6]:PORT, got "${text}"`);
  const port = Number(match[3]);
  if (port < 1 || port > 65535) throw new UsageError(`${flag} needs a port from 1 to 65535, got "${text}"`);
  return { host: match[1] ?? match[2]!, port };
}

function parseConfig(argv: string[]): ProxyConfig | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        host: { type: "string", default: "127.0.0.1" },
        port: { type: "string", default: "6000" },
        upstream: { type: "string", default: "127.0.0.1:5000" },
        "connect-timeout": { type: "string", default: "5" },
        "idle-timeout": { type: "string", default: "300" },
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
  const port = parsePort(values.port, "--port");
  const logLevel = values["log-level"];
  if (!LEVELS.includes(logLevel as Level)) {
    throw new UsageError(`--log-level must be one of ${LEVELS.join(", ")}, got "${logLevel}"`);
  }
  if (values.host === "") throw new UsageError("--host must not be empty");
  const upstream = parseAddress(values.upstream, "--upstream");
  const timeouts: Timeouts = {
    connectMs: parseSeconds(values["connect-timeout"], "--connect-timeout", false),
    idleMs: parseSeconds(values["idle-timeout"], "--idle-timeout", true),
  };
  return { host: values.host, port, upstream, timeouts, logLevel: logLevel as Level };
}

function main(): void {
  let config: ProxyConfig | "help";
  try {
    config = parseConfig(process.argv.slice(2));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`error: ${error.message} (see --help)\n`);
    process.exit(2);
  }
  if (config === "help") {
    process.stdout.write(HELP);
    return;
  }
  const proxy = new Proxy(config);
  try {
    const port = proxy.start();
    console.log(`listening on ${formatAddress(config.host, port)}`);
  } catch (error) {
    const { code, message } = error as NodeJS.ErrnoException;
    const reason = code === "EADDRINUSE" ? "address already in use" : (code ?? message);
    process.stderr.write(`error: cannot listen on ${formatAddress(config.host, config.port)}: ${reason}\n`);
    process.exit(1);
  }
}

main();
