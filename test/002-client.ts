#!/usr/bin/env bun
/*
 * 002 - staggered starts, several messages, on Bun.connect
 *
 * Adds:   the original's second client: a pause (--delay ms) between connection starts, so they do not all
 *         arrive in the same instant; each connection sends --messages messages in turn (send one, read and
 *         check its whole reply, send the next), so a server's loop is exercised. Written on Bun.connect, whose
 *         write() does not buffer: it returns how many bytes the kernel took, and the client keeps the rest and
 *         sends it on `drain`. Same summary and exit code as 001 (0 all ok, 1 any failed, 2 usage error).
 *         The default delay (1 ms) spreads -n 500 over half a second: `-n 500` against stage 005 with its default
 *         limit of 100 clients passes with no failures.
 * Lacks:  throughput and latency figures, a fixed duration, pipelining, error counts by class for a load test
 *         (003); per-message timing.
 *
 * Try it: bun tcp_echo_server/005-bounded-concurrency.ts --port 5000
 *         bun test/002-client.ts -n 500 --port 5000
 *         bun test/002-client.ts -n 50 --messages 20 --delay 0 --port 5000
 */

import type { Socket } from "bun";
import { closeSync, openSync, writeSync } from "node:fs";
import { parseArgs } from "node:util";
import pc from "picocolors";
import { basename, relative } from "node:path";

interface ClientConfig {
  host: string;
  port: number;
  connections: number;
  /** Messages sent on each connection, one after another. */
  messages: number;
  /** Bytes in each message. */
  length: number;
  /** Milliseconds between the starts of two connections. */
  delayMs: number;
  /** Milliseconds a connection may take to connect, and then to receive each whole reply. */
  timeoutMs: number;
}

const CAUSES = ["refused", "reset", "timeout", "closed", "mismatch", "EMFILE", "EADDRNOTAVAIL", "other"] as const;
type Cause = (typeof CAUSES)[number];

/** What each cause means, for the summary. */
const CAUSE_HELP: Record<Cause, string> = {
  refused: "connection refused: is a server listening there?",
  reset: "the server reset the connection (RST)",
  timeout: "no connection or no complete reply in time",
  closed: "the server closed the connection before the whole reply",
  mismatch: "the reply is not the uppercase of the request",
  EMFILE: "this process ran out of file descriptors (ulimit -n)",
  EADDRNOTAVAIL: "no free local port left (ephemeral port range)",
  other: "another error",
};

interface Failure {
  cause: Cause;
  detail: string;
}

/** What the connections saw together: a refusal means something else once others have been accepted. */
interface RunState {
  connected: number;
  /** How many had connected when the first refusal came (undefined: none refused). */
  connectedBeforeRefusal: number | undefined;
}
type Outcome = { ok: true } | ({ ok: false } & Failure);

function randomLowercase(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  crypto.getRandomValues(bytes);
  for (let i = 0; i < length; i++) bytes[i] = 0x61 + (bytes[i]! % 26);
  return bytes;
}

function toUpperAscii(bytes: Uint8Array): Uint8Array {
  const upper = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!;
    upper[i] = byte >= 0x61 && byte <= 0x7a ? byte - 0x20 : byte;
  }
  return upper;
}

function describeByte(byte: number): string {
  const hex = `0x${byte.toString(16).padStart(2, "0")}`;
  return byte >= 0x20 && byte < 0x7f ? `${hex} '${String.fromCharCode(byte)}'` : hex;
}

// Bun reports a failed socket() (EMFILE) as ECONNREFUSED: when out of descriptors, opening a file fails too.
function outOfFileDescriptors(): boolean {
  try {
    closeSync(openSync("/dev/null", "r"));
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EMFILE";
  }
}

function classify(error: NodeJS.ErrnoException): Cause {
  switch (error.code) {
    case "ECONNREFUSED":
      return outOfFileDescriptors() ? "EMFILE" : "refused";
    case "ECONNRESET":
    case "EPIPE":
      return "reset";
    case "ETIMEDOUT":
      return "timeout";
    case "EMFILE":
    case "ENFILE":
      return "EMFILE";
    case "EADDRNOTAVAIL":
      return "EADDRNOTAVAIL";
    default:
      return "other";
  }
}

