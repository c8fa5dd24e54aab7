import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { connectMany, decode, encode, TestClient, upperAscii } from "../test/support/net.ts";
import { memoryKiB, resetMemoryPeak, runToExit, startStage, type Running } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/006-correct-under-any-client.ts";
const PREVIOUS = "tcp_echo_server/005-bounded-concurrency.ts";
const MiB = 1024 * 1024;

/** `size` bytes of lowercase letters and other bytes, so the reply differs from the request and is checkable. */
function payload(size: number, seed = 1): Uint8Array {
  const bytes = new Uint8Array(size);
  let x = seed;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bytes[i] = x >>> 24;
  }
  return bytes;
}

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);

/** Waits until the server logged `pattern` `count` times (counting from the start of its stderr). */
async function waitForCount(server: Running, pattern: RegExp, count: number, timeoutMs = 15_000): Promise<void> {
  const global = new RegExp(pattern.source, "g");
  const every = new RegExp(`(?:[\\s\\S]*?${pattern.source}){${count}}`);
  await server.waitForLog(every, timeoutMs).catch((error: Error) => {
    const seen = server.stderr.text.match(global)?.length ?? 0;
    throw new Error(`saw ${pattern} ${seen} of ${count} times: ${error.message.slice(0, 2000)}`);
  });
}

