// What a hardened echo stage (006 and later) promises whatever its clients do, registered as tests by each such
// stage's own test file. Every one (006 on): no reply byte lost or reordered for slow or non-reading clients,
// memory bounded by --max-buffer, an exact idle timeout re-armed by traffic either way, a reset that disturbs no
// other client. Each later stage adds a feature and registers its checks through `features`: half-close completed
// (007 on); limits that refuse cleanly, also below the open-files limit, and 10,000 connections at once (008 on);
// a graceful shutdown that delivers every reply owed (009 on).
//
// The stage may be one process or a supervisor with workers: memory is summed over the process tree, and log
// counts are summed over every line that reports them.

import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { connectMany, decode, encode, TestClient, upperAscii } from "./net.ts";
import { descendants, memoryKiB, resetMemoryPeak, startStage, type Running } from "./process.ts";

const MiB = 1024 * 1024;

/**
 * A reply larger than the kernel can ever hold for a client that does not read: its receive buffer may grow to
 * tcp_rmem's maximum and the server's send buffer to tcp_wmem's (32 MiB and 4 MiB here), so with this much the
 * server still owes bytes whatever the machine's settings. (A fixed 4 MiB once fit whole, and nothing was owed.)
 */
function moreThanTheKernelHolds(): number {
  const max = (file: string): number => {
    try {
      return Number(readFileSync(file, "utf8").trim().split(/\s+/)[2]) || 0;
    } catch {
      return 16 * MiB;
    }
  };
  return max("/proc/sys/net/ipv4/tcp_rmem") + max("/proc/sys/net/ipv4/tcp_wmem") + 8 * MiB;
}

/** `size` pseudo-random bytes (every value 0-255 occurs), so the reply differs from the request and is checkable. */
export function payload(size: number, seed = 1): Uint8Array {
  const bytes = new Uint8Array(size);
  let x = seed;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bytes[i] = x >>> 24;
  }
  return bytes;
}

export const sameBytes = (a: Uint8Array, b: Uint8Array): boolean =>
  Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);

/** Sum of capture group 1 (a number) over every match of `pattern` in `text`. */
export function sumOf(text: string, pattern: RegExp): number {
  let sum = 0;
  for (const match of text.matchAll(new RegExp(pattern.source, "g"))) sum += Number(match[1]);
  return sum;
}

/**
 * Waits until the server's stderr, from character `from` on, has `pattern` (not global) `count` times (one occurrence
 * after another: no backtracking).
 */
export async function waitForCount(
  server: Running,
  pattern: RegExp,
  count: number,
  timeoutMs = 15_000,
  from = 0,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (let seen = 0; seen < count; seen++) {
    const left = Math.max(1, deadline - performance.now());
    const match = await server.waitForLog(pattern, left, from).catch((error: Error) => {
      throw new Error(`saw ${pattern} ${seen} of ${count} times: ${error.message.slice(0, 3000)}`);
    });
    from += match.index! + match[0].length;
  }
}

/** The closing line of a graceful shutdown: the stage's own (006), or the supervisor's sum over its workers. */
const SHUTDOWN_SUMMARY = new RegExp(
  "shutdown complete: (\\d+) client\\(s\\) drained, (\\d+) cut(?: across \\d+ worker\\(s\\))?; " +
    "since start \\d+ served, \\d+ refused, (\\d+) bytes received and (\\d+) sent back, " +
    "\\d+ dropped after the signal; bye",
);

/** What a stage has beyond the write queue. */
export interface HardenedFeatures {
  /** A client's FIN completes its reply before the server closes (allowHalfOpen). */
  halfClose: boolean;
  /** --max-clients and --max-per-ip refuse, and --max-clients is capped below the open-files limit. */
  limits: boolean;
  /** SIGINT/SIGTERM drain: replies owed delivered, FIN, lingering close, --drain-timeout, a second signal cuts. */
  drain: boolean;
}

export interface HardenedStage {
  file: string;
  /** Arguments for every test (`--port 0` is added). */
  args?: string[];
  /** Extra arguments where a test counts on one process seeing every client (limits). */
  exactLimitArgs?: string[];
  /** Default: every feature. */
  features?: Partial<HardenedFeatures>;
}

/** Registers a test (or a group), or nothing at all where the stage lacks the feature (not even a skip). */
type Register = (name: string, body: () => Promise<void> | void) => void;
const notRegistered: Register = () => {};

