// test/003-load-generator.ts against real servers in real processes: stage 005, nothing at all, deliberately wrong
// servers started here (byte-flipper, resetter, early closer, silent), and limits made small on purpose (a lower
// open-files limit with prlimit; a ten-port ephemeral range inside a private network namespace).

import { describe, expect, test } from "bun:test";
import { startFaultyEchoServer, unusedPort } from "./support/net.ts";
import { run, runToExit, startStage } from "./support/process.ts";

const GENERATOR = "test/003-load-generator.ts";
const SERVER = "tcp_echo_server/005-bounded-concurrency.ts";

interface Report {
  target: string;
  config: Record<string, unknown>;
  limits: {
    fits: boolean;
    problems: string[];
    openFiles: number | string | null;
    ephemeralPorts: [number, number] | null;
  };
  elapsedSeconds: number;
  messages: number;
  messagesPerSecond: number;
  bytesSent: number;
  bytesReceived: number;
  sentMiBPerSecond: number;
  receivedMiBPerSecond: number;
  latencyMicroseconds: Record<"p50" | "p90" | "p99" | "p99_9" | "max" | "mean" | "count", number>;
  connectLatencyMicroseconds: Record<"p50" | "p90" | "p99" | "p99_9" | "max" | "mean" | "count", number>;
  connected: number;
  clientCpu: { user: number; system: number; total: number };
  errors: Record<string, number>;
  firstErrors: Record<string, string>;
  firstMismatch: {
    connection: number;
    message: number;
    offset: number;
    streamOffset: number;
    expected: number;
    got: number;
  } | null;
  interrupted: boolean;
}

async function generate(args: string[], options: { prefix?: string[] } = {}) {
  return runToExit(GENERATOR, args, { timeoutMs: 30_000, ...options });
}

/** Runs with --json: the JSON document from stdout, the text summary from stderr. */
async function generateJson(args: string[], options: { prefix?: string[] } = {}) {
  const result = await generate([...args, "--json"], options);
  return { ...result, report: JSON.parse(result.stdout) as Report, text: result.stderr };
}

/** "45.1µs" -> 45.1, "1.02ms" -> 1020 (microseconds). */
function microseconds(text: string): number {
  const match = /^([\d.]+)(ns|µs|ms|s)$/.exec(text);
  if (!match) throw new Error(`not a duration: ${text}`);
  const scale = { ns: 0.001, µs: 1, ms: 1000, s: 1_000_000 }[match[2] as "ns" | "µs" | "ms" | "s"];
  return Number(match[1]) * scale;
}

const canUnshare = Bun.spawnSync(["unshare", "--net", "--pid", "--fork", "true"], { stderr: "ignore" }).exitCode === 0;
const hasPrlimit = Bun.which("prlimit") !== null;
const hasScript = Bun.which("script") !== null;

