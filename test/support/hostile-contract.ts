// What no client can do to a stage, registered as tests by each stage's own test file (one line, like
// `echoContractTests`): port scanners that reset before the accept completes, clients that leave without a word,
// reset in the middle of a big reply, half-close while their reply is still on its way, send one byte at a time,
// never read, or simply stay connected by the thousand; and, in front of `--accept-proxy`, PROXY headers that are
// malformed or never finish. After each scenario the stage must still be the same process (tree: no worker died
// and was replaced), serve a normal client byte-exact, and be back to the open file descriptors it had before.
//
// Then a bug rather than a client: an exception thrown in one connection's handler (injected by handler-fault.ts)
// must cost that connection only.
//
// One process serves every scenario of a stage (they are independent, and a start costs more than a scenario), but
// a scenario during which it died fails with the stage's own last words, and after any failed scenario the next
// one starts a new process, so that what one scenario broke or leaked is not blamed on the next.
//
// Stages that serve one client and exit (echo 001-003) register what they can survive: whatever the first client
// does, they exit 0 without a stack trace. Naive stages register the behaviours they document as failures
// (`halfClose: "loses"`, `handlerErrors: "fatal"`) as what they must show.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sameBytes, waitForCount } from "./echo-hardened.ts";
import {
  allByteValues,
  connectMany,
  decode,
  type EchoUpstream,
  encode,
  peerStopsTaking,
  randomBytes,
  resetStorm,
  startEchoUpstream,
  TestClient,
  upperAscii,
} from "./net.ts";
import {
  descendants,
  memoryKiB,
  openFds,
  resetMemoryPeak,
  type Running,
  type RunOptions,
  startStage,
  TempTree,
} from "./process.ts";
import { existsSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";

const MiB = 1024 * 1024;

export interface HostileStage {
  file: string;
  kind: "echo" | "proxy";
  /** The stage's arguments (`--port 0` and any other); a proxy also gets `--upstream` to an echo upstream. */
  args?: string[];
  options?: RunOptions;
  /**
   * What a client that sends 16 MiB without reading, then half-closes (FIN), gets: its whole reply and then the
   * server's FIN ("delivers"); or a reply cut short (64 MiB then: more than the kernel holds), for a stage that
   * documents it does not finish a half-close, or drops what a partial write did not take: the test shows that.
   * "prefix": a stage that loses only what its queue still holds at the FIN (echo 006: it pauses reading at
   * --max-buffer, so the FIN often finds the queue flushed): whatever arrives is an exact prefix of the reply.
   */
  halfClose?: "delivers" | "loses" | "prefix";
  /** The stage has `--accept-proxy`: the PROXY header scenarios run on a second process started with it. */
  acceptProxy?: boolean;
  /** The flag that bounds the wait for a PROXY header (the proxies': --connect-timeout; echo 015: --idle-timeout). */
  headerTimeoutFlag?: string;
  /** Echo 001-003 serve one client, then exit: only what such a stage can survive is registered. */
  servesOneClient?: boolean;
  /** Proxy 001 drops what a client sends before its upstream connection is open: clients say hello first. */
  dropsEarlyBytes?: boolean;
  /**
   * What an exception thrown in one of the stage's socket handlers (a bug) does: closes that connection only,
   * with a log line ("contained", the default), or takes the whole process down ("fatal": proxy 001, which
   * documents it).
   */
  handlerErrors?: "contained" | "fatal";
}

/** Room a never-reading client may cost, on top of the server's RSS before it came (queues, one read, garbage). */
const MEMORY_BOUND_KIB = 32 * 1024;
/** How long a stage may take to close what it no longer needs after a scenario (a loaded machine is slow). */
const SETTLE_MS = 15_000;
/** Per test: a scenario takes well under a second or two on a quiet machine; this is for a loaded one. */
const SCENARIO_TIMEOUT_MS = 60_000;

/** A header as HAProxy's `send-proxy` would send it (documentation addresses, RFC 5737). */
const GOOD_HEADER = "PROXY TCP4 192.0.2.1 192.0.2.2 40000 6000\r\n";
const V2_SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
/** What an `--accept-proxy` stage must refuse at once, before any upstream connection is made. */
const BAD_HEADERS: Array<[what: string, bytes: Uint8Array]> = [
  ["no header at all (an HTTP request)", encode("GET / HTTP/1.0\r\n\r\n")],
  ["binary noise", new Uint8Array([0x16, 0x03, 0x01, 0x00, 0xff, 0x01, 0x00, 0x00, 0x00])],
  ["a v1 line with too few fields", encode("PROXY TCP4 192.0.2.1\r\n")],
  ["a v1 address out of range", encode("PROXY TCP4 192.0.2.999 192.0.2.2 40000 6000\r\n")],
  ["a v1 port out of range", encode("PROXY TCP4 192.0.2.1 192.0.2.2 99999 6000\r\n")],
  ["an IPv6 address in a TCP4 line", encode("PROXY TCP4 ::1 ::1 40000 6000\r\n")],
  ["a v1 line with no CRLF within 107 bytes", encode(`PROXY TCP4 ${"1".repeat(120)}`)],
  ["a v2 header of version 3", new Uint8Array([...V2_SIGNATURE, 0x31, 0x11, 0x00, 0x0c, ...new Array(12).fill(1)])],
  ["a v2 header with command 15", new Uint8Array([...V2_SIGNATURE, 0x2f, 0x11, 0x00, 0x0c, ...new Array(12).fill(1)])],
  ["a v2 header announcing 65535 bytes", new Uint8Array([...V2_SIGNATURE, 0x21, 0x11, 0xff, 0xff])],
  [
    "a v2 TCP4 header with a 4-byte address block",
    new Uint8Array([...V2_SIGNATURE, 0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]),
  ],
];

let noise: Uint8Array | undefined;
/** `size` bytes (at most 64 MiB) of one random MiB repeated: every byte value, made once per test file, fast. */
function bytes(size: number): Uint8Array {
  if (noise === undefined) {
    noise = new Uint8Array(64 * MiB);
    const block = randomBytes(MiB);
    for (let offset = 0; offset < noise.length; offset += MiB) noise.set(block, offset);
  }
  return noise.subarray(0, size);
}

/** The stage's process and its workers, if any, in a stable order. */
function processTree(pid: number): number[] {
  return [pid, ...descendants(pid)].sort((a, b) => a - b);
}

/** A stage's last words: enough of its output to see why it failed, not megabytes of connection logs. */
function tail(text: string, characters = 3000): string {
  return text.length <= characters ? text : `...${text.slice(-characters)}`;
}

/** What an uncaught exception leaves on stderr: Bun's source excerpt, `error: ...`, stack frames, version line. */
const STACK_TRACE = /^\s+at |^error: |^Bun v\d|^\d+ \| /m;

/** One running copy of the stage, started (again) on demand, with what it looked like when it was healthy. */
class Target {
  server: Running | undefined;
  private pids: number[] = [];
  private baselineFds = 0;
  private tainted = false;

  constructor(
    private readonly stage: HostileStage,
    private readonly extraArgs: string[],
    private readonly upstream: () => EchoUpstream | undefined,
    /** Bytes every client sends first (a PROXY header), if the stage expects any. */
    private readonly preamble: string | undefined,
    /** Environment for the stage on top of its own (the handler-fault preload). */
    private readonly env: Record<string, string> = {},
  ) {}

  get port(): number {
    return this.server!.port;
  }

  get pid(): number {
    return this.server!.pid;
  }

  /** Open descriptors of the healthy stage, idle (each scenario starts from there). */
  get baseline(): number {
    return this.baselineFds;
  }

  private get alive(): boolean {
    return this.server !== undefined && this.server.proc.exitCode === null && this.server.proc.signalCode === null;
  }

  /** The running stage; a new one if there is none yet or the last one died (in an earlier scenario). */
  async ensure(): Promise<Running> {
    if (this.alive && !this.tainted) return this.server!;
    this.tainted = false;
    await this.server?.[Symbol.asyncDispose]();
    const upstream = this.upstream();
    const args = [...(this.stage.args ?? []), ...(upstream ? ["--upstream", upstream.address] : []), ...this.extraArgs];
    const options = this.stage.options ?? {};
    this.server = await startStage(this.stage.file, args, { ...options, env: { ...options.env, ...this.env } });
    await this.probe();
    this.pids = processTree(this.pid);
    this.baselineFds = await this.steadyFds();
    return this.server;
  }

  /** The open-descriptor count once it stops changing (the probe's socket may still be closing). */
  private async steadyFds(): Promise<number> {
    let last = openFds(processTree(this.pid));
    for (let i = 0; i < 40; i++) {
      await Bun.sleep(50);
      const now = openFds(processTree(this.pid));
      if (now === last) return now;
      last = now;
    }
    return last;
  }

  /** A connected client, past whatever the stage needs first (a PROXY header; a hello for a naive proxy). */
  async session(): Promise<TestClient> {
    const client = await TestClient.connect(this.port);
    if (this.preamble !== undefined) client.write(this.preamble);
    if (this.stage.dropsEarlyBytes) {
      // Its first bytes may be dropped while the proxy connects upstream: say hello until one comes back.
      for (let tries = 0; client.receivedLength === 0; tries++) {
        if (tries === 50) throw new Error("the stage never answered hello");
        client.write("hello\n");
        await client.readAtLeast(6, 200).catch(() => {});
      }
    }
    return client;
  }

  /** A normal client: every byte value, exactly uppercased, on a fresh connection. */
  async probe(): Promise<void> {
    const client = await this.session();
    try {
      const start = client.receivedLength;
      const request = allByteValues();
      client.write(request);
      const reply = await client.readAtLeast(start + request.length, 10_000);
      expect(reply.subarray(start)).toEqual(upperAscii(request));
    } finally {
      client.close();
    }
  }

  /** Turns a scenario's failure into one that says the stage died during it, with its last words. */
  explain(error: unknown): Error {
    if (this.alive || this.server === undefined) return error as Error;
    const { exitCode, signalCode } = this.server.proc;
    return new Error(
      `${this.stage.file} died during this scenario (${signalCode ?? `exit code ${exitCode}`}); ` +
        `the scenario then saw: ${(error as Error).message}\nits output ends:\n${tail(this.server.output)}`,
    );
  }

  /**
   * After a scenario: the same process(es), back to the descriptors they had before it, and serving a normal
   * client exactly. (Descriptors first: a proxy still closing 2,000 connections may refuse a client at its limit.)
   */
  async healthy(): Promise<void> {
    const server = this.server!;
    if (!this.alive) throw this.explain(new Error("(nothing: it was gone at the end)"));
    const pids = processTree(server.pid);
    if (pids.join() !== this.pids.join()) {
      throw new Error(
        `processes ${this.pids.join(", ")} became ${pids.join(", ")}: a worker died and was replaced\n` +
          tail(server.output),
      );
    }
    await this.settled(pids);
    await this.probe();
    await this.settled(pids); // the probe's own connection too: the next scenario starts from the baseline
  }

  /** Resolves once `pids` hold no more descriptors than at the baseline; throws after SETTLE_MS. */
  private async settled(pids: number[]): Promise<void> {
    const deadline = performance.now() + SETTLE_MS;
    let open = openFds(pids);
    while (open > this.baselineFds) {
      if (performance.now() > deadline) {
        throw new Error(`${open} descriptors open ${SETTLE_MS} ms after the scenario, ${this.baselineFds} before it`);
      }
      await Bun.sleep(50); // /proc gives no event when a descriptor closes
      open = openFds(pids);
    }
  }

  /** A scenario failed: whatever it left behind (a leak, a stuck connection) must not fail the next ones too. */
  taint(): void {
    this.tainted = true;
  }

  async dispose(): Promise<void> {
    await this.server?.[Symbol.asyncDispose]();
    this.server = undefined;
  }
}

export function hostileContractTests(stage: HostileStage): void {
  if (stage.servesOneClient) return oneClientTests(stage);
  let upstream: EchoUpstream | undefined;
  const target = new Target(stage, [], () => upstream, undefined);

  /** Registers one scenario, run on the shared process and followed by the health check. */
  const scenario = (name: string, body: (server: Running) => Promise<void>, on = target): void => {
    test(
      name,
      async () => {
        const server = await on.ensure();
        try {
          await body(server);
          await on.healthy();
        } catch (error) {
          on.taint();
          throw on.explain(error);
        }
      },
      SCENARIO_TIMEOUT_MS,
    );
  };

  describe("hostile clients", () => {
    beforeAll(() => {
      if (stage.kind === "proxy") upstream = startEchoUpstream();
    });
    afterAll(async () => {
      await target.dispose();
      upstream?.stop();
    });

    scenario("300 clients connect and reset at once (RST), 100 of them after a partial PROXY header", async () => {
      const failed = await Promise.all([
        resetStorm(target.port, 200),
        resetStorm(target.port, 100, { first: "PROXY TCP4 192.0.2" }),
      ]);
      expect(failed).toEqual([0, 0]);
    });

    scenario("300 clients connect and close (FIN) without a byte: the stage closes every one", async () => {
      const clients = await connectMany(target.port, 300);
      for (const client of clients) client.close();
      await Promise.all(clients.map((client) => client.readToEnd(SETTLE_MS)));
    });

    // 64 MiB: enough to fill every kernel buffer on the way and back, so that the stage holds queued bytes both
    // ways (and, for a proxy, the upstream waits for the proxy to read) when the client goes.
    scenario("a client that floods, never reads, and resets while a large reply is in flight", async () => {
      const client = await target.session();
      client.pauseReading();
      client.write(bytes(64 * MiB));
      await peerStopsTaking(client);
      client.reset();
    });

    const halfClose = stage.halfClose ?? "delivers";
    scenario(
      {
        delivers: "half-close with a reply pending: the whole reply, then the stage's FIN",
        loses: "half-close with a reply pending: the reply is cut short (documented), the connection closed",
        prefix: "half-close with a reply pending: what arrives is an exact prefix of the reply, then the close",
      }[halfClose],
      async () => {
        const client = await target.session();
        const start = client.receivedLength;
        // Enough that the stage still owes part of the reply when the FIN comes; and where the loss is documented,
        // more than every kernel buffer on the way can hold (a client's receive buffer alone may grow to 32 MiB).
        const request = bytes(halfClose === "delivers" ? 16 * MiB : 64 * MiB);
        client.pauseReading();
        client.write(request);
        const finSent = client.shutdown(); // FIN as soon as the stage has taken every byte
        await peerStopsTaking(client);
        client.resumeReading();
        await finSent;
        const reply = (await client.readToEnd(30_000)).subarray(start);
        if (halfClose === "delivers") expect(sameBytes(reply, upperAscii(request))).toBe(true);
        else if (halfClose === "loses") expect(reply.length).toBeLessThan(request.length);
        else expect(sameBytes(reply, upperAscii(request.subarray(0, reply.length)))).toBe(true);
      },
    );

    scenario("a client that sends one byte at a time gets every byte back", async () => {
      const client = await target.session();
      try {
        const start = client.receivedLength;
        const message = encode("one byte at a time, each one answered\n");
        for (let i = 0; i < message.length; i++) {
          client.write(message.subarray(i, i + 1));
          await client.readAtLeast(start + i + 1, 5000);
        }
        expect(decode(client.received.subarray(start))).toBe(decode(upperAscii(message)));
      } finally {
        client.close();
      }
    });

    scenario(
      `a client that sends 64 MiB and never reads costs at most ${MEMORY_BOUND_KIB / 1024} MiB`,
      async (server) => {
        const pids = processTree(server.pid);
        resetMemoryPeak(pids);
        const before = memoryKiB(pids);
        const client = await target.session();
        try {
          client.pauseReading();
          client.write(bytes(64 * MiB));
          await peerStopsTaking(client);
          const after = memoryKiB(pids);
          if (process.env.HOSTILE_REPORT) console.error(`RSS ${stage.file}: +${after.peak - before.rss} KiB`);
          expect(after.peak - before.rss).toBeLessThan(MEMORY_BOUND_KIB);
        } finally {
          client.reset();
        }
      },
    );

    scenario(
      "2,000 idle connections, 100 at a time: each is accepted (held or refused), none hangs",
      async (server) => {
        const before = openFds(processTree(server.pid));
        const clients: TestClient[] = [];
        // Accepted, every one: the stage holds it (a descriptor each, two for a proxy) or has closed it (a limit);
        // a connection left in the kernel's backlog would be neither. Each batch of 100 waits for the last to be
        // accepted: the backlog (512) never overflows into SYN retransmits, whatever the stage logs per client.
        const accounted = (): number =>
          openFds(processTree(server.pid)) - before + clients.filter((client) => client.peerEnded).length;
        try {
          while (clients.length < 2000) {
            clients.push(...(await connectMany(target.port, 100)));
            const deadline = performance.now() + SETTLE_MS;
            while (accounted() < clients.length) {
              if (performance.now() > deadline) throw new Error(`${accounted()} of ${clients.length} accepted`);
              await Bun.sleep(20); // /proc gives no event for an accept
            }
          }
        } finally {
          for (const client of clients) client.reset(); // RST: 2,000 TIME_WAIT sockets would slow later tests
        }
      },
    );
  });

  if (stage.acceptProxy) acceptProxyTests(stage, scenario);
  handlerFaultTests(stage);
}

/** The preload that makes a stage's handlers throw on demand (see the file). */
const FAULT_PRELOAD = resolve(import.meta.dir, "handler-fault.ts");
/** A chunk containing this makes the stage's `data` handler throw. */
const FAULT_MARKER = "please-throw-in-data";

/**
 * A bug in a handler, injected by handler-fault.ts: in `data` for one connection, or in `open` before the stage has
 * set `socket.data` (after which Bun still calls `error` and `close` for that socket, which must cope).
 */
function handlerFaultTests(stage: HostileStage): void {
  const contained = (stage.handlerErrors ?? "contained") === "contained";
  describe("an exception in one connection's handler (a bug, injected by test/support/handler-fault.ts)", () => {
    let upstream: EchoUpstream | undefined;
    let tree: TempTree | undefined;
    beforeAll(() => {
      if (stage.kind === "proxy") upstream = startEchoUpstream();
      tree = new TempTree();
    });
    afterAll(() => {
      upstream?.stop();
      tree?.[Symbol.dispose]();
    });
    const faulty = (env: Record<string, string>): Target =>
      new Target(stage, [], () => upstream, undefined, { BUN_OPTIONS: `--preload ${FAULT_PRELOAD}`, ...env });

    test(
      contained
        ? "in data(): that connection is closed with a log line, the others carry on"
        : "in data(): the whole process dies, every client with it (documented)",
      async () => {
        const target = faulty({ HANDLER_FAULT_DATA: FAULT_MARKER });
        try {
          const server = await target.ensure();
          // The victim first: a stage that serves one client at a time (echo 004) serves it, the bystander waits.
          const victim = await target.session();
          const bystander = await target.session();
          const start = bystander.receivedLength;
          bystander.write("still ");
          victim.write(FAULT_MARKER);
          if (!contained) {
            expect(await server.waitExit(5000)).not.toBe(0);
            expect(await bystander.endsWithin(5000)).toBe(true);
            return;
          }
          expect(await victim.endsWithin(5000)).toBe(true);
          await server.waitForLog(/fault injected by the test in data\(\)/);
          bystander.write("here");
          expect(decode((await bystander.readAtLeast(start + 10, 5000)).subarray(start))).toBe("STILL HERE");
          bystander.close();
          await target.healthy();
        } catch (error) {
          throw target.explain(error);
        } finally {
          await target.dispose();
        }
      },
      SCENARIO_TIMEOUT_MS,
    );

    test(
      contained
        ? "in open(), before socket.data is set: that client is let go with a log line, the stage carries on"
        : "in open(): the whole process dies (documented)",
      async () => {
        const file = join(tree!.root, "open-fault");
        const target = faulty({ HANDLER_FAULT_OPEN: file });
        try {
          const server = await target.ensure();
          writeFileSync(file, "");
          // Let go at once: the reset may even beat the client's own connect to the finish.
          const victim = await TestClient.connect(target.port).catch(() => undefined);
          if (!contained) {
            expect(await server.waitExit(5000)).not.toBe(0);
            return;
          }
          if (victim) expect(await victim.endsWithin(5000)).toBe(true);
          await server.waitForLog(/fault injected by the test in open\(\)/);
          expect(existsSync(file)).toBe(false); // this client, and no other, took the fault
          await target.healthy();
        } catch (error) {
          throw target.explain(error);
        } finally {
          await target.dispose();
        }
      },
      SCENARIO_TIMEOUT_MS,
    );
  });
}

/** --accept-proxy: malformed and slow headers, on a second process that requires them (and gives up after 1 s). */
function acceptProxyTests(
  stage: HostileStage,
  scenario: (name: string, body: (server: Running) => Promise<void>, on?: Target) => void,
): void {
  let upstream: EchoUpstream | undefined;
  const timeoutFlag = stage.headerTimeoutFlag ?? "--connect-timeout";
  const target = new Target(stage, ["--accept-proxy", timeoutFlag, "1"], () => upstream, GOOD_HEADER);
  describe("hostile clients in front of --accept-proxy", () => {
    beforeAll(() => {
      if (stage.kind === "proxy") upstream = startEchoUpstream(); // an echo stage answers itself
    });
    afterAll(async () => {
      await target.dispose();
      upstream?.stop();
    });

    scenario(
      "300 clients reset after a partial PROXY header",
      async () => {
        expect(await resetStorm(target.port, 300, { first: "PROXY TCP4 192.0.2.1 19" })).toBe(0);
      },
      target,
    );

    scenario(
      `malformed PROXY headers (${BAD_HEADERS.length} kinds) are refused at once, each with a log line`,
      async (server) => {
        const accepted = upstream?.accepted;
        const from = server.stderr.text.length;
        const replies = await Promise.all(
          BAD_HEADERS.map(async ([, bytes]) => {
            const client = await TestClient.connect(target.port);
            client.write(bytes);
            return (await client.readToEnd(5000)).length;
          }),
        );
        expect(BAD_HEADERS.map(([what], i) => [what, replies[i]])).toEqual(BAD_HEADERS.map(([what]) => [what, 0]));
        // Refused by the parser, not by the 1 s header timeout: every line names what was wrong.
        const refusal = /closing: bad PROXY header: (?!none within)[^\n]*/;
        await waitForCount(server, refusal, BAD_HEADERS.length, 5000, from);
        const lines = server.stderr.text.slice(from).match(new RegExp(refusal, "g")) ?? [];
        expect(lines.length).toBe(BAD_HEADERS.length);
        expect(upstream?.accepted).toBe(accepted); // none of them reached the upstream
      },
      target,
    );

    scenario(
      `a PROXY header that never finishes is closed at ${timeoutFlag} (1 s), with a log line`,
      async (server) => {
        const client = await TestClient.connect(target.port);
        const started = performance.now();
        client.write("PROXY TCP4 192.0.2.1 ");
        expect((await client.readToEnd(5000)).length).toBe(0);
        expect(performance.now() - started).toBeGreaterThan(900);
        await server.waitForLog(/bad PROXY header: none within 1s/);
      },
      target,
    );

    scenario(
      "a PROXY header sent one byte at a time, within the timeout, is accepted",
      async () => {
        const client = await TestClient.connect(target.port);
        try {
          for (const byte of encode(GOOD_HEADER)) {
            client.write(new Uint8Array([byte]));
            await Bun.sleep(5); // its own segment each time: the stage sees the header grow a byte per read
          }
          client.write("slow but valid\n");
          expect(decode(await client.readAtLeast(15, 5000))).toBe("SLOW BUT VALID\n");
        } finally {
          client.close();
        }
      },
      target,
    );
  });
}

/** Echo 001-003: one client, then exit. Whatever that client does, the exit is clean: code 0, no stack trace. */
function oneClientTests(stage: HostileStage): void {
  const cleanExit = async (server: Running): Promise<void> => {
    const code = await server.waitExit(10_000);
    await Promise.all([server.stdout.ended(), server.stderr.ended()]);
    expect(server.output).not.toMatch(STACK_TRACE);
    expect(code).toBe(0);
  };

  describe("hostile clients (a stage that serves one client, then exits)", () => {
    test("300 clients reset at once, many before the accept completes: exit 0, no stack trace", async () => {
      await using server = await startStage(stage.file, stage.args ?? [], stage.options);
      await resetStorm(server.port, 300); // once it stops listening the rest are refused: not counted
      await cleanExit(server);
    });

    test("a client that connects and closes without a byte: exit 0, no stack trace", async () => {
      await using server = await startStage(stage.file, stage.args ?? [], stage.options);
      const client = await TestClient.connect(server.port);
      client.close();
      await cleanExit(server);
    });

    test("a client that resets while its reply is in flight: exit 0, no stack trace", async () => {
      await using server = await startStage(stage.file, stage.args ?? [], stage.options);
      const client = await TestClient.connect(server.port);
      client.pauseReading();
      client.write(bytes(64 * MiB));
      await peerStopsTaking(client);
      client.reset();
      await cleanExit(server);
    });
  });
}
