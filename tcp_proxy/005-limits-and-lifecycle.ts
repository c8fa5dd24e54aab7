#!/usr/bin/env bun
/*
 * 005 - limits, graceful shutdown, one log line per connection
 *
 * Adds:   limits: --max-clients (default 1000) and --max-per-ip (default none); a client over a limit is closed as
 *         soon as it connects, before any upstream connection is made, and the refusal is logged. A proxy that
 *         accepts everything runs out of file descriptors (two per client) and then stops accepting anyone.
 *         Lifecycle: on SIGINT or SIGTERM the proxy stops accepting (new connects are refused by the kernel),
 *         lets the open connections finish, and exits 0 when the last one is done or, at the latest, when
 *         --drain-timeout (default 10 s) has passed, closing what is left; a second signal does not wait. This is
 *         what a deploy or a container stop needs: no connection cut in the middle of a reply.
 *         One log line per connection once both of its sockets are closed, in the spirit of HAProxy's tcplog:
 *           #7 127.0.0.1:41234 -> 127.0.0.1:5000 duration=1.204s connect=0.4ms bytes_up=5 bytes_down=5
 *              closed_by=client reason="fin"
 *         closed_by is client, upstream or proxy; reason is fin (a FIN first, then both directions finished),
 *         closed, reset, error CODE, cannot connect..., connect-timeout, idle-timeout, max-clients, max-per-ip or
 *         shutdown. The per-event lines of 004 move to debug level.
 * Lacks:  several upstreams, load balancing, health checks (006); metrics (007), PROXY protocol (008), access
 *         lists (009).
 *
 * Try it: bun tcp_echo_server/005-bounded-concurrency.ts --port 5000
 *         bun tcp_proxy/005-limits-and-lifecycle.ts --port 6000 --upstream 127.0.0.1:5000 --max-clients 1
 *         nc 127.0.0.1 6000        (keep it open, and in a second terminal:)
 *         printf 'hi' | nc -N 127.0.0.1 6000      -> nothing: closed at once, logged as max-clients
 *         Ctrl-C in the proxy's terminal   (SIGINT: the first nc keeps working, new clients are refused, and the
 *                                          proxy exits 0 once that nc quits, or after --drain-timeout 10 s)
 *
 * Layout: as in 004, except where marked:
 *         Logger; Address
 *         ProxyConfig                        new: limits
 *         EARLY_BYTES_LIMIT, Side, Link, Queue, Timeouts
 *         Limits, Closer                     new
 *         Connection                         new: who closed it and why, bytes each way, startTimers(),
 *                                            socketClosed() counts its sockets, logSummary() writes its line
 *         seconds, connectionOf
 *         Proxy                              new: the connections served and per IP; onClientOpen() refuses
 *                                            over a limit; release(); shutdown(), closeAll(), exit()
 *         describeError, formatAddress
 *         HELP, parse*(), main               new: --max-clients, --max-per-ip, --drain-timeout; signals
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
  limits: Limits;
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

interface Limits {
  /** Clients served at once; more are closed as soon as they connect. */
  maxClients: number;
  /** Clients served at once from one IP address; 0 = no limit. */
  maxPerIp: number;
  /** Milliseconds a shutdown waits for open connections to finish before closing them. */
  drainMs: number;
}

const other = (side: Side): Side => (side === "client" ? "upstream" : "client");

/** Who ended a connection, for its log line: one of its two peers, or the proxy itself. */
type Closer = Side | "proxy";

/** One client, its upstream connection, and a queue for each direction. */
class Connection {
  readonly id = nextConnectionId++;
  readonly client: Socket<Link>;
  upstream: Socket<Link> | undefined;
  readonly toUpstream = new Queue();
  readonly toClient = new Queue();
  /** For the logs: `#id client-address:port` (read once: a closed socket no longer knows its peer). */
  readonly name: string;
  readonly clientAddress: string;
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
  // What the connection's log line reports.
  private readonly startedAt = performance.now();
  private connectedAt: number | undefined;
  /** Bytes read from each side (and so sent on to the other). */
  private readonly bytesFrom: Record<Side, number> = { client: 0, upstream: 0 };
  private firstFin: Side | undefined;
  private closedBy: Closer = "proxy";
  private reason = "";
  /** Sockets still open; at zero the connection is over and `onReleased` runs. */
  private openSockets = 1;