const EMPTY: Uint8Array = new Uint8Array(0);

/**
 * One connection: connect, then for each message send it, read its whole reply and check it; then close.
 * Bun calls the handlers below with the socket; `socket.data` is the Connection it belongs to.
 */
class Connection {
  private socket: Socket<Connection> | undefined;
  /** The reply expected for the message in flight, and how much of it has arrived. */
  private expected = EMPTY;
  private received = 0;
  private messageNumber = 0;
  /** The part of the message write() has not taken yet; sent on `drain`. */
  private unsent = EMPTY;
  /** The exchange in progress, if any, and a failure that happened while none was. */
  private step: { resolve: () => void; reject: (failure: Failure) => void } | undefined;
  private failure: Failure | undefined;
  private timer: Timer | undefined;

  constructor(
    private readonly config: ClientConfig,
    private readonly state: RunState,
  ) {}

  async run(): Promise<Outcome> {
    try {
      this.socket = await this.connect();
      for (this.messageNumber = 1; this.messageNumber <= this.config.messages; this.messageNumber++) {
        await this.exchange(randomLowercase(this.config.length));
      }
      this.socket.end();
      return { ok: true };
    } catch (error) {
      this.socket?.terminate();
      if (error instanceof Error) return { ok: false, cause: "other", detail: error.message };
      return { ok: false, ...(error as Failure) };
    } finally {
      clearTimeout(this.timer);
    }
  }

  private async connect(): Promise<Socket<Connection>> {
    const connecting = Bun.connect<Connection>({
      hostname: this.config.host,
      port: this.config.port,
      data: this,
      socket: HANDLERS,
    });
    let timedOut = false;
    const timeout = new Promise<never>((_, reject) => {
      this.timer = setTimeout(() => {
        timedOut = true;
        reject({ cause: "timeout", detail: `not connected after ${this.config.timeoutMs} ms` } satisfies Failure);
      }, this.config.timeoutMs);
    });
    try {
      const socket = await Promise.race([connecting, timeout]);
      this.state.connected++;
      return socket;
    } catch (error) {
      if (timedOut) {
        connecting.then(
          (late) => late.terminate(),
          () => {},
        ); // it may still connect: do not leak it
        throw error;
      }
      const cause = classify(error as NodeJS.ErrnoException);
      if (cause === "refused") this.state.connectedBeforeRefusal ??= this.state.connected;
      const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
      if (cause === "EMFILE" && code === "ECONNREFUSED") {
        throw {
          cause,
          detail: "no file descriptor left for a new socket (Bun reports that as ECONNREFUSED)",
        } satisfies Failure;
      }
      throw { cause, detail: `${code} from ${formatAddress(this.config.host, this.config.port)}` } satisfies Failure;
    } finally {
      clearTimeout(this.timer);
    }
  }

  /** Sends `message` and resolves once its whole, correct reply has arrived. */
  private exchange(message: Uint8Array): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    this.expected = toUpperAscii(message);
    this.received = 0;
    this.unsent = message;
    return new Promise((resolve, reject) => {
      this.step = { resolve, reject };
      this.timer = setTimeout(() => {
        const got = `${this.received} of ${this.expected.length} reply bytes`;
        this.fail({
          cause: "timeout",
          detail: `message ${this.messageNumber}: ${got} after ${this.config.timeoutMs} ms`,
        });
      }, this.config.timeoutMs);
      this.flush();
    });
  }

  /** write() takes what the kernel accepts now (maybe less); whatever is left waits for `drain`. */
  flush(): void {
    if (this.unsent.length === 0 || !this.socket) return;
    const written = this.socket.write(this.unsent);
    if (written > 0) this.unsent = this.unsent.subarray(written);
  }

  // TCP is a byte stream: the reply may come in several chunks. Check each byte as it arrives.
  onData(chunk: Uint8Array): void {
    for (let i = 0; i < chunk.length; i++, this.received++) {
      if (this.received >= this.expected.length) {
        const where = `message ${this.messageNumber}: extra reply byte at offset ${this.received}`;
        return this.fail({ cause: "mismatch", detail: `${where}: ${describeByte(chunk[i]!)}` });
      }
      if (chunk[i] !== this.expected[this.received]) {
        const got = describeByte(chunk[i]!);
        const want = describeByte(this.expected[this.received]!);
        const where = `message ${this.messageNumber}: reply byte at offset ${this.received}`;
        return this.fail({ cause: "mismatch", detail: `${where} is ${got}, expected ${want}` });
      }
    }
    if (this.received === this.expected.length && this.step) {
      clearTimeout(this.timer);
      const { resolve } = this.step;
      this.step = undefined;
      resolve();
    }
  }

  onClose(error: Error | undefined): void {
    if (error) {
      const cause = classify(error as NodeJS.ErrnoException);
      return this.fail({
        cause,
        detail: `message ${this.messageNumber}: ${(error as NodeJS.ErrnoException).code ?? error.message}`,
      });
    }
    this.fail({
      cause: "closed",
      detail: `message ${this.messageNumber}: closed after ${this.received} of ${this.expected.length} reply bytes`,
    });
  }

  fail(failure: Failure): void {
    clearTimeout(this.timer);
    if (!this.step) {
      this.failure ??= failure; // between messages: the next exchange reports it
      return;
    }
    const { reject } = this.step;
    this.step = undefined;
    reject(failure);
  }
}

