// The toxics' promises on real sockets, registered by every proxy stage that has them (007 and the stages after
// it): one measurement per toxic, with the bound that matters tight (a delay is never shorter, a cap never
// exceeded) and the other loose, since on a loaded 2-core machine everything can be late; the exact arithmetic is
// checked in-process (toxic-arithmetic.ts). Then what issue 9 found: a FIN or close waits for the bytes a toxic
// holds, lanes are bounded in memory whatever the toxic, attributes are range-checked, no timer overflows, and
// the log line counts bytes delivered.

import { describe, expect, test } from "bun:test";
import { decode, echoTransfer, randomBytes, startEchoUpstream, startFaultyEchoServer, TestClient } from "./net.ts";
import { memoryKiB, runToExit, startStage } from "./process.ts";

const MiB = 1024 * 1024;

export interface ToxicStage {
  /** The stage file, relative to the repository root. */
  file: string;
  /** Arguments every start needs besides --port, --upstream and the toxics. */
  args?: string[];
  /**
   * "lab" (010-013): timeout stalls (holds) the data, reset_peer counts from the connection's start, bandwidth in
   * KiB, attributes from 0 up. "toxiproxy" (014 on): as toxiproxy, timeout drops the data, reset_peer starts at the
   * first data (which it drops), bandwidth in KB of 1000 bytes, integers, negative values accepted.
   */
  semantics?: "lab" | "toxiproxy";
}

/** Milliseconds for one message to go through the proxy and come back. */
export async function roundTrip(client: TestClient, message = "ping"): Promise<number> {
  const already = client.receivedLength;
  const started = performance.now();
  client.write(message);
  await client.readAtLeast(already + message.length, 5000);
  return performance.now() - started;
}

