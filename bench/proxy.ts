#!/usr/bin/env bun
// Proxy benchmark (not a test): the fault-injection stage and the last proxy stage against a direct connection to
// the same servers, in one run, with peers: a minimal Bun pipe, and HAProxy (TCP mode) and socat when installed.
// The help text below says what it measures, how long it takes and where it writes.

import type { Subprocess } from "bun";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { unusedPort as freePort } from "../lib/sockets.ts";
import {
  API_LINE,
  canPin,
  type Child,
  commandLine,
  lastStage,
  memoryKiB,
  numberOption,
  onCpu,
  ROOT,
  spawn,
  stageEndingWith,
  startListening,
  stop,
} from "./lib.ts";

const HELP = `Usage: bun run bench:proxy [options]        (or: bun bench/proxy.ts, bun run bench proxy)

Proxy benchmark, not a test: the fault-injection stage (toxics from flags, no toxic in force) and the last proxy
stage (its control API on) against a direct connection to the same servers, against a minimal Bun pipe (the
floor of any Bun proxy, bench/reference/bun-pipe.ts), and against HAProxy (TCP mode) and socat when installed:
  bulk     iperf3 client -> [proxy] -> iperf3 server: Gbit/s, and the proxy's peak memory
           (needs iperf3: apt-get install iperf3)
  echo     closed-loop echo (bench/echo-load.ts) at --connections -> [proxy] -> the last echo stage:
           messages/s, p50 and p99 round trip
  memory   the proxy's peak memory per connection under that load, and per idle connection (1,000 held)
  proxies  in the last stage, when it makes proxies at run time: what one idle proxy and 100 proxies cost
With taskset and two cores the proxy runs on CPU 0, the load and the servers on CPU 1.

Run time: per path (direct, each stage, each peer found), --seconds of bulk and 1 + --seconds of echo, plus a
few seconds to start and to measure memory: about 1-2 minutes with the defaults and both peers.

Writes --out, by default bench/results/proxy.json: that REPLACES the committed results docs/proxy.md quotes.
To keep them, write elsewhere: --out /tmp/proxy.json.

Options:
  --seconds S       seconds of each bulk and each echo measurement (default 5)
  --connections N   echo connections (default 100)
  --size BYTES      echo message size (default 64)
  --out FILE        where the JSON results go (default bench/results/proxy.json)
  -h, --help        show this help
`;

const values = commandLine(HELP, {
  seconds: { type: "string", default: "5" },
  connections: { type: "string", default: "100" },
  size: { type: "string", default: "64" },
  out: { type: "string", default: "bench/results/proxy.json" },
});
const SECONDS = numberOption("--seconds", values.seconds, { min: 1, integer: true }); // iperf3 -t takes seconds
const CONNECTIONS = numberOption("--connections", values.connections, { min: 1, integer: true });
numberOption("--size", values.size, { min: 1, integer: true });

const PROXY_STAGE = lastStage("tcp_proxy");
/** The fault-injection stage, whatever its number: the proxy with every feature before the control plane. */
const FAULT_STAGE = stageEndingWith("tcp_proxy", "-fault-injection.ts");
const LAB_STAGES = [...new Set([FAULT_STAGE ?? PROXY_STAGE, PROXY_STAGE])];
/** Does the stage have a control API (--api-port)? Then it runs with it on, as it would be used. */
const hasApi = (file: string): boolean => readFileSync(resolve(ROOT, file), "utf8").includes('"api-port"');
const MiB = 1024 * 1024;
const ECHO_STAGE = lastStage("tcp_echo_server");
const which = (tool: string): string | null => Bun.which(tool) ?? Bun.which(tool, { PATH: "/usr/sbin:/sbin:/usr/bin" });
const pinning = canPin;
const onProxyCore = (command: string[]): string[] => onCpu(0, command);
const onLoadCore = (command: string[]): string[] => onCpu(1, command);

/** Spawns a stage on a free port, on the core `pin` chooses, and waits for its listening line. */
function startStage(
  file: string,
  args: string[],
  pin: (command: string[]) => string[],
): Promise<{ child: Child; port: number }> {
  return startListening(pin([process.execPath, file, "--port", "0", ...args]), file);
}

async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    try {
      const socket = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
      socket.end();
      return;
    } catch {
      await Bun.sleep(50);
    }
  }
  throw new Error(`nothing listens on ${port}`);
}

/** Waits for a peer's port; if it never opens, says why (its stderr). */
async function waitForPeer(child: Child, port: number, name: string): Promise<void> {
  try {
    await Promise.race([
      waitForPort(port),
      child.exited.then(async (code) => {
        throw new Error(`${name} exited with ${code}: ${await new Response(child.stderr).text()}`);
      }),
    ]);
  } catch (error) {
    child.kill("SIGKILL");
    throw error;
  }
}