// One handler object for every connection (Bun copies nothing per socket); each call finds its Connection in data.
const HANDLERS = {
  data(socket: Socket<Connection>, chunk: Uint8Array) {
    socket.data.onData(chunk);
  },
  drain(socket: Socket<Connection>) {
    socket.data.flush();
  },
  end(socket: Socket<Connection>) {
    socket.data.onClose(undefined);
  },
  close(socket: Socket<Connection>, error?: Error) {
    socket.data.onClose(error);
  },
};

/**
 * Writes straight to the file descriptor, synchronously. A run can end with every descriptor used up, and then
 * Bun's asynchronous process.stdout can drop what is written just before process.exit(): the summary must survive.
 */
function print(fd: 1 | 2, text: string): void {
  const bytes = Buffer.from(text);
  for (let offset = 0; offset < bytes.length; ) {
    try {
      offset += writeSync(fd, bytes, offset);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EAGAIN") throw error; // a full non-blocking pipe: try again
    }
  }
}

function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

interface Summary {
  ok: number;
  failed: Map<Cause, { count: number; first: string }>;
  elapsedMs: number;
  /** Connections accepted before the first refusal. */
  connectedBeforeRefusal: number | undefined;
}

async function runClient(config: ClientConfig): Promise<Summary> {
  const started = performance.now();
  // Staggered, as the original's second client: start one connection, pause, start the next.
  const runs: Array<Promise<Outcome>> = [];
  const state: RunState = { connected: 0, connectedBeforeRefusal: undefined };
  for (let i = 0; i < config.connections; i++) {
    if (i > 0 && config.delayMs > 0) await Bun.sleep(config.delayMs);
    runs.push(new Connection(config, state).run());
  }
  const outcomes = await Promise.all(runs);
  const summary: Summary = {
    ok: 0,
    failed: new Map(),
    elapsedMs: performance.now() - started,
    connectedBeforeRefusal: state.connectedBeforeRefusal,
  };
  outcomes.forEach((outcome, index) => {
    if (outcome.ok) return void summary.ok++;
    const entry = summary.failed.get(outcome.cause);
    if (entry) entry.count++;
    else summary.failed.set(outcome.cause, { count: 1, first: `connection ${index + 1}: ${outcome.detail}` });
  });
  return summary;
}

/** What a cause means in this run: a refusal after some connections were accepted is not "nobody there". */
function explain(cause: Cause, summary: Summary): string {
  const accepted = summary.connectedBeforeRefusal ?? 0;
  if (cause !== "refused" || accepted === 0) return CAUSE_HELP[cause];
  const connections = accepted === 1 ? "1 connection was" : `${accepted} connections were`;
  return `refused after ${connections} accepted: the server may serve one client at a time, or have exited`;
}