describe("003-load-generator", () => {
  test("-m: every message of every connection checked against stage 005; exact counts, exit 0, no stderr", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const { code, stdout, stderr } = await generate(["-c", "20", "-m", "200", "--port", String(server.port)]);
    expect(stdout).toStartWith(`Running 200 messages per connection test @ 127.0.0.1:${server.port}\n`);
    expect(stdout).toContain(
      "  20 connections, 64-byte messages, pipeline 1, connecting 5,000/s, warmup 0s, timeout 5s\n",
    );
    expect(stdout).toMatch(/^ {2}limits: open files \d+ \(\d+ in use\), ephemeral ports \d+-\d+: 20 connections fit$/m);
    expect(stdout).toMatch(/^ {2}Latency +p50 +p90 +p99 +p99\.9 +max +mean$/m);
    expect(stdout).toMatch(/^ {4}reply( +[\d.]+(ns|µs|ms|s)){6}$/m);
    expect(stdout).toMatch(/^ {4}connect( +[\d.]+(ns|µs|ms|s)){6}$/m);
    expect(stdout).toContain("  4,000 messages in ");
    expect(stdout).toContain("  Sent:         0.24 MiB, "); // 4000 x 64 bytes
    expect(stdout).toContain("  Received:     0.24 MiB, ");
    expect(stdout).toContain("  Connections:  20 of 20 connected\n");
    expect(stdout).toContain("  Errors:       0\n");
    expect(stderr).toBe(""); // piped: no progress line
    expect(code).toBe(0);
  });

  test("pipelining and messages that TCP splits: every reply still verified, exact counts", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    // 4 x 70000 bytes in flight: one write and one read can span the 4093-byte message pool many times over.
    const { code, report } = await generateJson([
      "-c",
      "4",
      "-m",
      "100",
      "-s",
      "70000",
      "--pipeline",
      "4",
      "--port",
      String(server.port),
    ]);
    expect(report.messages).toBe(400);
    expect(report.bytesSent).toBe(400 * 70_000);
    expect(report.bytesReceived).toBe(400 * 70_000);
    expect(report.latencyMicroseconds.count).toBe(400);
    expect(report.errors.total).toBe(0);
    expect(code).toBe(0);
  });

  test("-d with --warmup: the measured window is the duration, the warmup is not counted", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const { code, report } = await generateJson([
      "-c",
      "5",
      "-d",
      "500ms",
      "--warmup",
      "1",
      "--port",
      String(server.port),
    ]);
    expect(report.elapsedSeconds).toBeGreaterThanOrEqual(0.5);
    expect(report.elapsedSeconds).toBeLessThan(1.4); // 1.5 s or more if the warmup were counted
    expect(report.config).toMatchObject({ durationSeconds: 0.5, warmupSeconds: 1 });
    expect(report.messages).toBeGreaterThan(0);
    expect(report.latencyMicroseconds.count).toBe(report.messages);
    expect(report.connectLatencyMicroseconds.count).toBe(5);
    expect(code).toBe(0);
  });

  test("--json parses, and its figures agree with the text summary", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const { code, report, text } = await generateJson([
      "-c",
      "8",
      "-m",
      "500",
      "-s",
      "200",
      "--port",
      String(server.port),
    ]);
    expect(code).toBe(0);
    expect(report.target).toBe(`127.0.0.1:${server.port}`);
    const field = (pattern: RegExp): string => {
      const match = pattern.exec(text);
      if (!match) throw new Error(`${pattern} not in:\n${text}`);
      return match[1]!;
    };
    expect(Number(field(/^ {2}([\d,]+) messages in /m).replaceAll(",", ""))).toBe(report.messages);
    expect(report.messages).toBe(4000);
    expect(field(/ messages in ([\d.]+)s,/)).toBe(report.elapsedSeconds.toFixed(2));
    expect(field(/^ {2}Messages\/sec: ([\d.]+)$/m)).toBe(report.messagesPerSecond.toFixed(2));
    expect(field(/^ {2}Sent: +([\d.]+) MiB, /m)).toBe((report.bytesSent / 1048576).toFixed(2));
    expect(field(/^ {2}Sent: +[\d.]+ MiB, ([\d.]+) MiB\/s$/m)).toBe(report.sentMiBPerSecond.toFixed(2));
    expect(field(/^ {2}Received: +([\d.]+) MiB, /m)).toBe((report.bytesReceived / 1048576).toFixed(2));
    expect(field(/^ {2}Received: +[\d.]+ MiB, ([\d.]+) MiB\/s$/m)).toBe(report.receivedMiBPerSecond.toFixed(2));
    expect(field(/^ {2}Connections: +(\d+) of 8 connected$/m)).toBe(String(report.connected));
    expect(field(/^ {2}Errors: +(\d+)$/m)).toBe(String(report.errors.total));
    expect(field(/^ {2}Client CPU: +(\d+)% of one core/m)).toBe(String(Math.round(report.clientCpu.total * 100)));
    // Latencies: the text shows 3 significant digits of the same values.
    for (const [row, figures] of [
      ["reply", report.latencyMicroseconds],
      ["connect", report.connectLatencyMicroseconds],
    ] as const) {
      const cells = field(new RegExp(`^ {4}${row} +(.+)$`, "m"))
        .trim()
        .split(/ +/)
        .map(microseconds);
      const expected = [figures.p50, figures.p90, figures.p99, figures.p99_9, figures.max, figures.mean];
      expect(cells).toHaveLength(6);
      cells.forEach((cell, i) =>
        expect(Math.abs(cell - expected[i]!)).toBeLessThanOrEqual(expected[i]! * 0.005 + 0.001),
      );
      expect(figures.p50).toBeLessThanOrEqual(figures.p99);
      expect(figures.p99_9).toBeLessThanOrEqual(figures.max);
    }
  });

  test("stage 003 serves one client: the others fail (refused or reset), the one served completes", async () => {
    await using server = await startStage("tcp_echo_server/003-loop.ts", ["--port", "0"]);
    const { code, report } = await generateJson([
      "-c",
      "3",
      "--connect-rate",
      "20",
      "-m",
      "10",
      "--port",
      String(server.port),
    ]);
    expect(report.connected).toBeGreaterThanOrEqual(1);
    expect(report.errors.refused! + report.errors.reset! + report.errors.closed!).toBe(2);
    expect(report.messages).toBe(10);
    expect(code).toBe(1);
    expect(await server.waitExit()).toBe(0); // its one client finished and closed: 003 exits
  });

  test("nothing listening: every connection refused, a clear message, exit 1", async () => {
    const port = unusedPort();
    const { code, stdout, stderr } = await generate(["-c", "5", "-m", "10", "--port", String(port)]);
    expect(stdout).toContain("  Connections:  0 of 5 connected\n");
    expect(stdout).toContain("  Errors:       5 (refused 5)\n");
    expect(stdout).toContain("    refused: connection refused: is a server listening there?\n");
    expect(stdout).toContain(`first: connection 1: ECONNREFUSED connecting to 127.0.0.1:${port}\n`);
    expect(stderr).toBe(`error: nothing is listening on 127.0.0.1:${port} (every connection was refused)\n`);
    expect(code).toBe(1);
  });

  test("a server that flips one byte: mismatch with where and both bytes; the rest carry on", async () => {
    using server = startFaultyEchoServer({ kind: "flip", atOffset: 1000 }, 2);
    const { code, report, text } = await generateJson(["-c", "4", "-m", "50", "--port", String(server.port)]);
    // Stream offset 1000 of 64-byte messages: message 16 (1000 / 64 = 15.6), byte 40 of it.
    expect(report.firstMismatch).toMatchObject({ message: 16, offset: 40, streamOffset: 1000 });
    const { expected, got } = report.firstMismatch!;
    expect(got).toBe(expected ^ 0x20); // the case-flipped byte
    const mismatch = new RegExp(
      `first: connection ${report.firstMismatch!.connection}, message 16, byte 40 of 64 \\(stream offset 1000\\): ` +
        `got 0x[0-9a-f]{2} '[a-z]', expected 0x[0-9a-f]{2} '[A-Z]'$`,
      "m",
    );
    expect(text).toMatch(mismatch);
    expect(report.errors).toMatchObject({ mismatch: 1, total: 1 });
    expect(report.messages).toBe(3 * 50 + 15); // three clean connections, and 15 good replies before the bad byte
    expect(code).toBe(1);
  });

  test("a flipped byte inside a long reply (checked by the native comparison, not the short-chunk loop)", async () => {
    using server = startFaultyEchoServer({ kind: "flip", atOffset: 150_000 });
    const { code, report } = await generateJson(["-c", "1", "-m", "5", "-s", "100000", "--port", String(server.port)]);
    expect(report.firstMismatch).toMatchObject({ connection: 1, message: 2, offset: 50_000, streamOffset: 150_000 });
    expect(report.messages).toBe(1);
    expect(code).toBe(1);
  });

  // Messages differ from one another and from one connection to the next, so a server answering with stale or
  // someone else's bytes cannot pass: here it answers everything with its very first reply.
  test("a server that replays an old reply: caught on the next message and on the other connection", async () => {
    using sameConnection = startFaultyEchoServer({ kind: "replay" });
    const one = await generateJson(["-c", "1", "-m", "2", "--port", String(sameConnection.port)]);
    expect(one.report.messages).toBe(1);
    expect(one.report.firstMismatch).toMatchObject({ connection: 1, message: 2 });
    expect(one.code).toBe(1);
    using otherConnection = startFaultyEchoServer({ kind: "replay" });
    const two = await generateJson(["-c", "2", "-m", "1", "--port", String(otherConnection.port)]);
    expect(two.report.messages).toBe(1); // the first to arrive got its own reply; the other got a copy of it
    expect(two.report.errors).toMatchObject({ mismatch: 1, total: 1 });
    expect(two.report.firstMismatch).toMatchObject({ message: 1 });
    expect(two.code).toBe(1);
  });

  test("a server that resets mid-stream: every connection counted as reset, the replies before counted", async () => {
    using server = startFaultyEchoServer({ kind: "reset", afterBytes: 10 * 64 + 20 });
    const { code, report, text } = await generateJson(["-c", "6", "-m", "50", "--port", String(server.port)]);
    expect(report.errors).toMatchObject({ reset: 6, total: 6 });
    expect(report.messages).toBe(6 * 10);
    expect(text).toContain("  Errors:       6 (reset 6)\n");
    expect(text).toMatch(/first: connection \d+: ECONNRESET after \d+ reply bytes$/m);
    expect(code).toBe(1);
  });

  test("a server that closes while replies are owed: counted as closed", async () => {
    using server = startFaultyEchoServer({ kind: "close", afterBytes: 5 * 64 });
    const { code, report } = await generateJson(["-c", "3", "-m", "20", "--port", String(server.port)]);
    expect(report.errors).toMatchObject({ closed: 3, total: 3 });
    expect(report.firstErrors.closed).toMatch(
      /^connection \d+: closed by the server after 320 reply bytes, with 1 replies owed$/,
    );
    expect(code).toBe(1);
  });

  test("a server that never answers: timeout after --timeout", async () => {
    using server = startFaultyEchoServer({ kind: "silent" });
    const { code, report } = await generateJson([
      "-c",
      "3",
      "-m",
      "5",
      "--timeout",
      "300ms",
      "--port",
      String(server.port),
    ]);
    expect(report.errors).toMatchObject({ timeout: 3, total: 3 });
    expect(report.firstErrors.timeout).toMatch(
      /^connection \d+: no complete reply to message 1 after 0\.3 s \(0 of 64 bytes\)$/,
    );
    expect(code).toBe(1);
  });

  test.skipIf(!hasPrlimit)(
    "open-files limit too low: said plainly before the run, the excess counted as EMFILE",
    async () => {
      await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
      const { code, report, text, stderr } = await generateJson(
        ["-c", "100", "-m", "5", "--port", String(server.port)],
        {
          prefix: ["prlimit", "--nofile=60:60"],
        },
      );
      expect(text).toMatch(/^ {2}limits: open files 60 \(\d+ in use\), .*: the connections do NOT fit$/m);
      const warning =
        "^warning: 100 connections need 100 file descriptors, but the open-files limit is 60 with \\d+ in use: " +
        "raise it \\(ulimit -n\\) or lower -c; connections past it fail with EMFILE$";
      expect(stderr).toMatch(new RegExp(warning, "m"));
      expect(report.limits.fits).toBe(false);
      expect(report.errors.EMFILE).toBeGreaterThan(0);
      expect(report.errors.EMFILE! + report.connected).toBe(100);
      expect(report.errors.refused).toBe(0); // Bun said ECONNREFUSED; the generator knows better
      expect(report.firstErrors.EMFILE).toContain("no file descriptor left for a new socket");
      expect(report.messages).toBe(report.connected * 5);
      expect(code).toBe(1);
    },
  );

  // A private network namespace (and PID namespace, so nothing outlives the test) with only ten ephemeral ports:
  // its own loopback, its own port range, its own stage 005. Port 5000 is safe there: nothing else lives in it.
  test.skipIf(!canUnshare)(
    "ephemeral ports exhausted: said plainly before the run, the excess counted as EADDRNOTAVAIL",
    async () => {
      const script = [
        "set -e",
        "ip link set lo up",
        'echo "40000 40009" > /proc/sys/net/ipv4/ip_local_port_range',
        'fifo=$(mktemp -u); mkfifo "$fifo"',
        `"$1" ${SERVER} --port 5000 --log-level error > "$fifo" &`,
        'read -r line < "$fifo"; rm -f "$fifo"', // wait for "listening on 127.0.0.1:5000"
        'set +e; "$@"',
      ].join("\n");
      const { code, report, stderr } = await generateJson(["-c", "20", "-m", "5", "--port", "5000"], {
        prefix: ["unshare", "--net", "--pid", "--fork", "--kill-child", "sh", "-c", script, "sh"],
      });
      expect(report.limits.ephemeralPorts).toEqual([40000, 40009]);
      expect(report.limits.fits).toBe(false);
      expect(stderr).toContain(
        "warning: 20 connections to one address need 20 local ports, but the ephemeral port range 40000-40009 has 10",
      );
      expect(report.errors.EADDRNOTAVAIL).toBeGreaterThan(0);
      expect(report.errors.EADDRNOTAVAIL! + report.connected).toBe(20);
      expect(report.messages).toBe(report.connected * 5);
      expect(code).toBe(1);
    },
  );

  test("SIGINT stops the run early and still prints the summary", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "info"]);
    await using generator = run(GENERATOR, ["-c", "2", "-d", "60", "--port", String(server.port)]);
    await server.waitForLog(/serving[^]*serving/); // both connected: the generator is (about to start) sending
    generator.proc.kill("SIGINT");
    const code = await generator.waitExit(10_000);
    const stdout = await generator.stdout.ended();
    expect(stdout).toContain("  (interrupted: stopped early by a signal)\n");
    expect(stdout).toContain("  Errors:       0\n");
    expect(code).toBe(0);
  });

  test.skipIf(!hasScript)("on a terminal: a live progress line, cleared before the summary", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    // util-linux `script` gives the generator a pseudo-terminal; its output is the terminal's.
    const command = `${process.execPath} ${GENERATOR} -c 2 -d 1.3 --port ${server.port}`;
    const child = Bun.spawn(["script", "-qec", command, "/dev/null"], {
      cwd: `${import.meta.dir}/..`,
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, NO_COLOR: "1" },
    });
    const [screen, code] = await Promise.all([new Response(child.stdout).text(), child.exited]);
    expect(screen).toMatch(/\r\x1b\[K[\d.]+s {2}[\d,]+ msgs {2}[\d,]+ msgs\/s {2}2 connections {2}0 errors/);
    expect(screen).toMatch(/\r\x1b\[K(\r\n)? {2}Latency/); // the line is wiped before the summary is printed
    expect(code).toBe(0);
  });

  test("usage: --help on stdout with exit 0; bad options are one line on stderr with exit 2", async () => {
    const help = await generate(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith("Usage: bun test/003-load-generator.ts [options]");
    const bad = [
      ["-c", "0"],
      ["-d", "5", "-m", "5"],
      ["-d", "soon"],
      ["-s", "0"],
      ["--pipeline", "x"],
      ["--warmup", "-1"],
      ["--nope"],
      ["-s", "1048576", "--pipeline", "100"],
    ];
    for (const args of bad) {
      const result = await generate(args);
      expect({ args, code: result.code, stdout: result.stdout }).toEqual({ args, code: 2, stdout: "" });
      expect(result.stderr).toMatch(/^error: [^\n]+ \(see --help\)\n$/);
    }
  });
});