/** RSS now and at its peak, in bytes (NaN once the process is gone). */
function rss(pid: number): { rss: number; peak: number } {
  try {
    const { rss, peak } = memoryKiB(pid);
    return { rss: rss * 1024, peak: peak * 1024 };
  } catch {
    return { rss: NaN, peak: NaN };
  }
}

interface Peer {
  name: string;
  /** Starts a proxy from a free port to `upstreamPort`; returns its port and process. */
  start(upstreamPort: number): Promise<{ port: number; child: Subprocess }>;
}

const peers: Peer[] = LAB_STAGES.map((stage) => ({
  name: `bun-tcp-lab ${basename(stage).slice(0, 3)}`,
  start: (upstreamPort: number) =>
    startStage(
      stage,
      [
        ...["--upstream", `127.0.0.1:${upstreamPort}`, "--log-level", "warn", "--health-interval", "0"],
        ...["--idle-timeout", "0", "--max-clients", "100000"],
        ...(hasApi(stage) ? ["--api-port", "0"] : []),
      ],
      onProxyCore,
    ),
}));
// The floor of any Bun proxy: a minimal pipe with backpressure (bench/reference/bun-pipe.ts), so that the stages'
// memory under bulk load is read against what Bun itself takes for the same bytes.
peers.push({
  name: "minimal Bun pipe",
  start: (upstreamPort: number) =>
    startStage("bench/reference/bun-pipe.ts", ["--upstream", `127.0.0.1:${upstreamPort}`], onProxyCore),
});
const haproxy = which("haproxy");
if (haproxy) {
  peers.push({
    name: "haproxy",
    async start(upstreamPort) {
      const port = freePort();
      const config = join(tmpdir(), `bench-haproxy-${process.pid}-${port}.cfg`);
      writeFileSync(
        config,
        [
          "global",
          "  maxconn 4000",
          "  nbthread 1",
          "defaults",
          "  mode tcp",
          "  timeout connect 5s",
          "  timeout client 1m",
          "  timeout server 1m",
          "listen bench",
          `  bind 127.0.0.1:${port}`,
          `  server upstream 127.0.0.1:${upstreamPort}`,
          "",
        ].join("\n"),
      );
      const child = spawn(onProxyCore([haproxy, "-db", "-f", config]));
      await waitForPeer(child, port, "haproxy");
      return { port, child };
    },
  });
}
const socat = which("socat");
if (socat) {
  peers.push({
    name: "socat",
    async start(upstreamPort) {
      const port = freePort();
      const child = spawn(
        onProxyCore([socat, `TCP-LISTEN:${port},bind=127.0.0.1,fork,reuseaddr`, `TCP:127.0.0.1:${upstreamPort}`]),
      );
      await waitForPeer(child, port, "socat");
      return { port, child };
    },
  });
}

async function iperf(port: number): Promise<number> {
  const client = spawn(
    onLoadCore([which("iperf3")!, "-c", "127.0.0.1", "-p", String(port), "-t", String(SECONDS), "-J"]),
  );
  const [out, code] = [await new Response(client.stdout).text(), await client.exited];
  if (code !== 0) throw new Error(`iperf3 failed: ${out.slice(0, 500)}`);
  const report = JSON.parse(out) as { error?: string; end?: { sum_received?: { bits_per_second: number } } };
  const bitsPerSecond = report.end?.sum_received?.bits_per_second;
  if (bitsPerSecond === undefined) throw new Error(`iperf3 through port ${port}: ${report.error ?? "no result"}`);
  return bitsPerSecond / 1e9;
}

interface EchoResult {
  msgsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
}

/** What bench/echo-load.ts (the echo benchmark's closed-loop driver, shared) prints with --json. */
interface EchoLoadJson {
  msgsPerSec: number;
  latencyUs: { p50: number; p99: number };
  wrongBytes: number;
  unexpectedCloses: number;
  stalled: number;
}

async function echoLoad(port: number): Promise<EchoResult> {
  const load = spawn(
    onLoadCore([
      process.execPath,
      "bench/echo-load.ts",
      "--port",
      String(port),
      "--json",
      "--connections",
      String(CONNECTIONS),
      "--duration",
      String(SECONDS),
      "--size",
      values.size,
    ]),
  );
  const [out, code] = [await new Response(load.stdout).text(), await load.exited];
  if (code !== 0) throw new Error(`echo load failed: ${out}${await new Response(load.stderr).text()}`);
  const result = JSON.parse(out) as EchoLoadJson;
  return {
    msgsPerSec: result.msgsPerSec,
    p50Ms: result.latencyUs.p50 / 1000,
    p99Ms: result.latencyUs.p99 / 1000,
    errors: result.wrongBytes + result.unexpectedCloses + result.stalled,
  };
}

