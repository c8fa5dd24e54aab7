#!/usr/bin/env bun
/*
 * 001 - a test client: n connections at once, each checks its uppercase echo
 *
 * Adds:   the original's asyncio test client, ported to node:net (the counterpart of asyncio's streams): -n
 *         connections are opened all at once; each sends a random lowercase string, reads until the whole reply
 *         has arrived (TCP may deliver it in several pieces), checks that it is exactly the uppercase of what it
 *         sent, and closes. Then a summary: how many were ok, how many failed and why (refused, reset, timeout,
 *         closed early, mismatch with the first differing byte, EMFILE, EADDRNOTAVAIL, other), the elapsed time.
 *         Exit code 0 only if every connection was ok; 1 otherwise; 2 for a usage error.
 * Lacks:  pacing: every connection starts in the same instant, a burst that can overflow a listen backlog (512 on
 *         Bun) or a server's limit (002 staggers the starts); one message per connection (002 sends several); Bun's
 *         own socket API, where write() does not buffer (002); throughput and latency figures (003).
 *
 * Try it: bun tcp_echo_server/005-bounded-concurrency.ts --port 5000
 *         bun test/001-client.ts -n 500 --port 5000
 *         bun test/001-client.ts -n 3 --port 5999           (nothing listens there: 3 refused, exit code 1)
 */

import { closeSync, openSync, writeSync } from "node:fs";
import net from "node:net";
import { parseArgs } from "node:util";
import pc from "picocolors";
import { basename, relative } from "node:path";

interface ClientConfig {
  host: string;
  port: number;
  connections: number;
  /** Bytes in each message. */
  length: number;
  /** Milliseconds a connection may take to connect, and then to receive its whole reply. */
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

type Outcome = { ok: true } | { ok: false; cause: Cause; detail: string };

function randomLowercase(length: number): Buffer {
  const bytes = Buffer.alloc(length);
  crypto.getRandomValues(bytes);
  for (let i = 0; i < length; i++) bytes[i] = 0x61 + (bytes[i]! % 26);
  return bytes;
}

function toUpperAscii(bytes: Uint8Array): Buffer {
  const upper = Buffer.alloc(bytes.length);
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

/** One connection: connect, send a random lowercase message, read the whole reply, check it, close. */
function runConnection(config: ClientConfig): Promise<Outcome> {
  const message = randomLowercase(config.length);
  const expected = toUpperAscii(message);
  return new Promise((resolve) => {
    let received = 0;
    let settled = false;
    const socket = net.connect({ host: config.host, port: config.port });
    const finish = (outcome: Outcome): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (outcome.ok) socket.end();
      else socket.destroy();
      resolve(outcome);
    };
    let timer = setTimeout(
      () => finish({ ok: false, cause: "timeout", detail: `not connected after ${config.timeoutMs} ms` }),
      config.timeoutMs,
    );
    socket.on("connect", () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        finish({
          ok: false,
          cause: "timeout",
          detail: `${received} of ${expected.length} reply bytes after ${config.timeoutMs} ms`,
        });
      }, config.timeoutMs);
      socket.write(message);
    });
    // TCP is a byte stream: the reply may come in several chunks. Check each byte as it arrives.
    socket.on("data", (chunk: Buffer) => {
      for (let i = 0; i < chunk.length; i++, received++) {
        if (received >= expected.length) {
          return finish({
            ok: false,
            cause: "mismatch",
            detail: `extra reply byte at offset ${received}: ${describeByte(chunk[i]!)}`,
          });
        }
        if (chunk[i] !== expected[received]) {
          const got = describeByte(chunk[i]!);
          const want = describeByte(expected[received]!);
          return finish({
            ok: false,
            cause: "mismatch",
            detail: `reply byte at offset ${received} is ${got}, expected ${want}`,
          });
        }
      }
      if (received === expected.length) finish({ ok: true });
    });
    socket.on("end", () => {
      finish({
        ok: false,
        cause: "closed",
        detail: `closed by the server after ${received} of ${expected.length} reply bytes`,
      });
    });
    socket.on("error", (error: NodeJS.ErrnoException) => {
      const cause = classify(error);
      const detail =
        cause === "refused"
          ? `${error.code} from ${formatAddress(config.host, config.port)}`
          : cause === "EMFILE" && error.code === "ECONNREFUSED"
            ? "no file descriptor left for a new socket (Bun reports that as ECONNREFUSED)"
            : `${error.code ?? ""} ${error.message}`.trim();
      finish({ ok: false, cause, detail });
    });
    socket.on("close", () => {
      finish({ ok: false, cause: "closed", detail: `closed after ${received} of ${expected.length} reply bytes` });
    });
  });
}

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
}

async function runClient(config: ClientConfig): Promise<Summary> {
  const started = performance.now();
  // All at once, as the original's asyncio.gather(): every connection is started before any has finished.
  const outcomes = await Promise.all(Array.from({ length: config.connections }, () => runConnection(config)));
  const summary: Summary = { ok: 0, failed: new Map(), elapsedMs: performance.now() - started };
  outcomes.forEach((outcome, index) => {
    if (outcome.ok) return void summary.ok++;
    const entry = summary.failed.get(outcome.cause);
    if (entry) entry.count++;
    else summary.failed.set(outcome.cause, { count: 1, first: `connection ${index + 1}: ${outcome.detail}` });
  });
  return summary;
}

function printSummary(config: ClientConfig, summary: Summary): void {
  const failed = config.connections - summary.ok;
  const target = formatAddress(config.host, config.port);
  const lines = [
    `${config.connections} connections to ${target}, one ${config.length}-byte message each`,
    `  ok       ${pc.green(String(summary.ok))}`,
    `  failed   ${failed === 0 ? "0" : pc.red(String(failed))}`,
  ];
  for (const cause of CAUSES) {
    const entry = summary.failed.get(cause);
    if (!entry) continue;
    lines.push(`    ${cause.padEnd(14)} ${String(entry.count).padStart(6)}  ${CAUSE_HELP[cause]}`);
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

Opens N connections at once; each sends a random lowercase string and checks that the reply is exactly
its uppercase. Prints a summary; exit code 0 if every connection was ok, 1 if any failed.

Options:
  -n N                connections, all opened at once (default 100)
  --host HOST         server address (default 127.0.0.1)
  --port PORT         server port (default 5000)
  --length BYTES      bytes in each message (default 16)
  --timeout SECONDS   time allowed to connect, then to get the whole reply (default 10)
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
  return {
    host: values.host,
    port: parseInteger("--port", values.port, 1, 65535),
    connections: parseInteger("-n", values.n, 1, 100_000),
    length: parseInteger("--length", values.length, 1, 16 * 1024 * 1024),
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
