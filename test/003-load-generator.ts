#!/usr/bin/env bun
/*
 * 003 - a load generator that verifies every reply
 *
 * Adds:   a closed-loop request/response load test: -c connections, opened at --connect-rate per second (a
 *         burst overflows the listen backlog, 512 on Bun, and costs 1 s SYN retransmits), then every connection
 *         sends a message, waits for its whole reply, checks it byte for byte against the expected uppercase, and
 *         sends the next (--pipeline N keeps N in flight), for -d seconds or -m messages per connection, after an
 *         optional --warmup that is not measured. Latency (send to last reply byte) and connect latency go into
 *         HDR histograms (hdr-histogram-js): p50/p90/p99/p99.9/max. Throughput in msgs/s and MiB/s each way.
 *         Errors are counted by class: refused, reset, timeout, closed (the server closed with replies owed),
 *         mismatch (with the first offending offset), EMFILE, EADDRNOTAVAIL, other; a connection that fails stops.
 *         Before the run it reads the open-files limit and the ephemeral port range and says plainly when the
 *         connections cannot fit. A header line, a live one-line progress display on a terminal (none when
 *         piped), a wrk-style summary, and --json (the JSON on stdout, the text summary on stderr). Exit code 1
 *         if any error occurred, 2 for a usage error. Ctrl-C stops the run early and still prints the summary.
 *         To keep the generator from being the bottleneck, messages are windows into one preallocated random
 *         pool (so a batch of pipelined messages is one write, and nothing is allocated per message) and replies
 *         are compared against the pool's uppercase twin (a plain loop for short chunks, one Buffer.compare for
 *         long ones); latencies are tallied in 100 ns steps and folded into the histogram at the end.
 * Lacks:  open-loop (fixed-rate) load, which measures latency without coordinated omission; several source
 *         addresses to get past one address's ephemeral ports; TLS. (The last client stage.)
 *
 * Try it: bun tcp_echo_server/005-bounded-concurrency.ts --port 5000 --log-level warn
 *         bun test/003-load-generator.ts -c 50 -d 5 --port 5000
 *         bun test/003-load-generator.ts -c 10 -m 10000 -s 1024 --pipeline 8 --port 5000 --json | jq .latency
 */

import type { Socket } from "bun";
import * as hdr from "hdr-histogram-js";
import { closeSync, openSync, readdirSync, readFileSync, writeSync } from "node:fs";
import { parseArgs } from "node:util";
import pc from "picocolors";
import { basename, relative } from "node:path";

interface LoadConfig {
  host: string;
  port: number;
  connections: number;
  /** Measured run time in seconds, or undefined when -m is used. */
  durationSeconds: number | undefined;
  /** Measured messages per connection, or undefined when -d is used. */
  messagesPerConnection: number | undefined;
  size: number;
  pipeline: number;
  /** New connections per second; 0 = all at once. */
  connectRate: number;
  warmupSeconds: number;
  timeoutSeconds: number;
  json: boolean;
}

const CLASSES = ["refused", "reset", "timeout", "closed", "mismatch", "EMFILE", "EADDRNOTAVAIL", "other"] as const;
type ErrorClass = (typeof CLASSES)[number];

const CLASS_HELP: Record<ErrorClass, string> = {
  refused: "connection refused: is a server listening there?",
  reset: "the server reset the connection (RST)",
  timeout: "no connection, or a reply, within --timeout",
  closed: "the server closed the connection while replies were owed",
  mismatch: "a reply byte differs from the uppercase of the request",
  EMFILE: "out of file descriptors (ulimit -n)",
  EADDRNOTAVAIL: "out of local ports (ephemeral port range)",
  other: "another error",
};

// ---------------------------------------------------------------------------------------------------------------
// The message pool. Every message is a window of `size` bytes into LOWER; a connection's k-th message starts
// `size` bytes after its (k-1)-th, modulo POOL_PERIOD. LOWER repeats its first bytes past POOL_PERIOD, so any run
// of up to `pipeline` consecutive messages is one contiguous slice: one write(), no copy. Its replies are the same
// window of UPPER. Each connection starts at a different place, so a reply sent to the wrong connection is caught.

// Prime, so message boundaries drift through the pool instead of repeating; small, so both pools stay in cache.
const POOL_PERIOD = 4093;

function buildPools(size: number, pipeline: number): { lower: Buffer; upper: Buffer } {
  const length = POOL_PERIOD + size * pipeline;
  const lower = Buffer.allocUnsafe(length);
  crypto.getRandomValues(lower.subarray(0, POOL_PERIOD));
  for (let i = 0; i < POOL_PERIOD; i++) lower[i] = 0x61 + (lower[i]! % 26); // random a-z
  for (let i = POOL_PERIOD; i < length; i++) lower[i] = lower[i - POOL_PERIOD]!;
  const upper = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) upper[i] = lower[i]! - 0x20;
  return { lower, upper };
}

// ---------------------------------------------------------------------------------------------------------------
// Limits: can the requested connections exist at all?

interface Limits {
  openFiles: number | undefined;
  openFilesInUse: number | undefined;
  ephemeralPorts: [number, number] | undefined;
  /** Plain-language reasons why the connections cannot fit; empty when they can. */
  problems: string[];
}

