// The benchmarks' command lines (the benchmarks themselves take minutes and are not tests): every entry point has
// a --help that says what it measures, how long it takes and what it writes; a usage error is one line, exit 2.

import { describe, expect, test } from "bun:test";
import { startEchoUpstream, TestClient, upperAscii } from "../test/support/net.ts";
import { ROOT, runToExit, startStage } from "../test/support/process.ts";

interface EntryPoint {
  file: string;
  /** Options its help must list. */
  options: string[];
  /** What its help must say about its output: where it writes and how to write elsewhere, or that it does not. */
  writes: RegExp[];
  bad: string[][];
}

const ENTRY_POINTS: EntryPoint[] = [
  {
    file: "bench/echo.ts",
    options: ["--seconds S", "--warmup S", "--rounds N", "--held N", "--out-dir DIR", "--chart-only", "-h, --help"],
    writes: [/REPLACES the committed results/, /--out-dir \/tmp\/bench/],
    bad: [["--bogus"], ["--seconds", "x"], ["--rounds", "0"], ["stray"]],
  },
  {
    file: "bench/loadgen-vs-minimal.ts",
    options: ["--server FILE", "-c, --connections", "-d, --duration S", "--warmup S", "--rounds N", "--pin"],
    writes: [/Writes no file/],
    bad: [["--bogus"], ["-c", "1,x"], ["--server", "no/such/file.ts"], ["--rounds", "1.5"]],
  },
  {
    file: "bench/proxy.ts",
    options: ["--seconds S", "--connections N", "--size BYTES", "--out FILE", "-h, --help"],
    writes: [/REPLACES the committed results/, /--out \/tmp\/proxy\.json/],
    bad: [["--bogus"], ["--seconds", "0"], ["--connections", "many"]],
  },
  {
    file: "bench/executables.ts",
    options: ["--rounds N", "--out FILE", "-h, --help"],
    writes: [/REPLACES the committed results/, /--out \/tmp\/executables\.json/],
    bad: [["--bogus"], ["--rounds", "0"], ["stray"]],
  },
  {
    file: "bench/echo-load.ts",
    options: ["--port PORT", "--pipeline K", "--hold"],
    writes: [],
    bad: [["--bogus"], []],
  },
  { file: "bench/minimal-client.ts", options: ["--port PORT", "-c N", "--warmup S"], writes: [], bad: [["--bogus"]] },
];

describe("bench entry points", () => {
  for (const { file, options, writes, bad } of ENTRY_POINTS) {
    test(`${file} --help: its options, what it measures, run time, what it writes`, async () => {
      const help = await runToExit(file, ["--help"]);
      expect({ code: help.code, stderr: help.stderr }).toEqual({ code: 0, stderr: "" });
      expect(help.stdout).toMatch(/^Usage: bun /);
      for (const option of options) expect(help.stdout).toContain(option);
      for (const pattern of writes) expect(help.stdout).toMatch(pattern);
      if (writes.length > 0) expect(help.stdout).toMatch(/^Run time: /m);
      for (const line of help.stdout.split("\n")) expect(line.length).toBeLessThanOrEqual(120);
    });

    test(`${file}: a usage error is one line on stderr, exit 2, no stack trace`, async () => {
      for (const args of bad) {
        const run = await runToExit(file, args);
        expect({ args, code: run.code, stdout: run.stdout }).toEqual({ args, code: 2, stdout: "" });
        expect(run.stderr).toMatch(/^error: [^\n]+ \(see --help\)\n$/);
      }
    });
  }

  test("bun run bench --help: each benchmark, its run time, what it writes, its options", async () => {
    const { code, stdout } = await runToExit("bench/run.ts", ["--help"]);
    expect(code).toBe(0);
    expect(stdout).toStartWith("Usage: bun run bench [NAME ...]");
    expect(stdout).toMatch(/^ {2}echo +.*min; REPLACES bench\/results\/echo\.json/m);
    expect(stdout).toMatch(/^ {2}client +.*min; prints a table, writes no file$/m);
    expect(stdout).toMatch(/^ {2}proxy +.*min; REPLACES bench\/results\/proxy\.json$/m);
    for (const name of ["echo", "client", "proxy"]) expect(stdout).toContain(`=== bench ${name}\nUsage: `);
    expect(stdout).toContain("  --out-dir DIR");
    expect(stdout).toContain("  -c, --connections N,N,...");
    expect(stdout).toContain("  --out FILE");
    const one = await runToExit("bench/run.ts", ["proxy", "--help"]);
    expect(one.stdout).toStartWith("=== bench proxy\nUsage: bun run bench:proxy");
    const unknown = await runToExit("bench/run.ts", ["nope"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toBe(
      'error: unknown benchmark "nope": the benchmarks are echo, client, proxy, executables (see --help)\n',
    );
  });

  test("through the package scripts: bun run bench:client|bench:proxy|bench --help", async () => {
    for (const script of ["bench:client", "bench:proxy", "bench"]) {
      const child = Bun.spawn([process.execPath, "run", script, "--help"], {
        cwd: ROOT,
        stdout: "pipe",
        stderr: "pipe",
      });
      const [stdout, code] = await Promise.all([new Response(child.stdout).text(), child.exited]);
      expect({ script, code }).toEqual({ script, code: 0 });
      expect(stdout).toStartWith("Usage: bun run bench");
    }
  });
});

describe("bench/reference/bun-pipe.ts, the proxy benchmark's floor", () => {
  test("carries 8 MiB both ways byte for byte, with a reader slower than the writer (backpressure)", async () => {
    const upstream = startEchoUpstream();
    try {
      await using pipe = await startStage("bench/reference/bun-pipe.ts", ["--upstream", upstream.address]);
      const client = await TestClient.connect(pipe.port);
      try {
        const sent = new Uint8Array(8 * 1024 * 1024).map((_, i) => (i * 7 + (i >> 11)) & 0xff);
        client.pauseReading(); // the echo replies pile up behind the pipe: it must pause, not buffer without end
        client.write(sent);
        await Bun.sleep(200); // a window for the piling up, not a synchronisation: the bytes are checked below
        client.resumeReading();
        expect(await client.readAtLeast(sent.length, 30_000)).toEqual(upperAscii(sent));
      } finally {
        client.close();
      }
    } finally {
      upstream.stop();
    }
  });

  test("without --upstream: one line, exit 2", async () => {
    expect(await runToExit("bench/reference/bun-pipe.ts", [])).toMatchObject({
      code: 2,
      stderr: "error: --upstream HOST:PORT is required\n",
    });
  });
});