interface Row {
  name: string;
  bulkGbps?: number;
  echo?: EchoResult;
  /** Peak RSS growth during the echo load, divided by the connections. */
  memoryPerConnection?: number;
  /** RSS growth with IDLE_CONNECTIONS open and idle, divided by them: the cost of a connection itself. */
  idleMemoryPerConnection?: number;
  /** Peak RSS of the proxy process over the bulk (iperf3) run, in bytes. */
  bulkPeak?: number;
}

/**
 * What proxies themselves cost in a stage with a control API: the RSS the process gains when one idle proxy (a
 * listener and its state) is created through the API, and when 100 are, against the API alone.
 */
async function proxyCost(stage: string, upstreamPort: number): Promise<{ one: number; hundred: number }> {
  const command = [process.execPath, stage, "--api-port", "0", "--log-level", "warn", "--health-interval", "0"];
  const { child, port } = await startListening(onProxyCore(command), stage, API_LINE);
  try {
    const create = async (name: string): Promise<void> => {
      const body = JSON.stringify({ name, listen: "127.0.0.1:0", upstream: `127.0.0.1:${upstreamPort}` });
      const response = await fetch(`http://127.0.0.1:${port}/proxies`, { method: "POST", body });
      if (response.status !== 201) throw new Error(`proxy ${name}: ${response.status} ${await response.text()}`);
    };
    const settled = async (): Promise<number> => {
      await Bun.sleep(300); // a reading after the allocations of the last request have settled, not an event
      return rss(child.pid).rss;
    };
    const base = await settled();
    await create("p0");
    const one = (await settled()) - base;
    for (let i = 1; i < 100; i++) await create(`p${i}`);
    return { one, hundred: (await settled()) - base };
  } finally {
    await stop(child);
  }
}

const IDLE_CONNECTIONS = 1000;

/** Opens IDLE_CONNECTIONS through the proxy (each makes one echo round trip), and measures the RSS they add. */
async function idleMemory(pid: number, port: number): Promise<number> {
  const before = rss(pid).rss;
  const sockets = [];
  for (let batch = 0; batch < IDLE_CONNECTIONS / 100; batch++) {
    // In batches of 100: Bun's listen backlog is 512.
    sockets.push(
      ...(await Promise.all(
        Array.from({ length: 100 }, async () => {
          const replied = Promise.withResolvers<void>();
          const socket = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data: () => replied.resolve() } });
          socket.write("x");
          await replied.promise;
          return socket;
        }),
      )),
    );
  }
  await Bun.sleep(200);
  const after = rss(pid).rss;
  for (const socket of sockets) socket.end();
  return (after - before) / IDLE_CONNECTIONS;
}