function readLimits(connections: number): Limits {
  let openFiles: number | undefined;
  let openFilesInUse: number | undefined;
  let ephemeralPorts: [number, number] | undefined;
  try {
    const line = readFileSync("/proc/self/limits", "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max open files"));
    const soft = line?.split(/\s+/)[3];
    if (soft !== undefined) openFiles = soft === "unlimited" ? Infinity : Number(soft);
    openFilesInUse = readdirSync("/proc/self/fd").length - 1; // minus the descriptor readdir itself used
  } catch {
    // not Linux: nothing to check against
  }
  try {
    const [low, high] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number);
    if (low !== undefined && high !== undefined) ephemeralPorts = [low, high];
  } catch {
    // not Linux
  }
  const problems: string[] = [];
  if (openFiles !== undefined && openFilesInUse !== undefined && connections > openFiles - openFilesInUse) {
    problems.push(
      `${connections} connections need ${connections} file descriptors, but the open-files limit is ${openFiles} ` +
        `with ${openFilesInUse} in use: raise it (ulimit -n) or lower -c; connections past it fail with EMFILE`,
    );
  }
  if (ephemeralPorts !== undefined) {
    const ports = ephemeralPorts[1] - ephemeralPorts[0] + 1;
    if (connections > ports) {
      problems.push(
        `${connections} connections to one address need ${connections} local ports, but the ephemeral port range ` +
          `${ephemeralPorts[0]}-${ephemeralPorts[1]} has ${ports} (net.ipv4.ip_local_port_range): widen it or lower ` +
          `-c; connections past it fail with EADDRNOTAVAIL`,
      );
    }
  }
  return { openFiles, openFilesInUse, ephemeralPorts, problems };
}

// ---------------------------------------------------------------------------------------------------------------
// The run.

const CONNECTING = 0;
const OPEN = 1;
const DONE = 2;
const FAILED = 3;

/** One connection's state. Plain numbers only: this is touched for every chunk. */
class Conn {
  socket: Socket<Conn> | undefined = undefined;
  state = CONNECTING;
  connectStartNs = 0;
  /** Pool position of the first byte not yet handed to write(), and how many bytes are waiting to be. */
  writePos: number;
  queuedBytes = 0;
  /** Pool position of the next expected reply byte. */
  readPos: number;
  /** Reply bytes received in total (the stream offset), and of the message in progress. */
  received = 0;
  partial = 0;
  /** Messages sent and not yet answered; counters of messages sent and answered. */
  outstanding = 0;
  sent = 0;
  answered = 0;
  measuredSent = 0;
  /** Send time of each message in flight: a ring of `pipeline` slots, the next to fill and the oldest unanswered. */
  readonly sendTimes: Float64Array;
  sendSlot = 0;
  answerSlot = 0;

  constructor(
    readonly number: number,
    start: number,
    pipeline: number,
  ) {
    this.writePos = start;
    this.readPos = start;
    this.sendTimes = new Float64Array(pipeline);
  }
}

interface FirstMismatch {
  connection: number;
  message: number;
  offset: number;
  streamOffset: number;
  expected: number;
  got: number;
}

interface Results {
  elapsedSeconds: number;
  messages: number;
  bytesSent: number;
  bytesReceived: number;
  latency: hdr.Histogram;
  connectLatency: hdr.Histogram;
  connected: number;
  errors: Record<ErrorClass, number>;
  firstError: Partial<Record<ErrorClass, string>>;
  firstMismatch: FirstMismatch | undefined;
  interrupted: boolean;
  /** This process's CPU time over the measured window, as a fraction of one core (user, system). */
  cpu: { user: number; system: number };
}

/** Latencies are kept in steps of 100 ns: 3 significant digits from 10 µs up, finer than loopback TCP ever is. */
const NS_PER_STEP = 100;

const toSteps = (nanoseconds: number): number => Math.max(1, Math.round(nanoseconds / NS_PER_STEP));

/**
 * Each reply's latency is counted in a plain table indexed by its number of steps (one increment), and the table is
 * folded into the HDR histogram (one recordValueWithCount per distinct value) when the run ends. Recording straight
 * into hdr-histogram-js costs about 200 ns a value in a live run (it takes a log2 and a pow each time), more than
 * all the rest of a reply's handling. Latencies past the table's 26 ms go to the histogram at once.
 */
class LatencyRecorder {
  private readonly counts = new Uint32Array(1 << 18);

  constructor(readonly histogram: hdr.Histogram) {}

  record(nanoseconds: number): void {
    const steps = toSteps(nanoseconds);
    if (steps < this.counts.length) this.counts[steps] = this.counts[steps]! + 1;
    else this.histogram.recordValue(steps);
  }

  flush(): void {
    const counts = this.counts;
    for (let steps = 0; steps < counts.length; steps++) {
      const count = counts[steps]!;
      if (count === 0) continue;
      this.histogram.recordValueWithCount(steps, count);
      counts[steps] = 0;
    }
  }
}

