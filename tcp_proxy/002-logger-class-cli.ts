#!/usr/bin/env bun
/*
 * 002 - a Logger, a Proxy class and a command line; no client can take it down
 *
 * Adds:   structure and safety, around 001's data path (still one write per chunk: see Lacks).
 *         - a Logger on stderr (timestamped, levelled: --log-level), so stdout keeps only the listening line;
 *         - a Proxy class configured once (host, port, upstream, log level) and a Connection per client, in place
 *           of 001's loose handlers: the shape every later stage grows from;
 *         - the command line: --host, --port, --upstream, --log-level, -h/--help; usage errors are one line and
 *           exit 2, a port in use one line and exit 1;
 *         - an upstream that refuses or cannot be reached: the client is closed at once and the reason logged;
 *         - no client can take the proxy down. 001 never looked at its client; a Connection names it (for the
 *           logs), and a client that resets before the accept completes (a port scanner, a health check) reaches
 *           `open` with no address: it is let go. `socket.data` is unset until `open` sets it, so every handler
 *           asks `connectionOf(socket)`; and an exception in one connection's handler (Bun hands it to `error`)
 *           closes that connection with a log line while every other client carries on.
 * Lacks:  bytes still get lost, as in 001 (003 fixes both): what the client sends before the upstream connection
 *         is open is dropped, and write() keeps only what the kernel takes, so a big transfer to a slower reader
 *         is truncated. Half-close: a client's FIN (`nc -N`) closes both connections and the reply is lost (004);
 *         connect and idle timeouts (004); limits, graceful shutdown, a log line per connection (005); several
 *         upstreams (006).
 *
 * Try it: bun tcp_echo_server/005-bounded-concurrency.ts --port 5000
 *         bun tcp_proxy/002-logger-class-cli.ts --port 6000 --upstream 127.0.0.1:5000 --log-level debug
 *         nc 127.0.0.1 6000     (type lines: they come back uppercased; Ctrl-C to quit)
 *         (printf 'hello\n'; sleep 1) | nc -q 0 127.0.0.1 6000   -> usually nothing: sent before the upstream
 *                                                               connection was open, dropped (003 prints HELLO)
 *         bun tcp_proxy/002-logger-class-cli.ts --port 6001 --upstream 127.0.0.1:1
 *         printf 'hi' | nc -N 127.0.0.1 6001     -> nothing, at once; the proxy logs "cannot connect to
 *                                                 upstream 127.0.0.1:1: connection refused"
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

type Side = "client" | "upstream";

/** What each socket carries in `socket.data`: its connection and which end of it this socket is. */
interface Link {
  connection: Connection;
  side: Side;
}

let nextConnectionId = 1;

const other = (side: Side): Side => (side === "client" ? "upstream" : "client");

/** One client and its upstream connection. */
class Connection {
  readonly id = nextConnectionId++;
  readonly client: Socket<Link>;
  upstream: Socket<Link> | undefined;
  /** For the logs: `#id client-address:port` (read once: a closed socket no longer knows its peer). */
  readonly name: string;
  closed = false;

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

  /** The upstream connection is open: from now on the client's bytes have somewhere to go. */
  upstreamOpened(upstream: Socket<Link>): void {
    if (this.closed) return void upstream.end(); // the client left while we connected
    this.upstream = upstream;
    this.log.debug(`${this.name} upstream connected from local port ${upstream.localPort}`);
  }

  /** Bytes arrived on `from`: pass them to the other side. */
  forward(from: Side, chunk: Uint8Array): void {
    // NAIVE, as in 001: dropped if the upstream is not connected yet, and whatever the kernel does not take now
    // is lost (write() returns how much it took). 003 keeps both in a queue.
    this.socket(other(from))?.write(chunk);
  }

  /** Something went wrong in the proxy itself: drop both sides now (RST). */
  abort(): void {
    this.client.terminate();
    this.upstream?.terminate();
  }

  /** One side has closed: close the other. */
  sideClosed(side: Side, error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    const reason = error ? `${side} connection failed: ${error.message}` : `${side} closed`;
    this.log.info(`${this.name} closed (${reason})`);
    this.socket(other(side))?.end();
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

Forwards every TCP connection accepted on HOST:PORT to the upstream, both directions (naively: see the header).

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