describe("006 correct under any client", () => {
  test("--port 0 prints one listening line; the log states the limits in force", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--max-per-ip", "3", "--max-buffer", "1m"]);
    expect(server.stdout.text).toBe(`listening on 127.0.0.1:${server.port}\n`);
    await server.waitForLog(/listening on 127\.0\.0\.1:\d+ \(at most 10000 clients at once, 3 per address, 1 MiB reply queue per client, idle timeout 60 s, drain timeout 8 s\)/);
  });

  test("-h prints usage listing every option; bad values are one-line usage errors (exit 2)", async () => {
    const help = await runToExit(STAGE, ["-h"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith(`Usage: bun ${STAGE} [options]`);
    for (const option of ["--max-clients", "--max-per-ip", "--max-buffer", "--idle-timeout", "--drain-timeout"]) {
      expect(help.stdout).toContain(option);
    }
    const errors: Array<[string[], string]> = [
      [["--max-buffer", "lots"], 'error: --max-buffer must be a positive number of bytes (k, m suffixes allowed), got "lots" (see --help)\n'],
      [["--max-per-ip", "some"], 'error: --max-per-ip must be an integer (0 = no limit), got "some" (see --help)\n'],
      [["--drain-timeout", "soon"], 'error: --drain-timeout must be a number of seconds, got "soon" (see --help)\n'],
    ];
    for (const [args, message] of errors) {
      expect(await runToExit(STAGE, args)).toEqual({ code: 2, stdout: "", stderr: message });
    }
  });

  echoContractTests({ file: STAGE, args: ["--port", "0"] });

  // The lesson: a client that sends a lot before reading. Bun's write() takes what fits in the kernel and drops
  // the rest unless the server keeps it. 005 does not: its reply comes back short. 006 queues it and pauses the
  // client's reading while the queue is full, so every byte comes back, in order.
  describe("partial writes: 8 MiB sent by a client that reads only afterwards", () => {
    const request = payload(8 * MiB);

    test("005 (previous stage) loses reply bytes", async () => {
      await using server = await startStage(PREVIOUS, ["--port", "0"]);
      const client = await TestClient.connect(server.port);
      client.pauseReading();
      client.write(request);
      await client.shutdown();
      await server.waitForLog(/client closed its side \(FIN\)/); // 005 read it all, dropping what did not fit
      client.resumeReading();
      const reply = await client.readToEnd();
      expect(reply.length).toBeLessThan(request.length);
    });

    test("006 returns every byte, in order", async () => {
      await using server = await startStage(STAGE, ["--port", "0", "--log-level", "debug"]);
      const client = await TestClient.connect(server.port);
      client.pauseReading();
      client.write(request);
      await server.waitForLog(/over --max-buffer: pausing its reading/);
      client.resumeReading();
      await client.shutdown();
      const reply = await client.readToEnd(20_000);
      expect(reply.length).toBe(request.length);
      expect(sameBytes(reply, upperAscii(request))).toBe(true);
    });
  });

  test("64 MiB come back byte-exact to a client that reads slowly", async () => {
    await using server = await startStage(STAGE, ["--port", "0"]);
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
    await using server = await startStage(STAGE, ["--port", "0", "--max-buffer", "1m", "--log-level", "debug"]);
    const warmUp = await TestClient.connect(server.port); // so that the baseline includes a warmed-up heap
    warmUp.write(payload(4 * MiB, 2));
    await warmUp.readAtLeast(4 * MiB);
    warmUp.close();
    resetMemoryPeak(server.pid);
    const before = memoryKiB(server.pid);
    const client = await TestClient.connect(server.port);
    client.pauseReading();
    client.write(payload(64 * MiB, 3));
    await server.waitForLog(/over --max-buffer: pausing its reading/);
    await Bun.sleep(300); // give a server that kept reading the time to show it
    const after = memoryKiB(server.pid);
    // Bound: 1 MiB queue + one read (<= 512 KiB) + garbage not yet collected. With an unbounded queue (try
    // --max-buffer 64m) the peak grows by ~75 MiB: the server reads all it can and the kernel holds only ~4 MiB.
    expect(after.peak - before.rss).toBeLessThan(8 * 1024);
    expect(client.unsent).toBeGreaterThan(48 * MiB); // the server stopped taking the client's bytes
    client.reset();
  });

  test("half-close: a client that FINs while its reply is still queued gets all of it, then the server closes", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--max-buffer", "64m"]);
    const request = payload(8 * MiB, 5);
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
  });

  test("idle timeout is exact, and traffic re-arms it", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--idle-timeout", "0.6"]);
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
    // 005's built-in socket timeout fires on a ~4 s sweep; the timer fires on time.
    expect(idle).toBeGreaterThan(250); // 600 ms minus the 300 ms already slept
    expect(idle).toBeLessThan(900);
    await server.waitForLog(/idle for 0\.6 s: closing/);
  });

  test("--max-clients: a client over the limit is refused at once with a log line; a freed slot is reused", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--max-clients", "2"]);
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
  });

  test("--max-per-ip: the third connection from one address is refused, naming that limit", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--max-per-ip", "2", "--max-clients", "10"]);
    const clients = [await TestClient.connect(server.port), await TestClient.connect(server.port)];
    const third = await TestClient.connect(server.port);
    expect((await third.readToEnd()).length).toBe(0);
    await server.waitForLog(/refused 127\.0\.0\.1: 2 connections from this address, the limit \(--max-per-ip 2\)/);
    for (const client of clients) {
      client.write("ok");
      expect(decode(await client.readAtLeast(2))).toBe("OK");
    }
  });

  test("stays below the open-files limit: says so, refuses cleanly instead of hitting EMFILE", async () => {
    await using server = await startStage(STAGE, ["--port", "0"], { prefix: ["prlimit", "--nofile=64:64"] });
    const [, allowedText] = await server.waitForLog(/--max-clients 10000 does not fit under the open-files limit of 64: serving at most (\d+) clients at once/);
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

  test("10,000 concurrent connections are served (ramped up)", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--log-level", "warn"]);
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

  describe("graceful shutdown", () => {
    test("SIGTERM with 1,000 active clients: every reply owed is delivered, exit 0 well before the deadline", async () => {
      await using server = await startStage(STAGE, ["--port", "0", "--max-buffer", "64m", "--drain-timeout", "20"]);
      const clients = await connectMany(server.port, 1000, { greeting: "hello\n" });
      // Two clients owe the server a big reply that sits in its queue (they do not read); one of them has FINned.
      const heavy = payload(4 * MiB, 9);
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
      server.proc.kill("SIGTERM");
      const [, owed] = await server.waitForLog(/SIGTERM received: no new clients; draining 1002 client\(s\) owed (\d+) queued reply bytes/);
      expect(Number(owed)).toBeGreaterThan(0);
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

      clients.forEach((_, i) => {
        const reply = decode(received[i]!);
        expect(sent[i]!.toUpperCase().startsWith(reply)).toBe(true); // a prefix: nothing reordered or invented
        expect(reply.length).toBeGreaterThanOrEqual("hello\n".length);
      });
      expect(received[1001]!.length).toBe(heavy.length); // the FINned one was fully read before the signal
      for (const reply of received.slice(1000)) expect(sameBytes(reply, upperAscii(heavy).subarray(0, reply.length))).toBe(true);
      // Every byte the server read before the signal went back, and the clients got exactly what it sent.
      const [, drained, cut, bytesIn, bytesOut] = (await server.waitForLog(
        /shutdown complete: (\d+) client\(s\) drained, (\d+) cut; since start \d+ served, \d+ refused, (\d+) bytes received and (\d+) sent back/,
      ))!;
      expect([Number(drained), Number(cut)]).toEqual([1002, 0]);
      expect(Number(bytesOut)).toBe(Number(bytesIn));
      expect(received.reduce((sum, reply) => sum + reply.length, 0)).toBe(Number(bytesOut));
    });

    test("a client that never reads is cut at --drain-timeout; the server still exits 0", async () => {
      await using server = await startStage(STAGE, ["--port", "0", "--max-buffer", "64m", "--drain-timeout", "0.5"]);
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
      await using server = await startStage(STAGE, ["--port", "0", "--max-buffer", "64m", "--drain-timeout", "60"]);
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

  test("a client that resets mid-reply does not disturb another client", async () => {
    await using server = await startStage(STAGE, ["--port", "0"]);
    const rude = await TestClient.connect(server.port);
    rude.pauseReading();
    rude.write(payload(4 * MiB));
    const polite = await TestClient.connect(server.port);
    polite.write(encode("still here"));
    rude.reset();
    expect(decode(await polite.readAtLeast(10))).toBe("STILL HERE");
  });
});