function newHistogram(): hdr.Histogram {
  // Steps of NS_PER_STEP, 3 significant digits, up to an hour; the pure-JS Int32 backing (no WebAssembly to load).
  return hdr.build({
    bitBucketSize: 32,
    lowestDiscernibleValue: 1,
    highestTrackableValue: 3_600_000_000_000 / NS_PER_STEP,
    numberOfSignificantValueDigits: 3,
    useWebAssembly: false,
  });
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

function classify(error: NodeJS.ErrnoException): ErrorClass {
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

function describeByte(byte: number): string {
  const hex = `0x${byte.toString(16).padStart(2, "0")}`;
  return byte >= 0x20 && byte < 0x7f ? `${hex} '${String.fromCharCode(byte)}'` : hex;
}

class LoadRun {
  private readonly lower: Buffer;
  private readonly upper: Buffer;
  private readonly conns: Conn[] = [];
  private readonly size: number;
  private readonly pipeline: number;
  private readonly timeoutNs: number;
  private readonly messageLimit: number | undefined;
  private readonly latency = new LatencyRecorder(newHistogram());
  private readonly connectLatency = newHistogram();
  private readonly errors = Object.fromEntries(CLASSES.map((c) => [c, 0])) as Record<ErrorClass, number>;
  private readonly firstError: Partial<Record<ErrorClass, string>> = {};
  private firstMismatch: FirstMismatch | undefined;

  private settled = 0; // connection attempts that connected or failed
  private connected = 0;
  private live = 0; // connections open and not finished
  private trafficStarted = false;
  private stopping = false;
  private interrupted = false;
  private trafficStartNs = 0;
  private measureStartNs = Infinity;
  private lastAnswerNs = 0;
  private stopNs = 0;
  private cpuAtMeasureStart: NodeJS.CpuUsage | undefined;
  private cpuUsed: NodeJS.CpuUsage | undefined;
  /** Measured messages answered, and measured messages sent (for bytes sent). */
  private measuredAnswered = 0;
  private measuredSent = 0;
  /** All messages answered, warmup included (for the progress line). */
  private answeredTotal = 0;
  private finish: (() => void) | undefined;
  private readonly timers: Timer[] = [];

  constructor(private readonly config: LoadConfig) {
    this.size = config.size;
    this.pipeline = config.pipeline;
    this.timeoutNs = config.timeoutSeconds * 1e9;
    this.messageLimit = config.messagesPerConnection;
    ({ lower: this.lower, upper: this.upper } = buildPools(config.size, config.pipeline));
  }

  run(progress: ((line: string) => void) | undefined): Promise<Results> {
    return new Promise((resolve) => {
      this.finish = () => {
        for (const timer of this.timers) clearInterval(timer);
        this.latency.flush();
        // A duration run (or an interrupted one) is measured until it was told to stop, as wrk does: replies that
        // arrive later are still checked, but not counted. A -m run is measured until its last reply. Zero if it
        // never got past the warmup.
        const endNs = this.stopNs > 0 ? this.stopNs : this.lastAnswerNs;
        const elapsedSeconds = this.trafficStarted ? Math.max(0, endNs - this.measureStartNs) / 1e9 : 0;
        this.cpuUsed ??= this.cpuAtMeasureStart ? process.cpuUsage(this.cpuAtMeasureStart) : undefined;
        const cpu = this.cpuUsed && elapsedSeconds > 0 ? this.cpuUsed : { user: 0, system: 0 };
        resolve({
          elapsedSeconds,
          messages: this.measuredAnswered,
          bytesSent: this.measuredSent * this.size,
          bytesReceived: this.measuredAnswered * this.size,
          latency: this.latency.histogram,
          connectLatency: this.connectLatency,
          connected: this.connected,
          errors: this.errors,
          firstError: this.firstError,
          firstMismatch: this.firstMismatch,
          interrupted: this.interrupted,
          cpu: {
            user: elapsedSeconds > 0 ? cpu.user / 1e6 / elapsedSeconds : 0,
            system: elapsedSeconds > 0 ? cpu.system / 1e6 / elapsedSeconds : 0,
          },
        });
      };
      this.timers.push(
        setInterval(() => this.sweepTimeouts(), Math.min(250, Math.max(10, this.config.timeoutSeconds * 250))),
      );
      if (progress) this.timers.push(setInterval(() => progress(this.progressLine()), 1000));
      this.openConnections();
    });
  }

  /** Ctrl-C: stop sending, collect the replies in flight, report. */
  interrupt(): void {
    this.interrupted = true;
    if (!this.trafficStarted) {
      for (const conn of this.conns) if (conn.state === CONNECTING || conn.state === OPEN) this.end(conn);
      this.maybeFinish();
      return;
    }
    this.stop();
  }

  private openConnections(): void {
    const { connections, connectRate } = this.config;
    const startMs = performance.now();
    const openDue = (): void => {
      const due =
        connectRate === 0
          ? connections
          : Math.min(connections, Math.floor(((performance.now() - startMs) / 1000) * connectRate) + 1);
      while (this.conns.length < due && !this.interrupted) this.connect(this.conns.length + 1);
      if (this.conns.length < connections && !this.interrupted) setTimeout(openDue, 5);
    };
    openDue();
  }

  private connect(number: number): void {
    const conn = new Conn(number, (number * 7919) % POOL_PERIOD, this.pipeline);
    this.conns.push(conn);
    conn.connectStartNs = Bun.nanoseconds();
    Bun.connect<Conn>({ hostname: this.config.host, port: this.config.port, data: conn, socket: this.handlers }).catch(
      (error: NodeJS.ErrnoException) => {
        if (conn.state !== CONNECTING) return; // already timed out
        conn.state = FAILED;
        this.settled++;
        const errorClass = classify(error);
        const reason =
          errorClass === "EMFILE" && error.code === "ECONNREFUSED"
            ? "no file descriptor left for a new socket (Bun reports that as ECONNREFUSED)"
            : `${error.code ?? error.message} connecting to ${formatAddress(this.config.host, this.config.port)}`;
        this.recordError(errorClass, `connection ${number}: ${reason}`);
        this.afterSettle();
      },
    );
  }

  // One handler object for every socket; each call finds its Conn in socket.data.
  private readonly handlers = {
    open: (socket: Socket<Conn>) => {
      const conn = socket.data;
      if (conn.state !== CONNECTING) return void socket.terminate(); // it timed out, or we are stopping
      conn.socket = socket;
      conn.state = OPEN;
      this.connectLatency.recordValue(toSteps(Bun.nanoseconds() - conn.connectStartNs));
      this.connected++;
      this.live++;
      this.settled++;
      this.afterSettle();
    },
    // try/catch right here, not in a helper taking a closure: no allocation per chunk.
    data: (socket: Socket<Conn>, chunk: Buffer) => {
      try {
        this.onData(socket.data, chunk);
      } catch (error) {
        this.onBug(socket.data, error);
      }
    },
    drain: (socket: Socket<Conn>) => {
      try {
        this.flush(socket.data);
      } catch (error) {
        this.onBug(socket.data, error);
      }
    },
    end: (socket: Socket<Conn>) => this.onPeerClosed(socket.data, undefined),
    close: (socket: Socket<Conn>, error?: Error) => this.onPeerClosed(socket.data, error),
    connectError: () => {}, // reported through the promise
  };

  /** A bug of ours (or of Bun) in a handler fails that connection as "other", rather than printing a stack trace. */
  private onBug(conn: Conn, error: unknown): void {
    if (conn.state === OPEN) this.fail(conn, "other", `connection ${conn.number}: ${(error as Error).message}`);
  }

  private afterSettle(): void {
    if (this.settled < this.config.connections) return;
    if (this.connected === 0 || this.interrupted) return this.maybeFinish();
    this.startTraffic();
  }

  /** Every connection is open (or failed): all start sending at the same moment. */
  private startTraffic(): void {
    if (this.trafficStarted) return;
    this.trafficStarted = true;
    const now = Bun.nanoseconds();
    this.trafficStartNs = now;
    this.measureStartNs = now + this.config.warmupSeconds * 1e9;
    // Our own CPU use over the measured window says whether we, rather than the server, could be the limit.
    if (this.config.warmupSeconds === 0) this.cpuAtMeasureStart = process.cpuUsage();
    else
      this.timers.push(
        setTimeout(() => (this.cpuAtMeasureStart = process.cpuUsage()), this.config.warmupSeconds * 1000),
      );
    if (this.config.durationSeconds !== undefined) {
      this.timers.push(setTimeout(() => this.stop(), (this.config.warmupSeconds + this.config.durationSeconds) * 1000));
    }
    for (const conn of this.conns) {
      if (conn.state === OPEN) this.send(conn, this.pipeline, now);
    }
    this.maybeFinish(); // every connection that opened may have failed already: then there is nothing to wait for
  }

  /** How many more messages `conn` may send now (at most `wanted`). */
  private allowance(conn: Conn, wanted: number, now: number): number {
    if (this.stopping) return 0;
    const limit = this.messageLimit;
    if (limit === undefined || now < this.measureStartNs) return wanted;
    return Math.min(wanted, limit - conn.measuredSent);
  }

  private send(conn: Conn, wanted: number, now: number): void {
    const count = this.allowance(conn, wanted, now);
    if (count <= 0) {
      if (conn.outstanding === 0) this.end(conn);
      return;
    }
    // Ring indices wrap by comparison, not %: an integer division per message is measurable here.
    const times = conn.sendTimes;
    for (let i = 0; i < count; i++) {
      times[conn.sendSlot] = now;
      if (++conn.sendSlot === this.pipeline) conn.sendSlot = 0;
    }
    conn.sent += count;
    conn.outstanding += count;
    conn.queuedBytes += count * this.size;
    if (now >= this.measureStartNs) {
      conn.measuredSent += count;
      this.measuredSent += count;
    }
    this.flush(conn);
  }

  /** write() takes what the kernel accepts now; the rest stays queued (a range of the pool) until `drain`. */
  private flush(conn: Conn): void {
    if (conn.queuedBytes === 0 || conn.state !== OPEN) return;
    const written = conn.socket!.write(this.lower, conn.writePos, conn.queuedBytes);
    if (written <= 0) return; // full (drain will call again) or closed (close will report)
    conn.queuedBytes -= written;
    const position = conn.writePos + written;
    conn.writePos = position < POOL_PERIOD ? position : position % POOL_PERIOD; // a write can span the pool many times
  }

  private onData(conn: Conn, chunk: Buffer): void {
    if (conn.state !== OPEN) return;
    const length = chunk.length;
    const owed = conn.outstanding * this.size - conn.partial;
    const checked = Math.min(length, owed);
    if (checked < length || !this.matches(chunk, checked, conn.readPos)) {
      return this.onMismatch(conn, chunk, checked);
    }
    conn.received += length;
    const position = conn.readPos + length;
    conn.readPos = position < POOL_PERIOD ? position : position % POOL_PERIOD; // a chunk (up to 512 KiB) too
    conn.partial += length;
    if (conn.partial < this.size) return; // the reply is not complete yet: TCP split it
    const now = Bun.nanoseconds();
    let completed = 0;
    while (conn.partial >= this.size) {
      conn.partial -= this.size;
      const sentAt = conn.sendTimes[conn.answerSlot]!;
      if (++conn.answerSlot === this.pipeline) conn.answerSlot = 0;
      conn.answered++;
      completed++;
      if (sentAt >= this.measureStartNs && !this.stopping) {
        this.latency.record(now - sentAt);
        this.measuredAnswered++;
        this.lastAnswerNs = now;
      }
    }
    conn.outstanding -= completed;
    this.answeredTotal += completed;
    this.send(conn, completed, now);
  }

  /**
   * Whether the first `checked` bytes of `chunk` are the expected reply bytes, from pool position `at`. Measured in
   * a live run, Buffer.compare cost about 250 ns a call (argument checks, the trip into native code): a plain loop
   * is cheaper for a short chunk; a long one is worth the one native call.
   */
  private matches(chunk: Buffer, checked: number, at: number): boolean {
    if (checked <= 256) {
      const upper = this.upper;
      for (let i = 0; i < checked; i++) if (chunk[i] !== upper[at + i]) return false;
      return true;
    }
    return this.upper.compare(chunk, 0, checked, at, at + checked) === 0;
  }

  private onMismatch(conn: Conn, chunk: Buffer, checked: number): void {
    let index = 0;
    while (index < checked && chunk[index] === this.upper[conn.readPos + index]) index++;
    const streamOffset = conn.received + index;
    const message = Math.floor(streamOffset / this.size) + 1;
    const offset = streamOffset % this.size;
    const got = chunk[index]!;
    if (index >= checked) {
      const extra = chunk.length - checked;
      const bytes = `${extra} reply byte${extra === 1 ? "" : "s"}`;
      const detail =
        `connection ${conn.number}: ${bytes} more than requested, ` +
        `from stream offset ${streamOffset}: got ${describeByte(got)}`;
      this.firstMismatch ??= { connection: conn.number, message, offset, streamOffset, expected: -1, got };
      this.fail(conn, "mismatch", detail);
      return;
    }
    const expected = this.upper[conn.readPos + index]!;
    this.firstMismatch ??= { connection: conn.number, message, offset, streamOffset, expected, got };
    const where =
      `connection ${conn.number}, message ${message}, ` +
      `byte ${offset} of ${this.size} (stream offset ${streamOffset})`;
    const detail = `${where}: got ${describeByte(got)}, expected ${describeByte(expected)}`;
    this.fail(conn, "mismatch", detail);
  }

  private onPeerClosed(conn: Conn, error: Error | undefined): void {
    if (conn.state !== OPEN) return; // we ended it, or it already failed
    if (error) {
      const code = (error as NodeJS.ErrnoException).code ?? error.message;
      this.fail(
        conn,
        classify(error as NodeJS.ErrnoException),
        `connection ${conn.number}: ${code} after ${conn.received} reply bytes`,
      );
      return;
    }
    const owed = conn.outstanding > 0 ? `with ${conn.outstanding} replies owed` : "before the run ended";
    this.fail(
      conn,
      "closed",
      `connection ${conn.number}: closed by the server after ${conn.received} reply bytes, ${owed}`,
    );
  }

  private sweepTimeouts(): void {
    const now = Bun.nanoseconds();
    for (const conn of this.conns) {
      if (conn.state === CONNECTING && now - conn.connectStartNs > this.timeoutNs) {
        conn.state = FAILED;
        this.settled++;
        this.recordError("timeout", `connection ${conn.number}: not connected after ${this.config.timeoutSeconds} s`);
        this.afterSettle();
      } else if (conn.state === OPEN && conn.outstanding > 0) {
        const oldest = conn.sendTimes[conn.answerSlot]!;
        if (now - oldest > this.timeoutNs) {
          const detail =
            `connection ${conn.number}: no complete reply to message ${conn.answered + 1} ` +
            `after ${this.config.timeoutSeconds} s (${conn.partial} of ${this.size} bytes)`;
          this.fail(conn, "timeout", detail);
        }
      }
    }
  }

  /** Duration over (or Ctrl-C): no new messages; each connection closes once its replies are in. */
  private stop(): void {
    if (this.stopping) return;
    this.stopping = true;
    this.stopNs = Bun.nanoseconds();
    if (this.cpuAtMeasureStart) this.cpuUsed = process.cpuUsage(this.cpuAtMeasureStart);
    for (const conn of this.conns) if (conn.state === OPEN && conn.outstanding === 0) this.end(conn);
    this.maybeFinish();
  }

  private end(conn: Conn): void {
    const wasLive = conn.state === OPEN;
    if (conn.state === CONNECTING) this.settled++;
    conn.state = DONE;
    conn.socket?.end();
    if (wasLive) this.live--;
    this.maybeFinish();
  }

  private fail(conn: Conn, errorClass: ErrorClass, detail: string): void {
    const wasLive = conn.state === OPEN;
    conn.state = FAILED;
    conn.socket?.terminate();
    if (wasLive) this.live--;
    this.recordError(errorClass, detail);
    this.maybeFinish();
  }

  private recordError(errorClass: ErrorClass, detail: string): void {
    this.errors[errorClass]++;
    this.firstError[errorClass] ??= detail;
  }

  private maybeFinish(): void {
    if (this.live > 0 || this.settled < this.conns.length) return;
    if (this.conns.length < this.config.connections && !this.interrupted) return; // still ramping up
    const finish = this.finish;
    this.finish = undefined;
    finish?.();
  }

  private progressLine(): string {
    const now = Bun.nanoseconds();
    if (!this.trafficStarted) {
      const failed = this.settled - this.connected;
      return `connecting: ${this.connected} open, ${failed} failed, of ${this.config.connections}`;
    }
    const seconds = (now - this.trafficStartNs) / 1e9;
    const phase = now < this.measureStartNs ? "warmup " : "";
    const rate = seconds > 0 ? this.answeredTotal / seconds : 0;
    const errors = CLASSES.reduce((sum, c) => sum + this.errors[c], 0);
    const counts = `${formatCount(this.answeredTotal)} msgs  ${formatCount(Math.round(rate))} msgs/s`;
    return `${phase}${seconds.toFixed(1)}s  ${counts}  ${this.live} connections  ${errors} errors`;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Reporting.

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

function formatCount(n: number): string {
  return n.toLocaleString("en-US");
}

/** Nanoseconds as 3 significant digits in the largest unit that keeps the number at or above 1: 45.1µs, 1.02ms. */
function formatNs(ns: number): string {
  const units: Array<[string, number]> = [
    ["s", 1e9],
    ["ms", 1e6],
    ["µs", 1e3],
    ["ns", 1],
  ];
  for (const [unit, scale] of units) {
    // 999.7µs would print as 1.00e+3µs: from 999.5 on, the larger unit is the right one
    if (ns / scale >= 0.9995 || unit === "ns") return `${(ns / scale).toPrecision(3)}${unit}`;
  }
  return `${ns}ns`;
}

function formatSeconds(seconds: number): string {
  return `${Number(seconds.toPrecision(6))}s`;
}

interface LatencySummary {
  p50: number;
  p90: number;
  p99: number;
  p99_9: number;
  max: number;
  mean: number;
  count: number;
}

/** Percentiles in microseconds (3 significant digits, as recorded). */
function summarise(histogram: hdr.Histogram): LatencySummary {
  const us = (steps: number): number => Number(((steps * NS_PER_STEP) / 1000).toFixed(3));
  const empty = histogram.totalCount === 0;
  // A percentile is reported as the top of its bucket, which can lie above the exact maximum: cap it there.
  const at = (percentile: number): number =>
    empty ? 0 : us(Math.min(histogram.getValueAtPercentile(percentile), histogram.maxValue));
  return {
    p50: at(50),
    p90: at(90),
    p99: at(99),
    p99_9: at(99.9),
    max: empty ? 0 : us(histogram.maxValue),
    mean: empty ? 0 : us(histogram.mean),
    count: histogram.totalCount,
  };
}

function header(config: LoadConfig): string {
  const length =
    config.durationSeconds !== undefined
      ? `${formatSeconds(config.durationSeconds)} test`
      : `${formatCount(config.messagesPerConnection!)} messages per connection test`;
  const ramp = config.connectRate === 0 ? "all at once" : `${formatCount(config.connectRate)}/s`;
  return (
    `Running ${length} @ ${formatAddress(config.host, config.port)}\n` +
    `  ${config.connections} connection${config.connections === 1 ? "" : "s"}, ${config.size}-byte messages, ` +
    `pipeline ${config.pipeline}, connecting ${ramp}, ` +
    `warmup ${formatSeconds(config.warmupSeconds)}, timeout ${formatSeconds(config.timeoutSeconds)}\n`
  );
}

function limitsLine(config: LoadConfig, limits: Limits): string {
  const files =
    limits.openFiles === undefined
      ? "open files unknown"
      : `open files ${limits.openFiles} (${limits.openFilesInUse} in use)`;
  const ports =
    limits.ephemeralPorts === undefined
      ? "ephemeral ports unknown"
      : `ephemeral ports ${limits.ephemeralPorts[0]}-${limits.ephemeralPorts[1]}`;
  const verdict = limits.problems.length === 0 ? `${config.connections} connections fit` : "the connections do NOT fit";
  return `  limits: ${files}, ${ports}: ${verdict}\n`;
}

function textSummary(config: LoadConfig, results: Results): string {
  const reply = summarise(results.latency);
  const connect = summarise(results.connectLatency);
  const mib = (bytes: number): string => (bytes / 1048576).toFixed(2);
  const perSecond = (n: number): number => (results.elapsedSeconds > 0 ? n / results.elapsedSeconds : 0);
  const col = (text: string): string => text.padStart(10);
  const row = (name: string, s: LatencySummary): string => {
    const cells = [s.p50, s.p90, s.p99, s.p99_9, s.max, s.mean].map((us) =>
      col(s.count === 0 ? "-" : formatNs(us * 1000)),
    );
    return `    ${name.padEnd(8)}${cells.join("")}\n`;
  };
  const totalErrors = CLASSES.reduce((sum, c) => sum + results.errors[c], 0);
  let text =
    `  ${"Latency".padEnd(10)}${["p50", "p90", "p99", "p99.9", "max", "mean"].map((h) => h.padStart(10)).join("")}\n` +
    row("reply", reply) +
    row("connect", connect) +
    "\n" +
    `  ${formatCount(results.messages)} messages in ${results.elapsedSeconds.toFixed(2)}s` +
    `${results.messages > 0 ? ", each reply checked byte for byte" : ""}\n` +
    `  Messages/sec: ${perSecond(results.messages).toFixed(2)}\n` +
    `  Sent:         ${mib(results.bytesSent)} MiB, ${mib(perSecond(results.bytesSent))} MiB/s\n` +
    `  Received:     ${mib(results.bytesReceived)} MiB, ${mib(perSecond(results.bytesReceived))} MiB/s\n` +
    `  Connections:  ${results.connected} of ${config.connections} connected\n` +
    `  Client CPU:   ${cpuText(results.cpu)}\n`;
  if (totalErrors === 0) {
    text += `  Errors:       ${pc.green("0")}\n`;
  } else {
    const byClass = CLASSES.filter((c) => results.errors[c] > 0).map((c) => `${c} ${results.errors[c]}`);
    text += `  Errors:       ${pc.red(String(totalErrors))} (${byClass.join(", ")})\n`;
    for (const c of CLASSES) {
      if (results.errors[c] === 0) continue;
      text += `    ${c}: ${CLASS_HELP[c]}\n      first: ${results.firstError[c]}\n`;
    }
  }
  if (results.interrupted) text += "  (interrupted: stopped early by a signal)\n";
  return text;
}

/**
 * Share of one core this process used while measuring. On loopback much of it is "system": the kernel's TCP work
 * for both ends is charged to whichever process is running, so read it next to the server's, not alone.
 */
function cpuText(cpu: { user: number; system: number }): string {
  const percent = (x: number): string => `${Math.round(x * 100)}%`;
  return `${percent(cpu.user + cpu.system)} of one core (user ${percent(cpu.user)}, system ${percent(cpu.system)})`;
}

function jsonSummary(config: LoadConfig, limits: Limits, results: Results): string {
  const perSecond = (n: number): number => (results.elapsedSeconds > 0 ? n / results.elapsedSeconds : 0);
  return `${JSON.stringify(
    {
      target: formatAddress(config.host, config.port),
      config: {
        connections: config.connections,
        durationSeconds: config.durationSeconds ?? null,
        messagesPerConnection: config.messagesPerConnection ?? null,
        messageSize: config.size,
        pipeline: config.pipeline,
        connectRate: config.connectRate,
        warmupSeconds: config.warmupSeconds,
        timeoutSeconds: config.timeoutSeconds,
      },
      limits: {
        openFiles: limits.openFiles === Infinity ? "unlimited" : (limits.openFiles ?? null),
        openFilesInUse: limits.openFilesInUse ?? null,
        ephemeralPorts: limits.ephemeralPorts ?? null,
        fits: limits.problems.length === 0,
        problems: limits.problems,
      },
      elapsedSeconds: results.elapsedSeconds,
      messages: results.messages,
      messagesPerSecond: perSecond(results.messages),
      bytesSent: results.bytesSent,
      bytesReceived: results.bytesReceived,
      sentMiBPerSecond: perSecond(results.bytesSent) / 1048576,
      receivedMiBPerSecond: perSecond(results.bytesReceived) / 1048576,
      latencyMicroseconds: summarise(results.latency),
      connectLatencyMicroseconds: summarise(results.connectLatency),
      connected: results.connected,
      clientCpu: { user: results.cpu.user, system: results.cpu.system, total: results.cpu.user + results.cpu.system },
      errors: { ...results.errors, total: CLASSES.reduce((sum, c) => sum + results.errors[c], 0) },
      firstErrors: results.firstError,
      firstMismatch: results.firstMismatch ?? null,
      interrupted: results.interrupted,
    },
    null,
    2,
  )}\n`;
}

// ---------------------------------------------------------------------------------------------------------------
// Command line.

// The usage line names the command as it was started, so renaming or copying the stage changes nothing here:
// `bun PATH` for this file, or the name it was built under (`bun run build`: an executable or an installed command).
const THIS_COMMAND = import.meta.path.endsWith(".ts")
  ? `bun ${relative(process.cwd(), import.meta.path)}`
  : basename(import.meta.path);

const HELP = `Usage: ${THIS_COMMAND} [options]

Closed-loop request/response load: each connection sends a message, waits for its whole reply, checks it
byte for byte against the uppercase of the request, and sends the next. Reports latency percentiles (HDR
histogram), throughput, and errors by class; exit code 0 if there was no error, 1 otherwise.

Options:
  -c, --connections N    connections (default 10)
  -d, --duration TIME    measured run time: 10, 10s, 500ms, 2m (default 10s; not with -m)
  -m, --messages N       measured messages per connection, instead of a duration
  -s, --size BYTES       bytes per message (default 64)
  --pipeline N           messages in flight per connection (default 1)
  --connect-rate N       new connections per second, 0 = all at once (default 5000)
  --warmup TIME          traffic before measuring starts, not counted (default 0)
  --timeout TIME         time allowed to connect, and for each reply (default 5s)
  --host HOST            server address (default 127.0.0.1)
  --port PORT            server port (default 5000)
  --json                 JSON results on stdout (the text summary goes to stderr)
  -h, --help             show this help
`;

class UsageError extends Error {}

function parseInteger(name: string, text: string, min: number, max: number): number {
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new UsageError(`${name} must be an integer from ${min} to ${max}, got "${text}"`);
  }
  return Number(text);
}

/** "10", "10s", "1.5s", "500ms", "2m" -> seconds. */
function parseTime(name: string, text: string, allowZero: boolean): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text);
  if (!match) throw new UsageError(`${name} must be a time such as 10, 10s, 500ms or 2m, got "${text}"`);
  const value = Number(match[1]);
  const seconds = match[2] === "ms" ? value / 1000 : match[2] === "m" ? value * 60 : value;
  if (seconds === 0 && !allowZero) throw new UsageError(`${name} must be more than 0, got "${text}"`);
  return seconds;
}

function parseConfig(argv: string[]): LoadConfig | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        connections: { type: "string", short: "c", default: "10" },
        duration: { type: "string", short: "d" },
        messages: { type: "string", short: "m" },
        size: { type: "string", short: "s", default: "64" },
        pipeline: { type: "string", default: "1" },
        "connect-rate": { type: "string", default: "5000" },
        warmup: { type: "string", default: "0" },
        timeout: { type: "string", default: "5s" },
        host: { type: "string", default: "127.0.0.1" },
        port: { type: "string", default: "5000" },
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
  if (values.host === "") throw new UsageError("--host must not be empty");
  if (values.duration !== undefined && values.messages !== undefined) {
    throw new UsageError("give either -d (a duration) or -m (messages per connection), not both");
  }
  const size = parseInteger("-s", values.size, 1, 16 * 1024 * 1024);
  const pipeline = parseInteger("--pipeline", values.pipeline, 1, 10_000);
  if (size * pipeline > 64 * 1024 * 1024) {
    throw new UsageError(
      `-s times --pipeline must be at most 64 MiB in flight per connection, got ${size * pipeline} bytes`,
    );
  }
  return {
    host: values.host,
    port: parseInteger("--port", values.port, 1, 65535),
    connections: parseInteger("-c", values.connections, 1, 1_000_000),
    durationSeconds: values.messages === undefined ? parseTime("-d", values.duration ?? "10s", false) : undefined,
    messagesPerConnection: values.messages === undefined ? undefined : parseInteger("-m", values.messages, 1, 1e12),
    size,
    pipeline,
    connectRate: parseInteger("--connect-rate", values["connect-rate"], 0, 10_000_000),
    warmupSeconds: parseTime("--warmup", values.warmup, true),
    timeoutSeconds: parseTime("--timeout", values.timeout, false),
    json: values.json,
  };
}

