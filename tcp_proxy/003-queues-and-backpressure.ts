#!/usr/bin/env bun
/*
 * 003 - queues and backpressure: every byte gets through, in order
 *
 * Adds:   a Queue per direction, so that no byte is lost whatever the speed of either side (002 wrote each chunk
 *         once and dropped what did not fit):
 *         - bytes the client sends before the upstream connection is open are held in that direction's queue and
 *           delivered first once it opens; the queue is bounded (256 KiB): past that the proxy stops reading the
 *           client until the upstream is there, so a fast client cannot fill the proxy's memory;
 *         - a partial write keeps the rest in the queue, the proxy stops reading the sending side (pause) and
 *           flushes the queue on `drain`, then reads again (resume): backpressure, in both directions, so a slow
 *           reader slows the writer down instead of growing the proxy's memory or losing bytes;
 *         - when one side closes, what it sent last still goes to the other, which is read meanwhile (what it says
 *           is dropped: nobody is left to hear it) so that neither waits for the other forever.
 * Lacks:  half-close: when the client finishes sending (FIN, `nc -N`), Bun closes that socket and the proxy closes
 *         the upstream once its queue is flushed, so the reply is lost (004); connect and idle timeouts (004);
 *         limits, graceful shutdown, a log line per connection (005); several upstreams (006).
 *
 * Try it: bun tcp_echo_server/005-bounded-concurrency.ts --port 5000
 *         bun tcp_proxy/003-queues-and-backpressure.ts --port 6000 --upstream 127.0.0.1:5000
 *         (printf 'hello\n'; sleep 1) | nc -q 0 127.0.0.1 6000   -> HELLO: the early bytes were held, then
 *                                                               delivered (002 usually prints nothing)
 *         nc -d -l 127.0.0.1 5003 | (sleep 2; wc -c)           (an upstream that reads nothing for 2 s, then
 *                                                               counts what it got)
 *         bun tcp_proxy/003-queues-and-backpressure.ts --port 6001 --upstream 127.0.0.1:5003 --log-level debug
 *         head -c 20000000 /dev/zero | nc -N 127.0.0.1 6001    -> the upstream counts 20000000, and the log says
 *                                                               "upstream is slow, N bytes queued" (002: ~4 MB)
 *
 * Layout: as in 002, except where marked:
 *         Logger; Address, ProxyConfig
 *         EARLY_BYTES_LIMIT                  new: how much the client may say before the upstream is there
 *         Side, Link
 *         Queue                              new: bytes a socket has not taken yet, and flushTo()
 *         Connection                         new: a queue each way; forward() queues and pauses, flush() on
 *                                            drain resumes; sideClosed() waits for the queue
 *         connectionOf
 *         Proxy                              new: `drain` handlers
 *         describeError, formatAddress; HELP, parse*(), main
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

  constructor(
    client: Socket<Link>,
    private readonly log: Logger,
  ) {
    this.client = client;
    this.name = `#${this.id} ${formatAddress(client.remoteAddress, client.remotePort)}`;
  }

  private socket(side: Side): Socket<Link> | undefined {
    return side === "client" ? this.client : this.upstream;
  }

  /** The queue of bytes on their way to `side`. */
  private queueTo(side: Side): Queue {
    return side === "client" ? this.toClient : this.toUpstream;
  }

  /** The upstream connection is open: deliver what the client said meanwhile, then let it speak again. */
  upstreamOpened(upstream: Socket<Link>): void {
    if (this.closed && this.toUpstream.empty) return void upstream.end(); // the client left while we connected
    this.upstream = upstream;
    this.log.debug(`${this.name} upstream connected from local port ${upstream.localPort}`);
    if (!this.toUpstream.empty) this.log.debug(`${this.name} delivering ${this.toUpstream.bytes} early bytes`);
    this.flush("upstream");
  }

  /** Bytes arrived on `from`: pass them to the other side, or queue them and stop reading `from` for now. */
  forward(from: Side, chunk: Uint8Array): void {
    if (this.closed) return; // the other side has closed: nothing can reach it any more
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

  /** `to` can take bytes again (`drain`, or the upstream just opened): write its queue, then read its peer again. */
  flush(to: Side): void {
    const socket = this.socket(to);
    if (socket === undefined) return;
    if (!this.queueTo(to).flushTo(socket)) return;
    if (this.closing) return void socket.end();
    this.socket(other(to))?.resume();
  }

  /** Something went wrong in the proxy itself: drop both sides now (RST), queued bytes included. */
  abort(): void {
    this.client.terminate();
    this.upstream?.terminate();
  }

  /** One side has closed: close the other once what is queued for it is out. */
  sideClosed(side: Side, error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    const reason = error ? `${side} connection failed: ${error.message}` : `${side} closed`;
    this.log.info(`${this.name} closed (${reason})`);
    const peer = this.socket(other(side));
    if (this.queueTo(other(side)).empty) return void peer?.end();
    // What `side` sent last is still queued for the peer: `flush` ends the peer once it has taken it (or once it
    // has connected). The peer's answers can go nowhere now, yet a peer may wait for us to read them before it
    // takes the rest (an echo server does): read it again and drop what it says (`forward`), or both would wait
    // forever, holding both sockets.
    this.closing = true;
    peer?.resume();
  }
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
  private readonly log: Logger;
  private listener: TCPSocketListener<Link> | undefined;

  constructor(config: ProxyConfig) {
    this.host = config.host;
    this.port = config.port;
    this.upstream = config.upstream;
    this.log = new Logger(config.logLevel);
  }

  /** Binds and starts accepting; returns the port actually bound (useful with --port 0). */
  start(): number {
    const listener = Bun.listen<Link>({
      hostname: this.host,
      port: this.port,
      socket: {
        open: (socket) => this.onClientOpen(socket),
        data: (socket, data) => connectionOf(socket)?.forward("client", data),
        drain: (socket) => connectionOf(socket)?.flush("client"),
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
    const connection = new Connection(client, this.log);
    client.data = { connection, side: "client" }; // a fresh object: the listen-level `data` is shared by all
    this.log.info(`${connection.name} connected`);
    this.connectUpstream(connection);
  }

  /**
   * A handler threw (Bun passes the exception to `error`). Only that connection pays: it is cut, with a log line,
   * and every other client carries on. Before `open` has set `socket.data` there is no connection yet.
   */
  private onHandlerError(socket: Socket<Link>, error: Error): void {
    const connection = connectionOf(socket);
    this.log.error(`${connection?.name ?? "a client being accepted"}: ${error.message}; closing that connection`);
    if (connection) connection.abort();
    else socket.terminate();
  }

  private connectUpstream(connection: Connection): void {
    const target = formatAddress(this.upstream.host, this.upstream.port);
    Bun.connect<Link>({
      hostname: this.upstream.host,
      port: this.upstream.port,
      data: { connection, side: "upstream" },
      socket: {
        open: (socket) => connection.upstreamOpened(socket),
        data: (_socket, data) => connection.forward("upstream", data),
        drain: () => connection.flush("upstream"),
        close: (_socket, error) => connection.sideClosed("upstream", error),
        error: (socket, error) => this.onHandlerError(socket, error),
        connectError: () => {}, // the promise rejects too, and is handled below
      },
    }).catch((error: NodeJS.ErrnoException) => {
      if (connection.closed) return;
      connection.closed = true;
      this.log.warn(`${connection.name} cannot connect to upstream ${target}: ${describeError(error)}`);
      connection.client.end(); // nothing to say to the client but goodbye: it must not hang
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
  return { host: values.host, port, upstream, logLevel: logLevel as Level };
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