async function main(): Promise<void> {
  const iperf3 = which("iperf3");
  console.log(
    `proxies: ${LAB_STAGES.join(", ")}; echo server: ${ECHO_STAGE}; ${SECONDS} s per run; ${CONNECTIONS} connections`,
  );
  const loadBefore = loadavg()[0]!;
  console.log(
    `load average before: ${loadBefore.toFixed(2)} (other work on the machine skews every path alike, not evenly)`,
  );
  console.log(
    `cores: ${cpus().length}, ` +
      `${pinning ? "proxy on CPU 0, load and servers on CPU 1" : "no pinning (taskset missing or one core)"}`,
  );
  console.log(
    `peers found: ${peers.map((peer) => peer.name).join(", ")}${iperf3 ? "" : " (iperf3 missing: no bulk test)"}`,
  );

  const rows: Row[] = [{ name: "direct" }, ...peers.map((peer) => ({ name: peer.name }))];
  let cost: { one: number; hundred: number } | undefined;
  const echo = await startStage(
    ECHO_STAGE,
    ["--max-clients", String(IDLE_CONNECTIONS * 2), "--idle-timeout", "0", "--log-level", "warn"],
    onLoadCore,
  );
  let iperfServer: Subprocess | undefined;
  let iperfPort = 0;
  if (iperf3) {
    iperfPort = freePort();
    iperfServer = spawn(onLoadCore([iperf3, "-s", "-p", String(iperfPort)]));
    await waitForPort(iperfPort);
  }
  try {
    for (const row of rows) {
      const peer = peers.find((candidate) => candidate.name === row.name);
      if (iperf3) {
        const proxy = peer ? await peer.start(iperfPort) : undefined;
        row.bulkGbps = await iperf(proxy?.port ?? iperfPort);
        if (proxy) row.bulkPeak = rss(proxy.child.pid).peak;
        if (proxy) await stop(proxy.child);
        const peak = row.bulkPeak === undefined ? "" : `, peak RSS ${(row.bulkPeak / MiB).toFixed(1)} MiB`;
        console.log(`  ${row.name.padEnd(18)} bulk ${row.bulkGbps.toFixed(2)} Gbit/s${peak}`);
      }
      const proxy = peer ? await peer.start(echo.port) : undefined;
      const idle = proxy ? rss(proxy.child.pid).rss : NaN;
      try {
        row.echo = await echoLoad(proxy?.port ?? echo.port);
      } catch (error) {
        // One peer failing (socat has lost a connection here) must not cost the other rows: say so, carry on.
        console.log(`  ${row.name.padEnd(18)} echo failed: ${(error as Error).message.trim()}`);
        if (proxy) await stop(proxy.child);
        continue;
      }
      if (proxy) {
        row.memoryPerConnection = (rss(proxy.child.pid).peak - idle) / CONNECTIONS;
        if (row.name !== "socat") row.idleMemoryPerConnection = await idleMemory(proxy.child.pid, proxy.port);
        await stop(proxy.child);
      }
      const { msgsPerSec, p50Ms, p99Ms } = row.echo;
      console.log(
        `  ${row.name.padEnd(18)} echo ${Math.round(msgsPerSec)} msgs/s, ` +
          `p50 ${p50Ms.toFixed(3)} ms, p99 ${p99Ms.toFixed(3)} ms`,
      );
    }
    if (hasApi(PROXY_STAGE)) {
      cost = await proxyCost(PROXY_STAGE, echo.port);
      const kib = (bytes: number) => `${(bytes / 1024).toFixed(0)} KiB`;
      console.log(
        `  ${PROXY_STAGE}: one idle proxy ${kib(cost.one)}, 100 proxies ${kib(cost.hundred)} ` +
          `(${kib(cost.hundred / 100)} each)`,
      );
    }
  } finally {
    if (iperfServer) await stop(iperfServer);
    await stop(echo.child);
  }

  const direct = rows[0]!;
  const ratio = (value: number | undefined, base: number | undefined) => (value && base ? value / base : NaN);
  const fmt = (value: number, digits = 2) => (Number.isFinite(value) ? value.toFixed(digits) : "-");
  const lines = [
    "| path | bulk Gbit/s | x direct | bulk peak RSS | echo msgs/s | x direct | p50 ms | p99 ms " +
      "| peak memory per connection | idle memory per connection |",
    `| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |`,
    ...rows.map((row) => {
      const bulk = ratio(row.bulkGbps, direct.bulkGbps);
      const msgs = ratio(row.echo?.msgsPerSec, direct.echo?.msgsPerSec);
      const memory =
        row.memoryPerConnection === undefined || !Number.isFinite(row.memoryPerConnection)
          ? "-"
          : row.name === "socat"
            ? "- (a process per connection)"
            : `${(row.memoryPerConnection / 1024).toFixed(1)} KiB`;
      const idle =
        row.idleMemoryPerConnection === undefined ? "-" : `${(row.idleMemoryPerConnection / 1024).toFixed(1)} KiB`;
      const peak = row.bulkPeak === undefined ? "-" : `${(row.bulkPeak / MiB).toFixed(1)} MiB`;
      const cells = [
        row.name,
        fmt(row.bulkGbps ?? NaN),
        row === direct ? "1" : fmt(bulk),
        peak,
        Math.round(row.echo?.msgsPerSec ?? 0),
        row === direct ? "1" : fmt(msgs),
        fmt(row.echo?.p50Ms ?? NaN, 3),
        fmt(row.echo?.p99Ms ?? NaN, 3),
        memory,
        idle,
      ];
      return `| ${cells.join(" | ")} |`;
    }),
  ];
  const bar = (value: number) =>
    Number.isFinite(value) ? `${"#".repeat(Math.round(value * 40))} ${value.toFixed(2)}` : "-";
  const chart = [
    "ratio to direct (40 # = 1.00)",
    ...rows
      .slice(1)
      .flatMap((row) => [
        `${row.name.padEnd(18)} bulk ${bar(ratio(row.bulkGbps, direct.bulkGbps))}`,
        `${"".padEnd(18)} echo ${bar(ratio(row.echo?.msgsPerSec, direct.echo?.msgsPerSec))}`,
      ]),
  ];
  console.log(`\n${lines.join("\n")}\n\n${chart.join("\n")}`);

  const out = resolve(ROOT, values.out);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(
    out,
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        proxies: LAB_STAGES,
        echo: ECHO_STAGE,
        seconds: SECONDS,
        connections: CONNECTIONS,
        pinned: pinning,
        loadBefore,
        loadAfter: loadavg()[0],
        proxyCost: cost,
        rows,
      },
      null,
      2,
    )}\n`,
  );
  console.log(`\nwritten to ${values.out}`);
}

await main();
process.exit(0);