async function main(): Promise<void> {
  let config: LoadConfig | "help";
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

  // Human-readable text goes to stdout, unless --json claims stdout for the machine.
  const humanFd = config.json ? 2 : 1;
  const human = { write: (text: string) => print(humanFd, text) };
  const limits = readLimits(config.connections);
  human.write(header(config));
  human.write(limitsLine(config, limits));
  for (const problem of limits.problems) print(2, `warning: ${problem}\n`);
  human.write("\n");

  // The live line is for a person watching a terminal; piped output stays clean.
  const tty = process.stderr.isTTY === true;
  const progress = tty ? (line: string) => print(2, `\r\x1b[K${pc.dim(line)}`) : undefined;
  const run = new LoadRun(config);
  let signals = 0;
  const onSignal = (): void => {
    if (++signals > 1) process.exit(130);
    run.interrupt();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  const results = await run.run(progress);
  if (tty) print(2, "\r\x1b[K");

  human.write(textSummary(config, results));
  if (config.json) print(1, jsonSummary(config, limits, results));
  if (results.connected === 0 && results.errors.refused === config.connections) {
    print(
      2,
      `error: nothing is listening on ${formatAddress(config.host, config.port)} (every connection was refused)\n`,
    );
  }
  const failed = CLASSES.some((c) => results.errors[c] > 0);
  process.exit(failed ? 1 : 0);
}

await main();