export function hardenedEchoTests({ file, args = [], exactLimitArgs = [], features = {} }: HardenedStage): void {
  const has: HardenedFeatures = { halfClose: true, limits: true, drain: true, ...features };
  const halfCloseTest: Register = has.halfClose ? test : notRegistered;
  const limitsTest: Register = has.limits ? test : notRegistered;
  const drainDescribe: Register = has.drain ? describe : notRegistered;
  const start = (extra: string[] = [], options = {}): Promise<Running> =>
    startStage(file, ["--port", "0", ...args, ...extra], options);

  test("64 MiB come back byte-exact to a client that reads slowly", async () => {
    await using server = await start();
    const request = payload(64 * MiB, 7);
    const client = await TestClient.connect(server.port);
    client.write(request);
    // Read in 4 MiB steps with a pause between them: the server's queue fills, it pauses us, and catches up.
    while (client.receivedLength < request.length) {
      await client.readAtLeast(Math.min(request.length, client.receivedLength + 4 * MiB), 20_000);
      client.pauseReading();
      await Bun.sleep(20);
      client.resumeReading();
    }
    expect(sameBytes(client.received, upperAscii(request))).toBe(true);
    client.close();
  });

  test("a client that never reads keeps the server's memory within --max-buffer (RSS)", async () => {
    await using server = await start(["--max-buffer", "1m", "--log-level", "debug"]);
    // Warm up first, so that the baseline includes grown heaps; 16 clients, so that every worker gets some.
    const warmUp = await connectMany(server.port, 16);
    await Promise.all(
      warmUp.map(async (client) => {
        client.write(payload(1 * MiB, 2));
        await client.readAtLeast(1 * MiB);
        client.close();
      }),
    );
    const pids = [server.pid, ...descendants(server.pid)]; // a supervisor and its workers, or one process
    resetMemoryPeak(pids);
    const before = memoryKiB(pids);
    const client = await TestClient.connect(server.port);
    client.pauseReading();
    client.write(payload(64 * MiB, 3));
    await server.waitForLog(/over --max-buffer: pausing its reading/);
    await Bun.sleep(300); // give a server that kept reading the time to show it
    const after = memoryKiB(pids);
    // Bound: 1 MiB queue + one read (<= 512 KiB) + garbage not yet collected. With an unbounded queue (try
    // --max-buffer 64m) the peak grows by ~75 MiB: the server reads all it can and the kernel holds only ~4 MiB.
    expect(after.peak - before.rss).toBeLessThan(8 * 1024);
    expect(client.unsent).toBeGreaterThan(48 * MiB); // the server stopped taking the client's bytes
    client.reset();
  });

  halfCloseTest(
    "half-close: a client that FINs while its reply is queued gets all of it, then the server closes",
    async () => {
      await using server = await start(["--max-buffer", "128m"]);
      const request = payload(moreThanTheKernelHolds(), 5);
      const client = await TestClient.connect(server.port);
      client.pauseReading();
      client.write(request);
      await client.shutdown();
      const [, queued] = await server.waitForLog(/client closed its side \(FIN\): flushing (\d+) queued bytes first/);
      expect(Number(queued)).toBeGreaterThan(0);
      client.resumeReading();
      const reply = await client.readToEnd(20_000);
      expect(sameBytes(reply, upperAscii(request))).toBe(true);
      await server.waitForLog(new RegExp(`done: received ${request.length} bytes, sent ${request.length}\\n`));
    },
  );

  test("idle timeout is exact, and traffic re-arms it", async () => {
    await using server = await start(["--idle-timeout", "0.6"]);
    const client = await TestClient.connect(server.port);
    for (let i = 0; i < 3; i++) {
      client.write("ping");
      await client.readAtLeast(4 * (i + 1));
      await Bun.sleep(300); // 3 x 300 ms > 600 ms: only the re-arming keeps the connection open
    }
    expect(client.peerEnded).toBe(false);
    const lastTraffic = performance.now();
    await client.readToEnd(3000);
    const idle = performance.now() - lastTraffic;
    // A timer fires on time (Bun's socket.timeout() is checked on a 4 s tick: it could fire up to 4 s late).
    expect(idle).toBeGreaterThan(250); // 600 ms minus the 300 ms already slept
    expect(idle).toBeLessThan(900);
    await server.waitForLog(/idle for 0\.6 s: closing/);
  });

  test("a slow reader is not idle: each flush of its reply re-arms the idle timer", async () => {
    // The server reads all 32 MiB at once (under --max-buffer 64m) and then only writes: the client's reading,
    // spread over about 2 s, is the only traffic, and the idle timeout is 1 s.
    await using server = await start(["--idle-timeout", "1", "--max-buffer", "64m"]);
    const request = payload(32 * MiB, 11);
    const client = await TestClient.connect(server.port);
    client.pauseReading();
    client.write(request);
    await client.flushed();
    while (client.receivedLength < request.length) {
      client.resumeReading();
      await client.readAtLeast(Math.min(request.length, client.receivedLength + 2 * MiB), 20_000);
      client.pauseReading();
      await Bun.sleep(150); // a slow reader
    }
    expect(sameBytes(client.received, upperAscii(request))).toBe(true);
    client.close();
  });

  limitsTest(
    "--max-clients: a client over the limit is refused at once with a log line; a freed slot is used",
    async () => {
      await using server = await start(["--max-clients", "2", ...exactLimitArgs]);
      const [first, second] = [await TestClient.connect(server.port), await TestClient.connect(server.port)];
      for (const client of [first!, second!]) {
        client.write("in");
        expect(decode(await client.readAtLeast(2))).toBe("IN");
      }
      const third = await TestClient.connect(server.port);
      expect((await third.readToEnd()).length).toBe(0);
      await server.waitForLog(/WARN .* refused 127\.0\.0\.1: 2 clients connected, the limit \(--max-clients 2\)/);
      first!.close();
      await server.waitForLog(/conn 1 .* done/);
      const fourth = await TestClient.connect(server.port);
      fourth.write("back");
      expect(decode(await fourth.readAtLeast(4))).toBe("BACK");
      second!.write("still");
      expect(decode(await second!.readAtLeast(7))).toBe("INSTILL");
    },
  );

  limitsTest("--max-per-ip: the third connection from one address is refused, naming that limit", async () => {
    await using server = await start(["--max-per-ip", "2", "--max-clients", "10", ...exactLimitArgs]);
    const clients = [await TestClient.connect(server.port), await TestClient.connect(server.port)];
    const third = await TestClient.connect(server.port);
    expect((await third.readToEnd()).length).toBe(0);
    await server.waitForLog(/refused 127\.0\.0\.1: 2 connections from this address, the limit \(--max-per-ip 2\)/);
    for (const client of clients) {
      client.write("ok");
      expect(decode(await client.readAtLeast(2))).toBe("OK");
    }
  });

  limitsTest("stays below the open-files limit: says so, refuses cleanly instead of hitting EMFILE", async () => {
    await using server = await start(exactLimitArgs, { prefix: ["prlimit", "--nofile=64:64"] });
    const [, allowedText] = await server.waitForLog(
      /--max-clients \d+ does not fit under the open-files limit of 64: serving at most (\d+) clients at once/,
    );
    const allowed = Number(allowedText);
    expect(allowed).toBeGreaterThan(0);
    expect(allowed).toBeLessThan(64);
    const clients = await connectMany(server.port, allowed + 5);
    const replies = await Promise.all(
      clients.map(async (client) => {
        client.write("x");
        await Promise.race([client.readAtLeast(1, 5000).catch(() => undefined), client.readToEnd(5000)]);
        return decode(client.received);
      }),
    );
    expect(replies.filter((reply) => reply === "X").length).toBe(allowed);
    expect(replies.filter((reply) => reply === "").length).toBe(5);
    await waitForCount(server, /refused 127\.0\.0\.1: \d+ clients connected/, 5);
    // Still accepting and serving after the refusals: it never ran out of descriptors.
    clients[0]!.close();
    await server.waitForLog(/conn 1 .* done/);
    const late = await TestClient.connect(server.port);
    late.write("late");
    expect(decode(await late.readAtLeast(4))).toBe("LATE");
  });

  limitsTest("10,000 concurrent connections are served (ramped up)", async () => {
    await using server = await start(["--log-level", "warn"]);
    const clients = await connectMany(server.port, 10_000, { greeting: "hi " });
    try {
      await Promise.all(
        clients.map(async (client, i) => {
          client.write(`client ${i}`);
          expect(decode(await client.readAtLeast(`hi client ${i}`.length, 20_000))).toBe(`HI CLIENT ${i}`);
        }),
      );
      expect(clients.every((client) => !client.peerEnded)).toBe(true); // all 10,000 open at the same time
    } finally {
      // RST, not FIN: 10,000 sockets left in TIME_WAIT would slow every later test's connects on this machine.
      for (const client of clients) client.reset();
    }
  });

  test("a client that resets mid-reply does not disturb another client", async () => {
    await using server = await start();
    const rude = await TestClient.connect(server.port);
    rude.pauseReading();
    rude.write(payload(4 * MiB));
    const polite = await TestClient.connect(server.port);
    polite.write(encode("still here"));
    rude.reset();
    expect(decode(await polite.readAtLeast(10))).toBe("STILL HERE");
  });

  drainDescribe("graceful shutdown", () => {
    test("SIGTERM with 1,000 active clients: every reply owed delivered, exit 0 well before the deadline", async () => {
      await using server = await start(["--max-buffer", "128m", "--drain-timeout", "20"]);
      const clients = await connectMany(server.port, 1000, { greeting: "hello\n" });
      // Two clients owe the server a big reply that sits in its queue (they do not read); one of them has FINned.
      const heavy = payload(moreThanTheKernelHolds(), 9);
      const [stalled, finned] = [await TestClient.connect(server.port), await TestClient.connect(server.port)];
      for (const client of [stalled, finned]) {
        client.pauseReading();
        client.write(heavy);
      }
      await finned.shutdown();
      await server.waitForLog(/client closed its side \(FIN\): flushing \d+ queued bytes first/);
      await stalled.flushed();
      // And every light client sends one more line, racing the signal: whatever the server read, it must answer.
      const sent = clients.map((_, i) => `hello\nbye ${i}\n`);
      clients.forEach((client, i) => client.write(`bye ${i}\n`));

      const signalled = performance.now();
      const fromLog = server.stderr.text.length;
      server.proc.kill("SIGTERM");
      const everyone = [...clients, stalled, finned];
      for (const client of [stalled, finned]) client.resumeReading();
      const received = await Promise.all(
        everyone.map(async (client) => {
          const reply = await client.readToEnd(20_000);
          client.close();
          return reply;
        }),
      );
      expect(await server.waitExit(20_000)).toBe(0);
      expect(performance.now() - signalled).toBeLessThan(10_000);
      const log = server.stderr.text.slice(fromLog);
      expect(sumOf(log, /no new clients; draining (\d+) client\(s\)/)).toBe(1002);
      expect(sumOf(log, /draining \d+ client\(s\) owed (\d+) queued reply bytes/)).toBeGreaterThan(0);

      clients.forEach((_, i) => {
        const reply = decode(received[i]!);
        expect(sent[i]!.toUpperCase().startsWith(reply)).toBe(true); // a prefix: nothing reordered or invented
        expect(reply.length).toBeGreaterThanOrEqual("hello\n".length);
      });
      expect(received[1001]!.length).toBe(heavy.length); // the FINned one was fully read before the signal
      for (const reply of received.slice(1000))
        expect(sameBytes(reply, upperAscii(heavy).subarray(0, reply.length))).toBe(true);
      // Every byte the server read before the signal went back, and the clients got exactly what it sent.
      const [, drained, cut, bytesIn, bytesOut] = log.match(SHUTDOWN_SUMMARY) ?? [];
      expect([Number(drained), Number(cut)]).toEqual([1002, 0]);
      expect(Number(bytesOut)).toBe(Number(bytesIn));
      expect(received.reduce((sum, reply) => sum + reply.length, 0)).toBe(Number(bytesOut));
    });

    test("a client that reads but never closes is closed 2 s after the server's FIN (lingering close)", async () => {
      await using server = await start(["--drain-timeout", "20"]);
      const client = await TestClient.connect(server.port);
      client.write("last words");
      await client.readAtLeast(10);
      const signalled = performance.now();
      server.proc.kill("SIGTERM");
      expect(decode(await client.readToEnd())).toBe("LAST WORDS"); // our FIN, and then we do not close
      expect(await server.waitExit(10_000)).toBe(0);
      const took = performance.now() - signalled;
      expect(took).toBeGreaterThan(1500);
      expect(took).toBeLessThan(5000);
      await server.waitForLog(/shutdown complete: 1 client\(s\) drained, 0 cut/);
    });

    test("a client that never reads is cut at --drain-timeout; the server still exits 0", async () => {
      await using server = await start(["--max-buffer", "64m", "--drain-timeout", "0.5"]);
      const client = await TestClient.connect(server.port);
      client.pauseReading();
      client.write(payload(8 * MiB));
      await client.flushed();
      const signalled = performance.now();
      server.proc.kill("SIGTERM");
      expect(await server.waitExit(5000)).toBe(0);
      expect(performance.now() - signalled).toBeGreaterThanOrEqual(450);
      await server.waitForLog(/drain timeout \(0\.5 s\): cutting 1 client\(s\)/);
      await server.waitForLog(/shutdown complete: 0 client\(s\) drained, 1 cut/);
    });

    test("a second signal cuts at once", async () => {
      await using server = await start(["--max-buffer", "64m", "--drain-timeout", "60"]);
      const client = await TestClient.connect(server.port);
      client.pauseReading();
      client.write(payload(8 * MiB));
      await client.flushed();
      server.proc.kill("SIGTERM");
      await server.waitForLog(/draining 1 client/);
      server.proc.kill("SIGINT");
      expect(await server.waitExit(3000)).toBe(0);
      await server.waitForLog(/SIGINT received again: cutting 1 client\(s\) now/);
    });
  });
}
