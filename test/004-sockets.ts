#!/usr/bin/env bun
/*
 * 004 - counting sockets, by state
 *
 * Adds:   the original counted sockets with `ss -ta | wc -l`, which adds the header line and lumps every state
 *         together (a listener, live connections and thousands of TIME_WAIT leftovers all look alike). This counts
 *         TCP sockets (IPv4 and IPv6) by state, from the kernel's own tables /proc/net/tcp and /proc/net/tcp6:
 *         LISTEN, ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK,
 *         CLOSING. --port N keeps the sockets with N at either end and splits them in two columns: "local" (N is
 *         our end: the server's side) and "remote" (N is the far end: the clients' side); on loopback each
 *         connection is seen from both ends, so it counts once in each. --watch refreshes every --interval seconds
 *         (in place on a terminal, one line per refresh when piped) until Ctrl-C; --json for machines.
 *         The `ss` equivalents (iproute2):
 *           ss -Htan | awk '{print $1}' | sort | uniq -c                     all TCP sockets, by state
 *           ss -Htan state established '( sport = :5000 or dport = :5000 )' | wc -l
 *                                                                           live connections with port 5000
 *           ss -Htan state established '( sport = :5000 )' | wc -l         ... the server's side only
 *           ss -Htan state time-wait '( dport = :5000 )' | wc -l           TIME_WAIT left by clients of :5000
 *           watch -n 1 "ss -Htan '( sport = :5000 or dport = :5000 )' | awk '{print \$1}' | sort | uniq -c"
 *         (-H drops the header line that `ss -ta | wc -l` counted; -n skips name lookups; ss names the states
 *         ESTAB, TIME-WAIT, ... where /proc and this tool say ESTABLISHED, TIME_WAIT.)
 * Lacks:  which process owns a socket (`ss -tanp` reads every /proc/PID/fd for that); UDP and Unix sockets;
 *         Linux only (/proc).
 *
 * Try it: bun tcp_echo_server/005-bounded-concurrency.ts --port 5000 --log-level warn
 *         bun test/004-sockets.ts --port 5000 --watch
 *         bun test/003-load-generator.ts -c 300 -d 5 --port 5000     (in another terminal: watch the counts move)
 */