export function toxicContractTests({ file, args: extra = [], semantics = "lab" }: ToxicStage): void {
  const STAGE = file;
  const lab = semantics === "lab";
  const bytesPerKB = lab ? 1024 : 1000;
  const label = file.replace(/^.*\//, "").slice(0, 3);
  async function startProxy(args: string[]) {
    const upstream = startEchoUpstream();
    const proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address, ...extra, ...args]);
    return {
      upstream,
      proxy,
      async [Symbol.asyncDispose]() {
        await proxy[Symbol.asyncDispose]();
        upstream.stop();
      },
    };
  }

  // One measurement per toxic on real sockets. The exact arithmetic is checked in-process above; here the bound that
  // matters is tight (a delay is never shorter, a cap never exceeded) and the other one is loose: on a loaded 2-core
  // machine everything can be late.
  describe(`${label} toxics, measured`, () => {
    test("latency adds at least the configured delay, jitter stays within its bounds", async () => {
      await using setup = await startProxy(["--toxic", "latency:downstream:latency=150,jitter=40"]);
      const client = await TestClient.connect(setup.proxy.port);
      try {
        for (let i = 0; i < 5; i++) {
          const elapsed = await roundTrip(client);
          expect(elapsed).toBeGreaterThanOrEqual(110 - 1);
          expect(elapsed).toBeLessThan(190 + 1000);
        }
      } finally {
        client.close();
      }
    });

    test("latency on both streams adds up", async () => {
      await using setup = await startProxy([
        "--toxic",
        "latency:upstream:latency=100",
        "--toxic",
        "latency:downstream:latency=100",
      ]);
      const client = await TestClient.connect(setup.proxy.port);
      try {
        expect(await roundTrip(client)).toBeGreaterThanOrEqual(200 - 1);
      } finally {
        client.close();
      }
    });

    test("bandwidth caps throughput (at most 20% over, for the first 10 ms slice)", async () => {
      const rate = 2048; // KB/s: 1 MiB should take about 0.5 s
      await using setup = await startProxy(["--toxic", `bandwidth:downstream:rate=${rate}`]);
      const data = randomBytes(1 * MiB);
      const { intact, seconds } = await echoTransfer(setup.proxy.port, data);
      expect(intact).toBe(true);
      const throughput = data.length / bytesPerKB / seconds;
      expect(throughput).toBeLessThan(rate * 1.2);
      expect(throughput).toBeGreaterThan(rate * 0.4); // slower only when the machine is busy
    });

    test("slicer delivers the stream in small pieces, intact", async () => {
      await using setup = await startProxy([
        "--toxic",
        "slicer:downstream:average_size=10,size_variation=5,delay=1000",
      ]);
      const client = await TestClient.connect(setup.proxy.port);
      try {
        const message = "abcdefghij".repeat(50); // 500 bytes: about 50 slices 1 ms apart
        client.write(message);
        expect(decode(await client.readAtLeast(500))).toBe(message.toUpperCase());
        expect(client.reads).toBeGreaterThanOrEqual(25); // without the toxic: 1
      } finally {
        client.close();
      }
    });

    test("limit_data lets exactly N bytes through, then closes", async () => {
      await using setup = await startProxy(["--toxic", "limit_data:downstream:bytes=1000"]);
      const client = await TestClient.connect(setup.proxy.port);
      client.write("x".repeat(5000));
      const received = await client.readToEnd(3000);
      expect(received.length).toBe(1000);
      expect(decode(received)).toBe("X".repeat(1000));
      await setup.proxy.waitForLog(/closed_by=proxy reason="toxic limit_data"/);
    });

    test("limit_data of 0 bytes closes the connection at the first byte, and lets nothing through", async () => {
      await using setup = await startProxy(["--toxic", "limit_data:downstream:bytes=0"]);
      const client = await TestClient.connect(setup.proxy.port);
      client.write("x");
      expect((await client.readToEnd(3000)).length).toBe(0);
      await setup.proxy.waitForLog(/bytes_up=1 bytes_down=0 closed_by=proxy reason="toxic limit_data"/);
    });

    test(`timeout ${lab ? "stalls" : "drops"} the data, then closes after its timeout`, async () => {
      await using setup = await startProxy(["--toxic", "timeout:upstream:timeout=300"]);
      const client = await TestClient.connect(setup.proxy.port);
      const started = performance.now();
      client.write("anyone?");
      expect(await client.endsWithin(2000)).toBe(true);
      expect(performance.now() - started).toBeGreaterThanOrEqual(250);
      expect(client.receivedLength).toBe(0);
      expect(setup.upstream.heads[0]?.length ?? 0).toBe(0); // the bytes never reached the upstream
    });

    test(`reset_peer resets the connection ${lab ? "" : "at the first data, then "}after its timeout`, async () => {
      await using setup = await startProxy(["--toxic", "reset_peer:downstream:timeout=150"]);
      const client = await TestClient.connect(setup.proxy.port);
      const started = performance.now();
      if (lab)
        await roundTrip(client); // works until then
      else client.write("ping"); // the echo is the first data downstream: dropped, and the timer starts
      expect(await client.endsWithin(2000)).toBe(true);
      expect(performance.now() - started).toBeGreaterThanOrEqual(140);
      expect((client.closeError as NodeJS.ErrnoException | undefined)?.code).toBe("ECONNRESET");
    });

    test("toxicity: the share of connections a toxic applies to", async () => {
      await using never = await startProxy(["--toxic", "latency:downstream:latency=2000,toxicity=0"]);
      const fast = await TestClient.connect(never.proxy.port);
      expect(await roundTrip(fast)).toBeLessThan(1500);
      fast.close();

      await using half = await startProxy(["--toxic", "latency:downstream:latency=1000,toxicity=0.5"]);
      const times = await Promise.all(
        Array.from({ length: 20 }, async () => {
          const client = await TestClient.connect(half.proxy.port);
          try {
            return await roundTrip(client);
          } finally {
            client.close();
          }
        }),
      );
      const slowed = times.filter((ms) => ms >= 999).length;
      expect(slowed).toBeGreaterThan(0); // all 20 the same way: 1 chance in 500,000
      expect(slowed).toBeLessThan(20);
    });

    test("without toxics 64 MiB still pass intact (the direct path)", async () => {
      await using setup = await startProxy([]);
      const data = randomBytes(64 * MiB);
      const result = await echoTransfer(setup.proxy.port, data, { halfClose: true });
      expect(result).toMatchObject({ intact: true, ended: true });
      console.log(`007: 64 MiB + FIN echoed through the proxy in ${result.seconds.toFixed(2)} s`);
    });

    test("a slow toxic slows the sender instead of filling the proxy's memory", async () => {
      await using setup = await startProxy(["--toxic", "bandwidth:upstream:rate=4096"]);
      const client = await TestClient.connect(setup.proxy.port);
      try {
        client.write(randomBytes(32 * MiB)); // 8 s at 4 MiB/s: far more than the kernel buffers and the lane hold
        await expect(client.flushed(500)).rejects.toThrow(/timed out/); // the sender is held back...
        const status = await Bun.file(`/proc/${setup.proxy.pid}/status`).text();
        expect(Number(status.match(/VmRSS:\s+(\d+)/)![1]) * 1024).toBeLessThan(80 * MiB); // ...not the proxy's memory
      } finally {
        client.reset();
      }
    });
  });

  describe(`${label} toxics only do what they say`, () => {
    // Each toxic holds the upstream's reply; the client has already half-closed. The reply must still arrive, then EOF.
    test.each([
      ["latency:downstream:latency=300"],
      ["bandwidth:downstream:rate=1"],
      ["slicer:downstream:average_size=1,delay=20000"],
      ["latency:upstream:latency=300"],
      ["slicer:upstream:average_size=1,delay=20000"],
    ])("printf 'hello' | nc -N through %s prints HELLO", async (toxic) => {
      await using setup = await startProxy(["--toxic", toxic]);
      const client = await TestClient.connect(setup.proxy.port);
      client.write("hello");
      await client.shutdown();
      expect(decode(await client.readToEnd(5000))).toBe("HELLO");
      await setup.proxy.waitForLog(/bytes_up=5 bytes_down=5 closed_by=client reason="fin"/);
    });

    test("an upstream that answers and closes at once: the delayed answer arrives before the close", async () => {
      const banner = Bun.listen({
        hostname: "127.0.0.1",
        port: 0,
        socket: { open: (socket) => void socket.end("bye\n"), data() {} },
      });
      try {
        await using proxy = await startStage(STAGE, [
          ...extra,
          "--port",
          "0",
          "--upstream",
          `127.0.0.1:${banner.port}`,
          "--toxic",
          "latency:downstream:latency=200",
        ]);
        const client = await TestClient.connect(proxy.port);
        expect(decode(await client.readToEnd(5000))).toBe("bye\n");
        client.close();
        await proxy.waitForLog(/bytes_up=0 bytes_down=4 closed_by=upstream reason="fin"/);
      } finally {
        banner.stop(true);
      }
    });

    // A toxic that cuts the stream into many pieces must not hold them as many objects: the lane is bounded in bytes
    // (1 MiB, then the source is paused), and its memory must be too, whatever the toxic does with the bytes.
    test.each([["slicer:upstream:average_size=1,delay=100"], [`bandwidth:upstream:rate=${lab ? "0.1" : "1"}`]])(
      "%s toward an upstream that does not read: the proxy's memory stays within the lane bound",
      async (toxic) => {
        using deaf = startFaultyEchoServer({ kind: "deaf" });
        await using proxy = await startStage(STAGE, [
          ...extra,
          "--port",
          "0",
          "--upstream",
          `127.0.0.1:${deaf.port}`,
          "--toxic",
          toxic,
          "--log-level",
          "debug",
        ]);
        const client = await TestClient.connect(proxy.port);
        try {
          await proxy.waitForLog(/upstream connected/);
          const before = memoryKiB(proxy.pid).rss;
          client.write(randomBytes(32 * MiB));
          // A measurement window, not a wait for an event: the RSS at its highest over 3 s of pushing.
          let grownMiB = 0;
          for (let sample = 0; sample < 12; sample++) {
            await Bun.sleep(250);
            grownMiB = Math.max(grownMiB, (memoryKiB(proxy.pid).rss - before) / 1024);
          }
          console.log(`${label} ${toxic}: RSS grew ${grownMiB.toFixed(1)} MiB with the upstream not reading`);
          expect(client.unsent).toBeGreaterThan(16 * MiB); // the sender is held back...
          expect(grownMiB).toBeLessThan(24); // ...and its memory: 1 MiB plus a read and Bun's own buffers, not pieces
        } finally {
          client.reset();
        }
      },
    );

    test.each([
      ["latency:downstream:latency=2147483648", /latency must be an? (number|integer) from -?\d+ to 2147483647/],
      ["latency:downstream:jitter=1e10", /--toxic jitter must be a number/],
      ["timeout:upstream:timeout=2147483648", /timeout must be an? (number|integer) from -?\d+ to 2147483647/],
      ["reset_peer:upstream:timeout=99999999999", /timeout must be an? (number|integer) from -?\d+ to 2147483647/],
      ["slicer:upstream:delay=2147483648", /delay must be an? (number|integer) from -?\d+ to 2147483647/],
    ])("--toxic %s: one line, exit 2", async (toxic, message) => {
      const { code, stderr } = await runToExit(STAGE, [...extra, "--toxic", toxic]);
      expect(code).toBe(2);
      expect(stderr).toMatch(message);
      expect(stderr.trim().split("\n")).toHaveLength(1);
    });

    test("delays that add up past 2^31 ms wait, rather than overflow the timer and fire at once", async () => {
      const max = "latency=2147483647";
      await using setup = await startProxy([
        ...["--toxic", `latency:downstream:${max},name=first`],
        ...["--toxic", `latency:downstream:${max},name=second`],
      ]);
      const client = await TestClient.connect(setup.proxy.port);
      try {
        client.write("wait for it");
        await expect(client.readAtLeast(1, 500)).rejects.toThrow(/timed out/);
        expect(setup.proxy.stderr.text).not.toMatch(/TimeoutOverflowWarning/);
      } finally {
        client.close();
      }
    });

    test("the log line counts bytes delivered: limit_data lets 1000 of 5000 through and says 1000", async () => {
      await using setup = await startProxy(["--toxic", "limit_data:downstream:bytes=1000"]);
      const client = await TestClient.connect(setup.proxy.port);
      client.write("x".repeat(5000));
      expect((await client.readToEnd(3000)).length).toBe(1000);
      await setup.proxy.waitForLog(/bytes_up=5000 bytes_down=1000 closed_by=proxy reason="toxic limit_data"/);
    });

    test("the log line counts bytes delivered: a stall that never lets go delivers nothing and says 0", async () => {
      await using setup = await startProxy(["--toxic", "timeout:upstream:timeout=200"]);
      const client = await TestClient.connect(setup.proxy.port);
      client.write("anyone?");
      expect(await client.endsWithin(3000)).toBe(true);
      await setup.proxy.waitForLog(/bytes_up=0 bytes_down=0 closed_by=proxy reason="toxic timeout_upstream"/);
    });
  });

  describe(`${label} --toxic`, () => {
    test.each([
      [["--toxic", "latency"], /--toxic must look like TYPE:STREAM/],
      [["--toxic", "latency:sideways"], /stream (must be upstream or downstream|was invalid)/],
      [
        ["--toxic", lab ? "bandwidth:upstream" : "gremlins:upstream"],
        lab ? /bandwidth needs rate/ : /invalid toxic type/,
      ],
      [["--toxic", "latency:upstream", "--toxic", "latency:upstream:latency=5"], /two toxics named latency_upstream/],
    ])("usage error %p", async (args, message) => {
      const { code, stderr } = await runToExit(STAGE, [...extra, ...args]);
      expect(code).toBe(2);
      expect(stderr).toMatch(message);
      expect(stderr.trim().split("\n")).toHaveLength(1);
    });
  });
}
