// test/005-open-loop-load.ts against real servers in real processes: stage 005, the stalling echo fixture
// (test/support/stalling-echo.ts), nothing at all, and a byte-flipping server started here. Rates are far below
// what this client and stage 005 sustain on a loaded 2-core machine (003 measures 20,000-100,000 msgs/s there),
// and every bound on time or latency is generous: these tests check behaviour, the benchmark checks speed.

import { describe, expect, test } from "bun:test";
import * as hdr from "hdr-histogram-js";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startFaultyEchoServer, unusedPort } from "./support/net.ts";
import { run, runToExit, startStage } from "./support/process.ts";

const CLIENT = "test/005-open-loop-load.ts";
const CLOSED_LOOP = "test/003-load-generator.ts";
const SERVER = "tcp_echo_server/005-bounded-concurrency.ts";
const STALLING = "test/support/stalling-echo.ts";

type Latency = Record<"p50" | "p90" | "p99" | "p99_9" | "max" | "mean" | "count", number>;

interface Report {
  config: Record<string, unknown>;
  elapsedSeconds: number;
  messages: number;
  messagesPerSecond: number;
  requestedRate: number | null;
  planned: number | null;
  sent: number;
  unsent: number | null;
  keptUp: boolean | null;
  heldBack: string[];
  latencyMicroseconds: Latency;
  uncorrectedLatencyMicroseconds: Latency;
  sendLagMicroseconds: Latency | null;
  connected: number;
  errors: Record<string, number>;
  firstMismatch: { connection: number; message: number; offset: number } | null;
  interrupted: boolean;
  series: Array<{
    second: number;
    messagesPerSecond: number;
    sentPerSecond: number;
    p50: number;
    p99: number;
    uncorrectedP99: number;
    errors: number;
  }>;
  histogramUnitNanoseconds: number;
  latencyHistogram: string;
  uncorrectedLatencyHistogram: string;
  workers: Array<{
    pid: number;
    messages: number;
    planned: number;
    errors: number;
    latencyHistogram: string;
    uncorrectedLatencyHistogram: string;
  }>;
}

async function load(file: string, args: string[]) {
  const result = await runToExit(file, [...args, "--json"], { timeoutMs: 30_000 });
  if (result.stdout === "") throw new Error(`no JSON (exit ${result.code}):\n${result.stderr}`);
  return { ...result, report: JSON.parse(result.stdout) as Report, text: result.stderr };
}

const decode = (base64: string): hdr.Histogram => hdr.decodeFromCompressedBase64(base64, 32, false);

/** A temporary folder for output files, removed on disposal. */
function tempDir(): { path: string } & Disposable {
  const path = mkdtempSync(join(tmpdir(), "open-loop-"));
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) };
}

/**
 * Well-formedness of the XML this client writes (no DTD, no CDATA): every tag closed in order, attributes quoted
 * and unique, only the five predefined entities or numeric ones. Returns the element names in document order.
 */
