#!/usr/bin/env bun
/*
 * 002 - logging, a class, a command line
 *
 * Adds:   a Logger with levels and timestamps (coloured with picocolors on a terminal) instead of bare prints; an
 *         EchoServer class whose configuration is given once, at construction, and kept in attributes; --host,
 *         --port, --log-level and -h/--help parsed with node:util parseArgs. Usage errors get one line and exit 2;
 *         a port already in use gets one line and exit 1. Once listening it prints one machine-readable line on
 *         stdout, `listening on HOST:PORT`, so scripts and tests can find it (--port 0 picks a free port).
 *         Behaviour is otherwise 001's: one client, one reply, then the server exits.
 * Lacks:  a loop, the connection still closes after one echo (003); more than one client (004); concurrency
 *         (005); SIGINT handling (004); partial writes are not handled (006).
 *
 * Try it: bun tcp_echo_server/002-logging-class-cli.ts --port 5000 --log-level debug
 *         echo "hello" | nc -N 127.0.0.1 5000          ->  HELLO
 *         bun tcp_echo_server/002-logging-class-cli.ts --help
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

  /** Binds and starts accepting; returns the port actually bound (useful with --port 0). */
  start(): number {
    const listener = Bun.listen({
      hostname: this.host,
      port: this.port,
      socket: {
        open: (socket) => this.onOpen(socket),
        data: (socket, data) => this.onData(socket, data),
        close: (socket, error) => this.onClose(socket, error),
      },
    });
    this.listener = listener;
    this.log.info(`listening on ${formatAddress(this.host, listener.port)} (one client, one reply)`);
    return listener.port;
  }

  private onOpen(socket: Socket): void {
    // One client only, as in 001: a second one that raced in before stop() is refused.
    if (this.served) return void socket.terminate();
    this.served = true;
    this.listener?.stop();
    this.log.info(`connected by ${peerAddress(socket)}`);
  }

  private onData(socket: Socket, data: Uint8Array): void {
    this.log.debug(`received ${data.length} bytes`);
    const reply = toUpperAscii(data);
    socket.write(reply);
    this.log.debug(`replied ${reply.length} bytes`);
    socket.end();
  }

  private onClose(socket: Socket, error?: Error): void {
    if (error) this.log.warn(`connection from ${peerAddress(socket)} failed: ${error.message}`);
    this.log.info("connection closed, exiting");
  }
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

Replies once to one client with its bytes uppercased (ASCII a-z), then exits.

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