function printSummary(config: ClientConfig, summary: Summary): void {
  const failed = config.connections - summary.ok;
  const messages = config.messages === 1 ? "one" : String(config.messages);
  const plural = config.messages === 1 ? "" : "s";
  const target = formatAddress(config.host, config.port);
  const lines = [
    `${config.connections} connections to ${target}, ${messages} ${config.length}-byte message${plural} each, ` +
      `started ${config.delayMs} ms apart`,
    `  ok       ${pc.green(String(summary.ok))}`,
    `  failed   ${failed === 0 ? "0" : pc.red(String(failed))}`,
  ];
  for (const cause of CAUSES) {
    const entry = summary.failed.get(cause);
    if (!entry) continue;
    lines.push(`    ${cause.padEnd(14)} ${String(entry.count).padStart(6)}  ${explain(cause, summary)}`);
    lines.push(`    ${"".padEnd(14)} ${"".padStart(6)}  first: ${entry.first}`);
  }
  lines.push(`  elapsed  ${(summary.elapsedMs / 1000).toFixed(3)} s`);
  print(1, `${lines.join("\n")}\n`);
}

// The usage line names the command as it was started, so renaming or copying the stage changes nothing here:
// `bun PATH` for this file, or the name it was built under (`bun run build`: an executable or an installed command).
const THIS_COMMAND = import.meta.path.endsWith(".ts")
  ? `bun ${relative(process.cwd(), import.meta.path)}`
  : basename(import.meta.path);

const HELP = `Usage: ${THIS_COMMAND} [options]

Starts N connections one after another, --delay ms apart; each sends --messages random lowercase strings,
one at a time, and checks that every reply is exactly its uppercase. Prints a summary; exit code 0 if every
connection was ok, 1 if any failed.

Options:
  -n N                connections (default 100)
  --delay MS          pause between two connection starts, 0 = none (default 1)
  --messages N        messages sent on each connection, one after another (default 1)
  --host HOST         server address (default 127.0.0.1)
  --port PORT         server port (default 5000)
  --length BYTES      bytes in each message (default 16)
  --timeout SECONDS   time allowed to connect, then to get each whole reply (default 10)
  -h, --help          show this help
`;

class UsageError extends Error {}

function parseInteger(name: string, text: string, min: number, max: number): number {
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new UsageError(`${name} must be an integer from ${min} to ${max}, got "${text}"`);
  }
  return Number(text);
}

function parseConfig(argv: string[]): ClientConfig | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        n: { type: "string", short: "n", default: "100" },
        delay: { type: "string", default: "1" },
        messages: { type: "string", default: "1" },
        host: { type: "string", default: "127.0.0.1" },
        port: { type: "string", default: "5000" },
        length: { type: "string", default: "16" },
        timeout: { type: "string", default: "10" },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new UsageError((error as Error).message.split("\n")[0]!); // parseArgs may explain over several lines
  }
  if (values.help) return "help";
  if (values.host === "") throw new UsageError("--host must not be empty");
  if (!/^\d+(\.\d+)?$/.test(values.timeout) || Number(values.timeout) <= 0) {
    throw new UsageError(`--timeout must be a positive number of seconds, got "${values.timeout}"`);
  }
  if (!/^\d+(\.\d+)?$/.test(values.delay)) {
    throw new UsageError(`--delay must be a number of milliseconds (0 = none), got "${values.delay}"`);
  }
  return {
    host: values.host,
    port: parseInteger("--port", values.port, 1, 65535),
    connections: parseInteger("-n", values.n, 1, 100_000),
    messages: parseInteger("--messages", values.messages, 1, 1_000_000),
    length: parseInteger("--length", values.length, 1, 16 * 1024 * 1024),
    delayMs: Number(values.delay),
    timeoutMs: Number(values.timeout) * 1000,
  };
}

async function main(): Promise<void> {
  let config: ClientConfig | "help";
  try {
    config = parseConfig(process.argv.slice(2));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    print(2, `error: ${error.message} (see --help)\n`);
    process.exit(2);
  }
  if (config === "help") {
    print(1, HELP);
    return;
  }
  const summary = await runClient(config);
  printSummary(config, summary);
  if (summary.failed.get("refused")?.count === config.connections) {
    print(
      2,
      `error: nothing is listening on ${formatAddress(config.host, config.port)} (every connection was refused)\n`,
    );
  }
  process.exit(summary.ok === config.connections ? 0 : 1);
}

await main();