  constructor(
    client: Socket<Link>,
    private readonly log: Logger,
    private readonly timeouts: Timeouts,
    private readonly upstreamName: string,
    private readonly onReleased: (connection: Connection) => void,
  ) {
    this.client = client;
    this.clientAddress = client.remoteAddress;
    this.name = `#${this.id} ${formatAddress(client.remoteAddress, client.remotePort)}`;
  }

  /** Starts the connect and idle timers, once the proxy has decided to serve this client. */
  startTimers(): void {
    // Timers, not socket.timeout(): Bun checks that one on a coarse sweep and traffic does not reset it.
    this.connectTimer = setTimeout(() => {
      this.close("proxy", `connect-timeout ${seconds(this.timeouts.connectMs)}`, "warn");
    }, this.timeouts.connectMs);
    if (this.timeouts.idleMs > 0) this.armIdleTimer(this.timeouts.idleMs);
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
      if (idleFor >= this.timeouts.idleMs) this.close("proxy", `idle-timeout ${seconds(this.timeouts.idleMs)}`);
      else this.armIdleTimer(this.timeouts.idleMs - idleFor);
    }, delayMs);
  }

  /** The upstream connection is open: deliver what the client said meanwhile, then let it speak again. */
  upstreamOpened(upstream: Socket<Link>): void {
    if (this.closed) return void upstream.end(); // the client left (or we gave up) while we were connecting
    clearTimeout(this.connectTimer);
    this.upstream = upstream;
    this.openSockets++;
    this.connectedAt = performance.now();
    this.log.debug(`${this.name} upstream connected from local port ${upstream.localPort}`);
    if (!this.toUpstream.empty) this.log.debug(`${this.name} delivering ${this.toUpstream.bytes} early bytes`);
    this.flush("upstream");
  }

  /** Bytes arrived on `from`: pass them to the other side, or queue them and stop reading `from` for now. */
  forward(from: Side, chunk: Uint8Array): void {
    if (this.closed) return; // the other side has closed: nothing can reach it any more
    this.lastActivity = performance.now();
    this.bytesFrom[from] += chunk.length;
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
    this.firstFin ??= side;
    this.log.debug(`${this.name} ${side} finished sending (FIN)`);
    if (this.socket(other(side)) !== undefined && this.queueTo(other(side)).empty) this.forwardFin(other(side));
  }

  private forwardFin(to: Side): void {
    if (this.finSent[to] || this.closed) return;
    this.finSent[to] = true;
    this.socket(to)!.shutdown(); // FIN, and keep reading what `to` still has to say
    this.log.debug(`${this.name} FIN passed on to ${to}`);
    if (this.finSent.client && this.finSent.upstream) this.close(this.firstFin ?? other(to), "fin");
  }

  /**
   * One side has closed: close the other once what is queued for it is out. Without an error this is a FIN too:
   * when our FIN to a side has already gone, Bun reports that side's own FIN as `close`, not `end`.
   */
  sideClosed(side: Side, error?: Error): void {
    this.socketClosed(side);
    if (this.closed) return;
    this.closed = true;
    this.clearTimers();
    const finished = !error && this.finSent[side];
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    this.closedBy = finished ? (this.firstFin ?? side) : side;
    this.reason = error
      ? code === "ECONNRESET"
        ? "reset"
        : `error ${code ?? error.message}`
      : finished
        ? "fin"
        : "closed";
    const peer = this.socket(other(side));
    if (this.queueTo(other(side)).empty) return void peer?.end();
    // What `side` sent last is still queued for the peer: `flush` ends the peer once it has taken it. The peer's
    // answers can go nowhere now, yet a peer may wait for us to read them before it takes the rest (an echo server
    // does): read it again and drop what it says (`forward`), or both would wait forever, holding both sockets and
    // a --max-clients slot. A peer that does not take the rest within --idle-timeout is cut.
    this.closing = true;
    if (peer === undefined) return; // not connected yet: `upstreamOpened` lets it go
    peer.resume();
    if (this.timeouts.idleMs > 0)
      this.idleTimer = setTimeout(() => this.cutLeftover(other(side)), this.timeouts.idleMs);
  }

  private cutLeftover(to: Side): void {
    this.log.warn(`${this.name} ${to} did not take the last ${this.queueTo(to).bytes} bytes in time: cut`);
    this.socket(to)?.terminate();
  }

  private socketClosed(side: Side): void {
    if (side === "upstream" && this.upstream === undefined) return; // one we ended in upstreamOpened: not counted
    if (--this.openSockets === 0) {
      this.clearTimers();
      this.logSummary();
      this.onReleased(this);
    }
  }

  /** Closes both sides now (timeouts, refusals, shutdown, both FINs passed on). */
  close(by: Closer, reason: string, level: "info" | "warn" = "info"): void {
    if (this.closed) return;
    this.closed = true;
    this.clearTimers();
    this.closedBy = by;
    this.reason = reason;
    if (level === "warn") this.log.warn(`${this.name} closing: ${reason}`);
    this.upstream?.end();
    this.client.end();
  }

  private clearTimers(): void {
    clearTimeout(this.connectTimer);
    clearTimeout(this.idleTimer);
  }

  /**
   * One line per connection once both of its sockets are closed, in the spirit of HAProxy's tcplog: who, to
   * where, how long (and how long the upstream took to accept), bytes each way, who ended it and why.
   */
  private logSummary(): void {
    const now = performance.now();
    const connect = this.connectedAt === undefined ? "-" : `${(this.connectedAt - this.startedAt).toFixed(1)}ms`;
    this.log.info(
      `${this.name} -> ${this.upstreamName} duration=${((now - this.startedAt) / 1000).toFixed(3)}s ` +
        `connect=${connect} bytes_up=${this.bytesFrom.client} bytes_down=${this.bytesFrom.upstream} ` +
        `closed_by=${this.closedBy} reason="${this.reason}"`,
    );
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
  readonly limits: Limits;
  private readonly log: Logger;
  private listener: TCPSocketListener<Link> | undefined;
  /** The connections being served (refused ones are not counted). */
  private readonly connections = new Set<Connection>();
  private readonly perIp = new Map<string, number>();
  private draining = false;

  constructor(config: ProxyConfig) {
    this.host = config.host;
    this.port = config.port;
    this.upstream = config.upstream;
    this.timeouts = config.timeouts;
    this.limits = config.limits;
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
    this.log.info(
      `listening on ${formatAddress(this.host, listener.port)}, forwarding to ${upstream} ` +
        `(max ${this.limits.maxClients} clients${this.limits.maxPerIp > 0 ? `, ${this.limits.maxPerIp} per IP` : ""})`,
    );
    return listener.port;
  }

  private onClientOpen(client: Socket<Link>): void {
    // A client that resets before the accept completes reaches `open` with no address: it is gone already.
    if (!client.remoteAddress) return void client.terminate();
    const upstreamName = formatAddress(this.upstream.host, this.upstream.port);
    const connection = new Connection(client, this.log, this.timeouts, upstreamName, (done) => this.release(done));
    client.data = { connection, side: "client" }; // a fresh object: the listen-level `data` is shared by all
    // Over a limit: close at once, before any upstream connection is made. (Bun cannot stop accepting for a
    // while, so a refused client sees its connection open and close; the alternative, not accepting, would
    // leave it waiting in the kernel's backlog instead.)
    const fromThisIp = this.perIp.get(connection.clientAddress) ?? 0;
    if (this.connections.size >= this.limits.maxClients) {
      return connection.close("proxy", `max-clients ${this.limits.maxClients}`, "warn");
    }
    if (this.limits.maxPerIp > 0 && fromThisIp >= this.limits.maxPerIp) {
      return connection.close("proxy", `max-per-ip ${this.limits.maxPerIp}`, "warn");
    }
    this.connections.add(connection);
    this.perIp.set(connection.clientAddress, fromThisIp + 1);
    this.log.debug(`${connection.name} connected (${this.connections.size} clients)`);
    connection.startTimers();
    this.connectUpstream(connection);
  }

  private release(connection: Connection): void {
    if (!this.connections.delete(connection)) return; // a refused one
    const fromThisIp = (this.perIp.get(connection.clientAddress) ?? 1) - 1;
    if (fromThisIp === 0) this.perIp.delete(connection.clientAddress);
    else this.perIp.set(connection.clientAddress, fromThisIp);
    if (this.draining && this.connections.size === 0) this.exit("all connections finished");
  }

  /**
   * A handler threw (Bun passes the exception to `error`). Only that connection pays: it is closed, with a log
   * line, and every other client carries on. Before `open` has set `socket.data` there is no connection yet.
   */
  private onHandlerError(socket: Socket<Link>, error: Error): void {
    const connection = connectionOf(socket);
    this.log.error(`${connection?.name ?? "a client being accepted"}: ${error.message}; closing that connection`);
    if (connection) connection.close("proxy", `${error.message} in a handler`, "warn");
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
      connection.close("upstream", `cannot connect to upstream ${target}: ${describeError(error)}`, "warn");
    });
  }

  /**
   * Graceful shutdown: stop accepting, let the open connections finish on their own, and close whatever is
   * still open when the deadline comes. A second signal does not wait.
   */
  shutdown(signal: string): void {
    if (this.draining) {
      this.log.warn(`${signal} again: closing ${this.connections.size} connections now`);
      return this.closeAll();
    }
    this.draining = true;
    this.listener?.stop(); // stop accepting; open connections carry on
    if (this.connections.size === 0) return this.exit(`${signal}, no open connections`);
    this.log.info(
      `${signal}: no longer accepting, waiting up to ${seconds(this.limits.drainMs)} ` +
        `for ${this.connections.size} connections to finish`,
    );
    setTimeout(() => {
      this.log.warn(`drain deadline reached: closing ${this.connections.size} connections`);
      this.closeAll();
    }, this.limits.drainMs).unref();
  }

  private closeAll(): void {
    for (const connection of [...this.connections]) connection.close("proxy", "shutdown");
    this.exit("shut down");
  }

  private exit(why: string): void {
    this.log.info(`${why}, exiting`);
    process.exit(0);
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
  --max-clients N       clients served at once; more are closed at once (default 1000)
  --max-per-ip N        clients served at once from one IP address, 0 = no limit (default 0)
  --drain-timeout S     on SIGINT/SIGTERM, seconds to let open connections finish (default 10)
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

function parseCount(text: string, flag: string, zeroAllowed: boolean): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || (value === 0 && !zeroAllowed) || value > 1_000_000) {
    throw new UsageError(`${flag} must be an integer ${zeroAllowed ? "from 0" : "from 1"} to 1000000, got "${text}"`);
  }
  return value;
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
        "max-clients": { type: "string", default: "1000" },
        "max-per-ip": { type: "string", default: "0" },
        "drain-timeout": { type: "string", default: "10" },
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
  const limits: Limits = {
    maxClients: parseCount(values["max-clients"], "--max-clients", false),
    maxPerIp: parseCount(values["max-per-ip"], "--max-per-ip", true),
    drainMs: parseSeconds(values["drain-timeout"], "--drain-timeout", true),
  };
  return { host: values.host, port, upstream, timeouts, limits, logLevel: logLevel as Level };
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
    // Before the listening line: whoever reads that line may signal at once.
    process.on("SIGINT", () => proxy.shutdown("SIGINT"));
    process.on("SIGTERM", () => proxy.shutdown("SIGTERM"));
    console.log(`listening on ${formatAddress(config.host, port)}`);
  } catch (error) {
    const { code, message } = error as NodeJS.ErrnoException;
    const reason = code === "EADDRINUSE" ? "address already in use" : (code ?? message);
    process.stderr.write(`error: cannot listen on ${formatAddress(config.host, config.port)}: ${reason}\n`);
    process.exit(1);
  }
}

main();