function checkXml(text: string): string[] {
  const names: string[] = [];
  const open: string[] = [];
  const token =
    /<(\/?)([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+\s*=\s*(?:"[^"<]*"|'[^'<]*'))*)\s*(\/?)>|<\?[^>]*\?>|<!--[^]*?-->/g;
  let last = 0;
  for (let match = token.exec(text); match !== null; match = token.exec(text)) {
    const between = text.slice(last, match.index);
    if (/[<>]/.test(between)) throw new Error(`stray < or > near ${JSON.stringify(between.slice(0, 60))}`);
    if (/&(?!(amp|lt|gt|quot|apos|#\d+|#x[\da-f]+);)/i.test(between)) throw new Error(`bad entity in ${between}`);
    last = token.lastIndex;
    const [, closing, name, attributes, selfClosing] = match;
    if (name === undefined) continue; // processing instruction or comment
    if (closing) {
      if (open.pop() !== name) throw new Error(`</${name}> does not close the open element`);
      continue;
    }
    const keys = [...(attributes ?? "").matchAll(/([\w:.-]+)\s*=/g)].map((m) => m[1]);
    if (new Set(keys).size !== keys.length) throw new Error(`duplicate attribute in <${name}>`);
    names.push(name);
    if (!selfClosing) open.push(name);
  }
  if (text.slice(last).trim() !== "") throw new Error("text after the root element");
  if (open.length > 0) throw new Error(`unclosed: ${open.join(", ")}`);
  return names;
}

const hasScript = Bun.which("script") !== null;

describe("005-open-loop-load", () => {
  test("below saturation: rate kept within 2%, every planned message written and verified, files written", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    using dir = tempDir();
    const hgrmFile = join(dir.path, "run.hgrm");
    const plotFile = join(dir.path, "run.svg");
    // 2,000 msgs/s over 10 connections: a tenth or less of what this machine does closed-loop. --pipeline 16 lets
    // a scheduling hiccup of the loaded machine be caught up at once rather than waited out.
    const args = ["--rate", "2000", "-c", "10", "-d", "3", "--pipeline", "16", "--port", String(server.port)];
    const { code, report, text } = await load(CLIENT, [...args, "--hgrm", hgrmFile, "--plot", plotFile]);
    expect(text).toContain("  open loop at 2,000 msgs/s (200/s per connection)\n");
    expect(report.requestedRate).toBe(2000);
    expect(Math.abs(report.messagesPerSecond - 2000) / 2000).toBeLessThan(0.02);
    expect(report.elapsedSeconds).toBe(3); // the plan's window, exactly
    expect(report.planned).toBe(6000); // messages due in [0, 3 s): n = 0 ... 5,999
    expect(report.sent + report.unsent!).toBe(6000);
    expect(report.messages).toBe(report.sent); // every one written was answered, and verified
    expect(report.latencyMicroseconds.count).toBe(report.messages);
    expect(report.uncorrectedLatencyMicroseconds.count).toBe(report.messages);
    expect(report.sendLagMicroseconds!.count).toBe(report.sent);
    // Corrected latency runs from the plan, which is never later than the write.
    expect(report.latencyMicroseconds.p50).toBeGreaterThanOrEqual(report.uncorrectedLatencyMicroseconds.p50);
    expect(report.latencyMicroseconds.max).toBeGreaterThanOrEqual(report.uncorrectedLatencyMicroseconds.max);
    // One point per second of the window, by reply arrival; together they hold every reply.
    expect(report.series.map((s) => s.second)).toEqual([0, 1, 2]);
    expect(report.series.reduce((sum, s) => sum + s.messagesPerSecond, 0)).toBe(report.messages);
    expect(report.series.reduce((sum, s) => sum + s.sentPerSecond, 0)).toBe(report.sent);
    expect(report.errors.total).toBe(0);
    expect(code).toBe(0);

    // --hgrm: HdrHistogram's percentile text parses back, and says what the JSON says.
    const lines = readFileSync(hgrmFile, "utf8").trimEnd().split("\n");
    expect(lines[0]!.trim().split(/\s+/)).toEqual(["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]);
    const rows = lines
      .slice(1)
      .filter((line) => /^\s*[\d.]+\s/.test(line))
      .map((line) => line.trim().split(/\s+/).map(Number));
    expect(rows.length).toBeGreaterThan(20);
    rows.forEach((row, i) => {
      expect(row.length).toBeGreaterThanOrEqual(3);
      if (i === 0) return;
      const before = rows[i - 1]!;
      expect(row[0]!).toBeGreaterThanOrEqual(before[0]!); // value (ms)
      expect(row[1]!).toBeGreaterThanOrEqual(before[1]!); // percentile (0-1)
      expect(row[2]!).toBeGreaterThanOrEqual(before[2]!); // count up to here
    });
    expect(rows.at(-1)![1]).toBe(1);
    expect(rows.at(-1)![2]).toBe(report.messages);
    // The JSON's p99 lies between the rows either side of 99% (the rows are the tops of their buckets, in ms).
    const p99 = report.latencyMicroseconds.p99 / 1000;
    const slack = p99 * 0.002 + 0.001;
    expect(rows.findLast((row) => row[1]! < 0.99)![0]!).toBeLessThanOrEqual(p99 + slack);
    expect(rows.find((row) => row[1]! >= 0.99)![0]!).toBeGreaterThanOrEqual(p99 - slack);
    const footer = lines.slice(-3).join("\n");
    expect(footer).toMatch(/^#\[Mean {4}= +[\d.]+, StdDeviation {3}= +[\d.]+\]$/m);
    expect(footer).toMatch(new RegExp(`^#\\[Max {5}= +[\\d.]+, Total count {4}= +${report.messages}\\]$`, "m"));
    expect(footer).toMatch(/^#\[Buckets = +\d+, SubBuckets {5}= +\d+\]$/m);
    const max = Number(/Max {5}= +([\d.]+)/.exec(footer)![1]);
    expect(Math.abs(max * 1000 - report.latencyMicroseconds.max)).toBeLessThan(1);

    // --plot: well-formed SVG, with the percentile panel (two curves on the log axis) and the time panel.
    const svg = readFileSync(plotFile, "utf8");
    const elements = checkXml(svg);
    expect(elements[0]).toBe("svg");
    const percentilePanel = /<g id="percentile-panel">([^]*?)<\/g>/.exec(svg)![1]!;
    const timePanel = /<g id="time-panel">([^]*?)<\/g>/.exec(svg)![1]!;
    expect(percentilePanel.match(/<path class="latency" d="M[\d.]+,[\d.]+( L[\d.]+,[\d.]+)+"/g)).toHaveLength(2);
    expect(percentilePanel).toContain(">99%<");
    expect(percentilePanel).toContain(">99.9%<");
    expect(timePanel.match(/<rect class="rate" /g)).toHaveLength(3);
    expect(timePanel).toMatch(/<path class="p99" d="M[\d.]+,[\d.]+ L[\d.]+,[\d.]+ L[\d.]+,[\d.]+"/);
  });

  // The lesson of the stage: one second of stall in a five-second run. The three runs go side by side, each
  // against its own stalling server, so the test takes one run's time.
  test("a server stalling 1 s: the corrected p99 shows it; the uncorrected and closed-loop (003) do not", async () => {
    const stalling = () => startStage(STALLING, ["--port", "0", "--stall-every", "5", "--stall-for", "1"]);
    await using forClosed = await stalling();
    await using forOpen = await stalling();
    await using forDeep = await stalling();
    const common = ["-c", "10", "-d", "5"];
    const [closed, open, deep] = await Promise.all([
      load(CLOSED_LOOP, [...common, "--port", String(forClosed.port)]),
      load(CLIENT, [...common, "--rate", "2000", "--port", String(forOpen.port)]),
      load(CLIENT, [...common, "--rate", "2000", "--pipeline", "1000", "--port", String(forDeep.port)]),
    ]);
    for (const server of [forClosed, forOpen, forDeep]) {
      expect(server.stderr.text).toMatch(/^stall 1: frozen for 1000 ms from 2\.\d\d s$/m);
    }
    // Closed loop: ten messages (one per connection) waited through the stall, among tens of thousands.
    expect(closed.report.latencyMicroseconds.max).toBeGreaterThan(800_000);
    expect(closed.report.latencyMicroseconds.p99).toBeLessThan(100_000);
    // Open loop: about 2,000 of the 10,000 planned messages were due during the stall.
    const corrected = open.report.latencyMicroseconds;
    expect(corrected.p99).toBeGreaterThan(500_000);
    expect(corrected.p90).toBeGreaterThan(200_000);
    expect(open.report.uncorrectedLatencyMicroseconds.p99).toBeLessThan(100_000); // the writes waited instead
    expect(open.report.planned).toBe(10_000);
    expect(open.report.messages).toBe(open.report.sent);
    // The second of the stall shows in the series: no replies for a while, then the backlog at once.
    expect(Math.max(...open.report.series.map((s) => s.p99))).toBeGreaterThan(500_000);
    // The client says why it fell behind its plan: the server, not its own configuration.
    expect(open.report.keptUp).toBe(false);
    expect(open.text).toMatch(/^warning: the client did not keep to its plan: /m);
    expect(open.text).toContain("  - the server was slow at times: ");
    // With room to keep writing on schedule, the uncorrected latency sees the stall too.
    expect(deep.report.uncorrectedLatencyMicroseconds.p99).toBeGreaterThan(500_000);
    expect(deep.report.latencyMicroseconds.p99).toBeGreaterThan(500_000);
    expect([closed.code, open.code, deep.code]).toEqual([0, 0, 0]);
  });

  test("--workers 2: one plan shared, merged histograms and counters exactly the sum of the parts", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const args = ["--rate", "4000", "-c", "10", "-d", "2", "--pipeline", "16", "--workers", "2"];
    const { code, report, text } = await load(CLIENT, [...args, "--port", String(server.port)]);
    expect(text).toContain("2 worker processes\n");
    expect(text).toMatch(/^ {2}Workers: +2 processes, \d+%, \d+% of a core each$/m);
    expect(report.workers).toHaveLength(2);
    const [a, b] = report.workers as [Report["workers"][0], Report["workers"][0]];
    expect(a.pid).not.toBe(b.pid);
    expect([a.planned, b.planned]).toEqual([4000, 4000]); // 5 connections each: half the plan each
    expect(report.planned).toBe(8000);
    expect(a.messages + b.messages).toBe(report.messages);
    expect(a.errors + b.errors).toBe(report.errors.total!);
    expect(Math.abs(report.messagesPerSecond - 4000) / 4000).toBeLessThan(0.02);
    for (const [merged, parts] of [
      [report.latencyHistogram, [a.latencyHistogram, b.latencyHistogram]],
      [report.uncorrectedLatencyHistogram, [a.uncorrectedLatencyHistogram, b.uncorrectedLatencyHistogram]],
    ] as const) {
      const sum = decode(parts[0]);
      sum.add(decode(parts[1]));
      const fromClient = decode(merged);
      // The encoding lists every bucket's count: equal encodings are equal histograms, bucket for bucket.
      expect(hdr.encodeIntoCompressedBase64(sum)).toBe(merged);
      expect(fromClient.totalCount).toBe(report.messages);
      expect(decode(parts[0]).totalCount).toBe(a.messages);
      expect(fromClient.outputPercentileDistribution()).toBe(sum.outputPercentileDistribution());
    }
    // The summary figures come from the merged histogram (in units of 100 ns).
    const merged = decode(report.latencyHistogram);
    expect(report.histogramUnitNanoseconds).toBe(100);
    expect(report.latencyMicroseconds.max).toBe(merged.maxValue / 10);
    expect(report.latencyMicroseconds.p50).toBe(Math.min(merged.getValueAtPercentile(50), merged.maxValue) / 10);
    // The per-second series merges the workers' seconds too.
    expect(report.series.reduce((sum, s) => sum + s.messagesPerSecond, 0)).toBe(report.messages);
    expect(report.errors.total).toBe(0);
    expect(code).toBe(0);
  });

  test("without --rate: 003's closed loop, on several workers too, with exact counts and one latency", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const args = ["-c", "4", "-m", "50", "--workers", "2", "--pipeline", "2", "--port", String(server.port)];
    const { code, report, text } = await load(CLIENT, args);
    expect(text).toContain("  closed loop (each connection sends when its replies are in), 2 worker processes\n");
    expect(report.requestedRate).toBeNull();
    expect(report.planned).toBeNull();
    expect(report.sendLagMicroseconds).toBeNull();
    expect(report.messages).toBe(200);
    expect(report.workers.map((w) => w.messages)).toEqual([100, 100]);
    expect(report.uncorrectedLatencyMicroseconds).toEqual(report.latencyMicroseconds); // no plan to correct from
    expect(report.latencyMicroseconds.count).toBe(200);
    expect(code).toBe(0);
  });

  test("a rate the client cannot hold: a warning naming what held it back, the shortfall counted", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    // One connection, one message in flight: a loopback round trip of 20 µs or more caps it at 50,000 msgs/s.
    const { code, report, text } = await load(CLIENT, [
      "--rate",
      "200000",
      "-c",
      "1",
      "-d",
      "1",
      "--port",
      String(server.port),
    ]);
    expect(report.keptUp).toBe(false);
    expect(report.unsent).toBeGreaterThan(0);
    expect(report.sent + report.unsent!).toBe(report.planned!);
    expect(report.messagesPerSecond).toBeLessThan(200_000 * 0.98);
    expect(text).toMatch(/^warning: the client did not keep to its plan: it wrote [\d,]+ of 200,000 planned messages/m);
    expect(text).toMatch(/^ {2}- too few connections for the rate and the latency: .* raise --pipeline or -c$/m);
    expect(report.heldBack.length).toBeGreaterThanOrEqual(2);
    expect(report.errors.total).toBe(0);
    expect(code).toBe(0); // falling behind is reported, not an error: every reply was right
  });

  test("open loop still verifies every byte: a flipped byte is a mismatch with its place, exit 1", async () => {
    using server = startFaultyEchoServer({ kind: "flip", atOffset: 1000 }, 1);
    const { code, report } = await load(CLIENT, [
      "--rate",
      "1000",
      "-c",
      "2",
      "-d",
      "1",
      "--port",
      String(server.port),
    ]);
    expect(report.firstMismatch).toMatchObject({ message: 16, offset: 40 });
    expect(report.errors).toMatchObject({ mismatch: 1, total: 1 });
    expect(code).toBe(1);
  });

  test("nothing listening, with workers: every connection refused, a clear message, exit 1", async () => {
    const port = unusedPort();
    const { code, stdout, stderr } = await runToExit(CLIENT, [
      "--rate",
      "100",
      "-c",
      "4",
      "-d",
      "1",
      "--workers",
      "2",
      "--port",
      String(port),
    ]);
    expect(stdout).toContain("  Connections:  0 of 4 connected\n");
    expect(stdout).toContain("  Errors:       4 (refused 4)\n");
    expect(stderr).toBe(`error: nothing is listening on 127.0.0.1:${port} (every connection was refused)\n`);
    expect(code).toBe(1);
  });

  test("SIGINT stops every worker early and still prints the merged summary", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "info"]);
    const args = ["--rate", "1000", "-c", "2", "-d", "60", "--workers", "2", "--port", String(server.port)];
    await using client = run(CLIENT, args);
    await server.waitForLog(/serving[^]*serving/); // both workers connected
    await Bun.sleep(300); // let traffic start (the start is a message to each worker; no event reaches the test)
    client.proc.kill("SIGINT"); // to the parent only: it tells its workers
    const code = await client.waitExit(10_000);
    const stdout = await client.stdout.ended();
    expect(stdout).toContain("  (interrupted: stopped early by a signal)\n");
    expect(stdout).toContain("  Errors:       0\n");
    expect(code).toBe(0);
  });

  test.skipIf(!hasScript)("on a terminal: a live line with the rate, the requested rate, p99 and errors", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const command = `${process.execPath} ${CLIENT} --rate 500 -c 2 -d 2.5 --port ${server.port}`;
    const child = Bun.spawn(["script", "-qec", command, "/dev/null"], {
      cwd: `${import.meta.dir}/..`,
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, NO_COLOR: "1" },
    });
    const [screen, code] = await Promise.all([new Response(child.stdout).text(), child.exited]);
    expect(screen).toMatch(
      /\r\x1b\[K[\d.]+s {2}[\d,]+ msgs {2}[\d,]+ of 500 msgs\/s {2}p99 [\d.]+(µs|ms|s) {2}2 connections {2}0 errors/,
    );
    expect(screen).toMatch(/\r\x1b\[K(\r\n)? {2}Latency/); // wiped before the summary
    expect(code).toBe(0);
  });

  test("usage: --help on stdout with exit 0; bad options are one line on stderr with exit 2", async () => {
    const help = await runToExit(CLIENT, ["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith("Usage: bun test/005-open-loop-load.ts [options]");
    expect(help.stdout).toContain("  --rate N ");
    expect(help.stdout).toContain("  --workers N ");
    const bad = [
      ["--rate", "0"],
      ["--rate", "fast"],
      ["--rate", "100", "-m", "5"],
      ["--workers", "0"],
      ["--workers", "3", "-c", "2"],
      ["--hgrm", "/no/such/folder/run.hgrm"],
      ["--plot", ""],
      ["-d", "5", "-m", "5"],
      ["--pipeline", "0"],
    ];
    await Promise.all(
      bad.map(async (args) => {
        const result = await runToExit(CLIENT, args);
        expect({ args, code: result.code, stdout: result.stdout }).toEqual({ args, code: 2, stdout: "" });
        expect(result.stderr).toMatch(/^error: [^\n]+ \(see --help\)\n$/);
      }),
    );
  });

  test("the stalling fixture: an uppercase echo that freezes on schedule, with usage errors like a stage", async () => {
    const help = await runToExit(STALLING, ["--help"]);
    expect(help.stdout).toStartWith("Usage: bun test/support/stalling-echo.ts");
    expect(help.code).toBe(0);
    const bad = await runToExit(STALLING, ["--stall-every", "1", "--stall-for", "2"]);
    expect(bad.stderr).toBe("error: --stall-for must be shorter than --stall-every (see --help)\n");
    expect(bad.code).toBe(2);
  });
});