import { existsSync, readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import pc from "picocolors";
import { basename, relative } from "node:path";

/** Kernel TCP states, as numbered in include/net/tcp_states.h, in the order they are shown. */
const STATES: ReadonlyArray<[name: string, code: number]> = [
  ["LISTEN", 0x0a],
  ["ESTABLISHED", 0x01],
  ["SYN_SENT", 0x02],
  ["SYN_RECV", 0x03],
  ["FIN_WAIT1", 0x04],
  ["FIN_WAIT2", 0x05],
  ["TIME_WAIT", 0x06],
  ["CLOSE", 0x07],
  ["CLOSE_WAIT", 0x08],
  ["LAST_ACK", 0x09],
  ["CLOSING", 0x0b],
];
// A connection request not yet accepted (kernel 4.4+) is listed as SYN_RECV; count it there.
const NEW_SYN_RECV = 0x0c;
const NAME_BY_CODE = new Map(STATES.map(([name, code]) => [code, name]));
NAME_BY_CODE.set(NEW_SYN_RECV, "SYN_RECV");

const TABLES = ["/proc/net/tcp", "/proc/net/tcp6"];

interface SocketsConfig {
  port: number | undefined;
  watch: boolean;
  intervalMs: number;
  json: boolean;
}

type Counts = Record<string, number>;

interface Census {
  /** Every matching socket once, by state. */
  total: Counts;
  /** With --port: sockets whose own (local) port is it, and those whose far (remote) port is it. */
  local: Counts;
  remote: Counts;
}

function zeroCounts(): Counts {
  return Object.fromEntries(STATES.map(([name]) => [name, 0]));
}

/**
 * Reads the kernel's socket tables. Each line after the header is one socket:
 *   sl  local_address rem_address   st ...
 *    0: 0100007F:1388 00000000:0000 0A ...       (addresses in hex, then ":" and the port in hex; st = state)
 * IPv6 lines have 32 hex digits of address instead of 8; the port and the state are read the same way.
 */
function takeCensus(port: number | undefined): Census {
  const census: Census = { total: zeroCounts(), local: zeroCounts(), remote: zeroCounts() };
  for (const table of TABLES) {
    let text: string;
    try {
      text = readFileSync(table, "latin1");
    } catch {
      continue; // no IPv6 in this kernel, say
    }
    let start = text.indexOf("\n") + 1; // skip the header line
    while (start < text.length) {
      let end = text.indexOf("\n", start);
      if (end === -1) end = text.length;
      const fields = text.slice(start, end).trim().split(/\s+/);
      start = end + 1;
      const [, local, remote, state] = fields;
      if (local === undefined || remote === undefined || state === undefined) continue;
      const name = NAME_BY_CODE.get(parseInt(state, 16));
      if (name === undefined) continue;
      const localPort = parseInt(local.slice(local.lastIndexOf(":") + 1), 16);
      const remotePort = parseInt(remote.slice(remote.lastIndexOf(":") + 1), 16);
      if (port === undefined) {
        census.total[name]!++;
        continue;
      }
      const isLocal = localPort === port;
      const isRemote = remotePort === port; // a listener's remote end is *:0, and --port is never 0
      if (isLocal) census.local[name]!++;
      if (isRemote) census.remote[name]!++;
      if (isLocal || isRemote) census.total[name]!++;
    }
  }
  return census;
}

const sum = (counts: Counts): number => Object.values(counts).reduce((a, b) => a + b, 0);

function table(config: SocketsConfig, census: Census): string[] {
  const dimZero = (n: number, width: number): string =>
    n === 0 ? pc.dim(String(n).padStart(width)) : String(n).padStart(width);
  if (config.port === undefined) {
    const lines = [`  ${"state".padEnd(12)}${"sockets".padStart(9)}`];
    for (const [name] of STATES) lines.push(`  ${name.padEnd(12)}${dimZero(census.total[name]!, 9)}`);
    lines.push(`  ${"total".padEnd(12)}${String(sum(census.total)).padStart(9)}`);
    return lines;
  }
  const lines = [`  ${"state".padEnd(12)}${"local".padStart(9)}${"remote".padStart(9)}${"total".padStart(9)}`];
  for (const [name] of STATES) {
    const counts = [census.local, census.remote, census.total].map((side) => dimZero(side[name]!, 9));
    lines.push(`  ${name.padEnd(12)}${counts.join("")}`);
  }
  const totals = [census.local, census.remote, census.total].map((side) => String(sum(side)).padStart(9));
  lines.push(`  ${"total".padEnd(12)}${totals.join("")}`);
  return lines;
}

function title(config: SocketsConfig): string {
  const which =
    config.port === undefined
      ? "TCP sockets"
      : `TCP sockets with port ${config.port} at either end (local = ours, remote = the far end's)`;
  return `${which}, from ${TABLES.join(" and ")}`;
}

function toJson(config: SocketsConfig, census: Census): Record<string, unknown> {
  const document: Record<string, unknown> = {
    port: config.port ?? null,
    states: census.total,
    total: sum(census.total),
  };
  if (config.port !== undefined) {
    document.local = census.local;
    document.remote = census.remote;
  }
  return document;
}

/** One line per refresh when the output is not a terminal: the non-zero states only. */
function compactLine(census: Census): string {
  const parts = STATES.filter(([name]) => census.total[name]! > 0).map(([name]) => `${name}=${census.total[name]}`);
  return `${new Date().toISOString()} ${[...parts, `total=${sum(census.total)}`].join(" ")}`;
}

async function watch(config: SocketsConfig): Promise<void> {
  const tty = process.stdout.isTTY === true && !config.json;
  let stopping = false;
  let wake: (() => void) | undefined;
  const stop = (): void => {
    stopping = true;
    wake?.();
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  // What the last refresh drew, to go back up over it: the rows it took (a line wider than the terminal wraps onto
  // more than one) and the width it took them at (after a resize the terminal may rewrap them: start afresh).
  let drawnRows = 0;
  let drawnWidth = 0;
  while (!stopping) {
    const census = takeCensus(config.port);
    if (config.json) {
      process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...toJson(config, census) })}\n`);
    } else if (tty) {
      const width = process.stdout.columns || 80;
      const lines = [
        `${title(config)}, every ${config.intervalMs / 1000} s (Ctrl-C to stop)`,
        ...table(config, census),
        pc.dim(new Date().toISOString()),
      ];
      // Redraw in place: back up over the previous table and overwrite it line by line, then clear what is left
      // below (the screen is cleared only after a resize: a terminal may keep what it clears in its scrollback).
      const back = drawnRows === 0 ? "" : width === drawnWidth ? `\x1b[${drawnRows}A` : "\x1b[H\x1b[J";
      process.stdout.write(`${back}${lines.map((line) => `\r\x1b[K${line}`).join("\n")}\n\x1b[J`);
      drawnRows = lines.reduce((rows, line) => rows + Math.max(1, Math.ceil(Bun.stringWidth(line) / width)), 0);
      drawnWidth = width;
    } else {
      process.stdout.write(`${compactLine(census)}\n`);
    }
    await new Promise<void>((resolve) => {
      wake = resolve;
      setTimeout(resolve, config.intervalMs);
    });
  }
}

// The usage line names the command as it was started, so renaming or copying the stage changes nothing here:
// `bun PATH` for this file, or the name it was built under (`bun run build`: an executable or an installed command).
const THIS_COMMAND = import.meta.path.endsWith(".ts")
  ? `bun ${relative(process.cwd(), import.meta.path)}`
  : basename(import.meta.path);

const HELP = `Usage: ${THIS_COMMAND} [options]

Counts TCP sockets (IPv4 and IPv6) by state, from /proc/net/tcp and /proc/net/tcp6.

Options:
  --port PORT          only sockets with this port at either end, in two columns: local (ours) and remote
  --watch              refresh until Ctrl-C (in place on a terminal, one line per refresh otherwise)
  --interval SECONDS   time between refreshes with --watch (default 1)
  --json               JSON (with --watch: one JSON document per line)
  -h, --help           show this help

ss equivalents: ss -Htan | awk '{print $1}' | sort | uniq -c
                ss -Htan state established '( sport = :PORT or dport = :PORT )' | wc -l
`;

class UsageError extends Error {}

function parseConfig(argv: string[]): SocketsConfig | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        port: { type: "string" },
        watch: { type: "boolean", default: false },
        interval: { type: "string", default: "1" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new UsageError((error as Error).message.split("\n")[0]!); // parseArgs may explain over several lines
  }
  if (values.help) return "help";
  if (
    values.port !== undefined &&
    (!/^\d+$/.test(values.port) || Number(values.port) < 1 || Number(values.port) > 65535)
  ) {
    throw new UsageError(`--port must be an integer from 1 to 65535, got "${values.port}"`);
  }
  if (!/^\d+(\.\d+)?$/.test(values.interval) || Number(values.interval) < 0.05) {
    throw new UsageError(`--interval must be a number of seconds, at least 0.05, got "${values.interval}"`);
  }
  return {
    port: values.port === undefined ? undefined : Number(values.port),
    watch: values.watch,
    intervalMs: Number(values.interval) * 1000,
    json: values.json,
  };
}

async function main(): Promise<void> {
  let config: SocketsConfig | "help";
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
  if (!TABLES.some((path) => existsSync(path))) {
    process.stderr.write("error: no /proc/net/tcp here: this tool needs Linux (use ss or netstat elsewhere)\n");
    process.exit(1);
  }
  if (config.watch) {
    await watch(config);
    process.exit(0);
  }
  const census = takeCensus(config.port);
  if (config.json) process.stdout.write(`${JSON.stringify(toJson(config, census), null, 2)}\n`);
  else process.stdout.write(`${[title(config), ...table(config, census)].join("\n")}\n`);
}

await main();
