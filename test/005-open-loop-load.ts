#!/usr/bin/env bun
/*
 * 005 - open-loop load: a fixed rate, latency without coordinated omission, every core, pictures
 *
 * Adds:   --rate N: N messages per second in total, spread evenly over the connections, sent on a plan that
 *         does not wait for the server (open loop). 003 is closed-loop: a connection sends its next message only
 *         when the last reply is in, so when the server stalls the load generator politely stops asking, and the
 *         messages that would have waited through the stall are never sent, never timed: the stall all but
 *         vanishes from the percentiles ("coordinated omission", Gil Tene). Here message n of the run is due at
 *         start + n/N on connection n mod -c, whatever happened before, and its latency is measured from that
 *         planned moment ("corrected", as wrk2 does) and, separately, from the moment it was really written
 *         ("uncorrected", as tcpkali and 003 do); both in HDR histograms, with the send lag (written minus
 *         planned) beside them. The achieved rate is shown beside the requested one, and when the client did not
 *         keep to its plan it says what held it back: the pipeline bound (too few connections for the rate and
 *         the latency), its own event loop (CPU), or the kernel (a full socket send buffer).
 *         --workers N: N processes share the connections and the plan; their histograms and counters are merged
 *         exactly (HdrHistogram's lossless encoding; sums). Per-second series (msgs/s, p50, p99, errors), --hgrm
 *         FILE (HdrHistogram's percentile text, as wrk2 --latency prints it), --plot FILE.svg (latency by
 *         percentile on HdrHistogram's log axis, and msgs/s and p99 over time). Without --rate it is 003's closed
 *         loop, with all of the above.
 * Lacks:  arrival jitter (the plan is evenly spaced; a Poisson plan would model independent users better); a
 *         varying rate (a ramp to find the knee); sub-millisecond pacing (timers here fire about every 1.1 ms;
 *         see "How the plan is kept"); several source addresses; TLS. (The last client stage.)
 *
 * Try it: bun tcp_echo_server/005-bounded-concurrency.ts --port 5000 --log-level warn
 *         bun test/005-open-loop-load.ts --rate 20000 -c 20 -d 10 --port 5000
 *         bun test/005-open-loop-load.ts --rate 20000 -c 20 -d 10 --workers 2 --plot run.svg --hgrm run.hgrm
 *
 * The lesson, by hand: a server that freezes for 1 s in the middle of every 5 s (a GC pause, a ^Z), measured
 * closed-loop and open-loop, one after the other:
 *         bun test/support/stalling-echo.ts --port 5001 --stall-every 5 --stall-for 1
 *         bun test/003-load-generator.ts -c 10 -d 5 --port 5001
 *         bun test/005-open-loop-load.ts --rate 2000 -c 10 -d 5 --port 5001
 *         bun test/005-open-loop-load.ts --rate 2000 -c 10 -d 5 --pipeline 1000 --port 5001
 *   The closed loop reports a p99 of a millisecond or two: ten messages (one per connection) waited out the
 *   stall, among tens of thousands. At 2,000 msgs/s, 2,000 of the 10,000 planned messages fall in the stall:
 *   the corrected p99 is close to the full second (p90 about half of it), while the uncorrected p99 stays near
 *   the closed loop's: with one message in flight per connection (--pipeline 1, wrk2's model) the client held
 *   the other 1,990 back and wrote them after the stall, so their write-to-reply time was short. With room for
 *   1,000 in flight it writes them on time, and then even the uncorrected latency shows the stall: coordinated
 *   omission is the client waiting for the server, and the plan is what undoes it.
 *
 * How the plan is kept (what follows wrk2 and tcpkali, and where it departs):
 *   - The plan is a formula, not a queue: message n is due at start + n * 1e9/rate ns on connection n mod -c
 *     (the k-th message of connection j is n = k*c + j). Nothing is stored for a message before it is sent, so
 *     falling behind costs no memory, and a reply's planned time is recomputed from its number (replies come back
 *     in order: TCP is a stream and the echo keeps order). wrk2 does the same per connection
 *     (thread_start + complete / throughput, in usec_to_next_send()) and records now - that time (the
 *     "expected_latency_start" in response_complete()); its -U histogram is from the real write.
 *   - One timer, not one per message: a tick runs on the next due message's time (at least ~1.1 ms apart, Bun's
 *     timer granularity, measured) and sends everything due since the last, batched per connection into one
 *     write(); the same catch-up runs after every batch of replies, so under load sends go out between ticks.
 *     A tick costs O(messages due), or O(connections) when more are due than there are connections. A
 *     setTimeout per message would cost a timer each and still fire 1 ms late. wrk2 likewise re-arms a ms timer
 *     per connection and says its latencies are good to about +/-1 ms; the send lag row shows ours.
 *   - Messages in flight per connection are capped by --pipeline (default 1, as in wrk2, where a connection waits
 *     for its response). A message due while its connection is full waits for a reply and is then written at
 *     once, still timed from its plan. There is no catch-up rate cap (wrk2 catches up at 2x the rate, tcpkali
 *     forgives debt past 2 s): a cap would only make the plan's late messages later.
 *   - A -d run plans the messages due in its window; at the end, a message not yet written is counted as unsent
 *     (and the run says why), and every reply owed is awaited and counted, however late: dropping the late ones,
 *     as 003 and wrk do at the end of a closed-loop run, would hide a stall that falls at the very end.
 *   - Latencies are counted in a table of 100 ns steps (one increment) and folded into HDR histograms once a
 *     second, which gives the per-second series and the live p99 for the cost of a scan per second.
 *   - Workers are processes, not Bun Workers: the same throughput and CPU when measured, but in a Bun Worker
 *     process.cpuUsage() is the whole process's, so no worker could tell its own CPU (which "what held it back"
 *     needs); and the open-files limit and the heap are each process's own (docs/clients.md has the numbers).
 *     The plan is shared: worker w runs the connections j = w, w+W, ..., all starting from one wall-clock
 *     instant, so together they send exactly one plan.
 */

// Layout (new = not in 003; changed = 003's part, modified):
//   Configuration, error classes              changed: --rate, --workers, --hgrm, --plot
//   The message pool                          unchanged
//   Limits                                    changed: open files counted per worker process
//   Latency recording                         changed: per-second intervals, zero allowed (send lag)
//   The run (LoadRun)                         changed: the open-loop plan (pump, sendDue), intervals, what held it
//                                             back; the closed loop unchanged
//   Workers and merging                       new: the processes, their messages, the exact merge
//   Reporting                                 changed: corrected/uncorrected/send lag, rate kept, series, JSON
//   .hgrm and SVG                             new
//   Command line                              changed

import type { Socket, Subprocess } from "bun";
import * as hdr from "hdr-histogram-js";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, writeFileSync, writeSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { basename, dirname, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import pc from "picocolors";

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
  /** Total messages per second, open loop; undefined = closed loop. */
  rate: number | undefined;
  workers: number;
  hgrmFile: string | undefined;
  plotFile: string | undefined;
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
// Limits: can the requested connections exist at all? Each worker process has its own open-files limit; the
// ephemeral ports to one address are shared by all of them.

interface Limits {
  openFiles: number | undefined;
  openFilesInUse: number | undefined;
  ephemeralPorts: [number, number] | undefined;
  /** Plain-language reasons why the connections cannot fit; empty when they can. */
  problems: string[];
}

function readLimits(connections: number, workers: number): Limits {
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
  const perProcess = Math.ceil(connections / workers);
  if (openFiles !== undefined && openFilesInUse !== undefined && perProcess > openFiles - openFilesInUse) {
    const who = workers === 1 ? `${connections} connections need` : `${perProcess} connections per worker need`;
    problems.push(
      `${who} ${perProcess} file descriptors, but the open-files limit is ${openFiles} ` +
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
// Latency recording.

/** Latencies are kept in steps of 100 ns: 3 significant digits from 10 µs up, finer than loopback TCP ever is. */
const NS_PER_STEP = 100;

const toSteps = (nanoseconds: number): number => Math.max(1, Math.round(nanoseconds / NS_PER_STEP));

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

/**
 * Each latency is counted in a plain table indexed by its number of steps (one increment), and the table is
 * folded into an HDR histogram (one recordValueWithCount per distinct value) once a second, which closes that
 * second's interval. Recording straight into hdr-histogram-js costs about 200 ns a value in a live run (it takes a
 * log2 and a pow each time), more than all the rest of a reply's handling. Latencies past the table's 26 ms go to
 * the interval's histogram at once. `zero` allows 0 (a message written exactly on plan has no send lag).
 */
class LatencyRecorder {
  private readonly counts = new Uint32Array(1 << 18);
  private highest = 0;
  readonly interval = newHistogram();

  constructor(private readonly zero = false) {}

  record(nanoseconds: number): void {
    let steps = Math.round(nanoseconds / NS_PER_STEP);
    if (steps < 1) steps = this.zero ? 0 : 1;
    if (steps < this.counts.length) {
      this.counts[steps] = this.counts[steps]! + 1;
      if (steps > this.highest) this.highest = steps;
    } else this.interval.recordValue(steps);
  }

  /** Folds the table into `interval` and returns it; the caller reads it, then calls interval.reset(). */
  close(): hdr.Histogram {
    const counts = this.counts;
    for (let steps = 0; steps <= this.highest; steps++) {
      const count = counts[steps]!;
      if (count === 0) continue;
      this.interval.recordValueWithCount(steps, count);
      counts[steps] = 0;
    }
    this.highest = 0;
    return this.interval;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The run. One LoadRun per process: all of the connections with one worker, its share with several.

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
  /** Open loop: messages up to this one were already counted as having waited for a free pipeline slot. */
  waitCountedTo = 0;
  /** Write time of each message in flight: a ring of `pipeline` slots, the next to fill and the oldest unanswered. */
  readonly sendTimes: Float64Array;
  sendSlot = 0;
  answerSlot = 0;

  constructor(
    /** Position in the plan, 0 .. -c minus 1, across all workers; shown as `connection index+1`. */
    readonly index: number,
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

/** One second of a worker's measurement, by reply arrival (the last one also takes the replies after the window). */
interface Interval {
  second: number;
  messages: number;
  sent: number;
  errors: number;
  corrected: hdr.Histogram;
  uncorrected: hdr.Histogram;
}

/** What one LoadRun measured; several are merged exactly into one of the same shape. */
interface Results {
  elapsedSeconds: number;
  messages: number;
  /** Measured messages written, and (open loop) planned in the window but never written. */
  sent: number;
  planned: number;
  unsent: number;
  /** Of `unsent`, those planned for connections that failed (errors, not slowness). */
  unsentFailed: number;
  bytesSent: number;
  bytesReceived: number;
  latency: hdr.Histogram;
  uncorrected: hdr.Histogram;
  sendLag: hdr.Histogram;
  connectLatency: hdr.Histogram;
  /** How late the plan's timer ticks fired, beyond the delay asked for. */
  tickLag: hdr.Histogram;
  connected: number;
  errors: Record<ErrorClass, number>;
  firstError: Partial<Record<ErrorClass, string>>;
  firstMismatch: FirstMismatch | undefined;
  interrupted: boolean;
  /** CPU time over the measured window, as a fraction of one core (user, system), summed over the workers. */
  cpu: { user: number; system: number };
  /** Messages that found their connection's --pipeline slots full when due; writes the kernel took only part of. */
  pipelineWaits: number;
  shortWrites: number;
}

/** Where a LoadRun reports while it runs: to the merger in this process, or to the parent process. */
interface RunSink {
  /** Every connection has connected or failed: the run waits for start() (workers) or starts at once. */
  settled(connected: number): void;
  interval(interval: Interval): void;
}

/** Live counters for the progress line. */
interface Progress {
  phase: "connecting" | "running" | "done";
  connected: number;
  failed: number;
  live: number;
  answered: number;
  errors: number;
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

/** How many k >= 0 have lo <= k*step + offset < hi. */
function countInRange(offset: number, step: number, lo: number, hi: number): number {
  const firstK = (bound: number): number => (bound <= offset ? 0 : Math.ceil((bound - offset) / step));
  return Math.max(0, firstK(hi) - firstK(lo));
}

class LoadRun {
  private readonly lower: Buffer;
  private readonly upper: Buffer;
  /** This worker's connections, and the same by plan index (-c long; undefined where another worker's). */
  private readonly conns: Conn[] = [];
  private readonly byIndex: Array<Conn | undefined>;
  private readonly size: number;
  private readonly pipeline: number;
  private readonly timeoutNs: number;
  private readonly messageLimit: number | undefined;
  private readonly corrected = new LatencyRecorder();
  private readonly uncorrected = new LatencyRecorder();
  private readonly sendLag = new LatencyRecorder(true);
  private readonly totals = { corrected: newHistogram(), uncorrected: newHistogram() };
  private readonly connectLatency = newHistogram();
  private readonly tickLag = newHistogram();
  private readonly errors = Object.fromEntries(CLASSES.map((c) => [c, 0])) as Record<ErrorClass, number>;
  private readonly firstError: Partial<Record<ErrorClass, string>> = {};
  private firstMismatch: FirstMismatch | undefined;

  // The open-loop plan (see the header): message n is due at t0 + n * nsPerMessage on connection n % totalConns.
  private readonly openLoop: boolean;
  private readonly nsPerMessage: number;
  private readonly totalConns: number;
  private t0 = 0;
  /** Messages [0, plannedDone) are due and handed to their connections; the plan ends at plannedEnd. */
  private plannedDone = 0;
  private plannedEnd = Infinity;
  /** First message of the measured window (the ones before are warmup). */
  private firstMeasured = 0;
  private tick: Timer | undefined;
  private pipelineWaits = 0;
  private shortWrites = 0;

  private settledCount = 0; // connection attempts that connected or failed
  private allSettled = false;
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
  /** Measured messages answered and sent. */
  private measuredAnswered = 0;
  private measuredSent = 0;
  /** All messages answered, warmup included (for the progress line). */
  private answeredTotal = 0;
  /** The interval being filled: its second, when it ends, and its counts. */
  private second = 0;
  private secondEndNs = Infinity;
  private lastSecond = Infinity;
  private secondCounts = { messages: 0, sent: 0, errors: 0 };
  private finish: (() => void) | undefined;
  private readonly timers: Timer[] = [];

  constructor(
    private readonly config: LoadConfig,
    private readonly worker: { index: number; count: number },
    private readonly sink: RunSink,
  ) {
    this.size = config.size;
    this.pipeline = config.pipeline;
    this.timeoutNs = config.timeoutSeconds * 1e9;
    this.messageLimit = config.messagesPerConnection;
    this.openLoop = config.rate !== undefined;
    this.nsPerMessage = config.rate === undefined ? 0 : 1e9 / config.rate;
    this.totalConns = config.connections;
    this.byIndex = new Array(config.connections);
    ({ lower: this.lower, upper: this.upper } = buildPools(config.size, config.pipeline));
  }

  progress(): Progress {
    return {
      phase: this.trafficStarted ? (this.finish ? "running" : "done") : "connecting",
      connected: this.connected,
      failed: this.settledCount - this.connected,
      live: this.live,
      answered: this.answeredTotal,
      errors: CLASSES.reduce((sum, c) => sum + this.errors[c], 0),
    };
  }

  run(): Promise<Results> {
    return new Promise((resolve) => {
      this.finish = () => {
        for (const timer of this.timers) clearInterval(timer);
        clearTimeout(this.tick);
        if (this.trafficStarted) this.closeInterval();
        resolve(this.results());
      };
      this.timers.push(
        setInterval(() => this.sweepTimeouts(), Math.min(250, Math.max(10, this.config.timeoutSeconds * 250))),
      );
      // Closes the seconds in which no reply arrives (a stall!), which the replies themselves cannot close.
      this.timers.push(setInterval(() => this.closeIntervalsUpTo(Bun.nanoseconds()), 250));
      this.openConnections();
    });
  }

  private results(): Results {
    // A closed-loop duration run (or an interrupted one) is measured until it was told to stop, as wrk does. A -m
    // run is measured until its last reply. An open-loop run is measured over its plan's window. Zero if it never
    // got past the warmup.
    const endNs = this.stopNs > 0 ? this.stopNs : this.lastAnswerNs;
    const elapsedSeconds = this.trafficStarted ? Math.max(0, endNs - this.measureStartNs) / 1e9 : 0;
    this.cpuUsed ??= this.cpuAtMeasureStart ? process.cpuUsage(this.cpuAtMeasureStart) : undefined;
    const cpu = this.cpuUsed && elapsedSeconds > 0 ? this.cpuUsed : { user: 0, system: 0 };
    let planned = this.measuredSent;
    let unsent = 0;
    let unsentFailed = 0;
    if (this.openLoop && this.trafficStarted) {
      planned = 0;
      const C = this.totalConns;
      for (const conn of this.conns) {
        const j = conn.index;
        planned += countInRange(j, C, this.firstMeasured, this.plannedEnd);
        const owed = countInRange(j, C, Math.max(this.firstMeasured, conn.sent * C + j), this.plannedEnd);
        unsent += owed;
        if (conn.state === FAILED || conn.socket === undefined) unsentFailed += owed;
      }
    }
    return {
      elapsedSeconds,
      messages: this.measuredAnswered,
      sent: this.measuredSent,
      planned,
      unsent,
      unsentFailed,
      bytesSent: this.measuredSent * this.size,
      bytesReceived: this.measuredAnswered * this.size,
      latency: this.totals.corrected,
      uncorrected: this.openLoop ? this.totals.uncorrected : this.totals.corrected, // no plan: one latency
      sendLag: this.sendLag.close(),
      connectLatency: this.connectLatency,
      tickLag: this.tickLag,
      connected: this.connected,
      errors: this.errors,
      firstError: this.firstError,
      firstMismatch: this.firstMismatch,
      interrupted: this.interrupted,
      cpu: {
        user: elapsedSeconds > 0 ? cpu.user / 1e6 / elapsedSeconds : 0,
        system: elapsedSeconds > 0 ? cpu.system / 1e6 / elapsedSeconds : 0,
      },
      pipelineWaits: this.pipelineWaits,
      shortWrites: this.shortWrites,
    };
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
    const { index, count } = this.worker;
    const mine = Math.ceil((connections - index) / count); // plan indices index, index + count, ...
    const rate = connectRate / count; // the workers share the ramp
    const startMs = performance.now();
    const openDue = (): void => {
      const due =
        connectRate === 0 ? mine : Math.min(mine, Math.floor(((performance.now() - startMs) / 1000) * rate) + 1);
      while (this.conns.length < due && !this.interrupted) this.connect(index + this.conns.length * count);
      if (this.conns.length < mine && !this.interrupted) setTimeout(openDue, 5);
    };
    openDue();
  }

  private connect(index: number): void {
    const conn = new Conn(index, ((index + 1) * 7919) % POOL_PERIOD, this.pipeline);
    this.conns.push(conn);
    this.byIndex[index] = conn;
    conn.connectStartNs = Bun.nanoseconds();
    Bun.connect<Conn>({ hostname: this.config.host, port: this.config.port, data: conn, socket: this.handlers }).catch(
      (error: NodeJS.ErrnoException) => {
        if (conn.state !== CONNECTING) return; // already timed out
        conn.state = FAILED;
        this.settledCount++;
        const errorClass = classify(error);
        const reason =
          errorClass === "EMFILE" && error.code === "ECONNREFUSED"
            ? "no file descriptor left for a new socket (Bun reports that as ECONNREFUSED)"
            : `${error.code ?? error.message} connecting to ${formatAddress(this.config.host, this.config.port)}`;
        this.recordError(errorClass, `connection ${index + 1}: ${reason}`);
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
      this.settledCount++;
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
    if (conn.state === OPEN) this.fail(conn, "other", `connection ${conn.index + 1}: ${(error as Error).message}`);
  }

  private afterSettle(): void {
    if (this.settledCount < this.conns.length || this.conns.length < this.mine() || this.allSettled) return;
    this.allSettled = true;
    if (this.connected === 0 || this.interrupted) this.maybeFinish();
    this.sink.settled(this.connected);
  }

  private mine(): number {
    return Math.ceil((this.config.connections - this.worker.index) / this.worker.count);
  }

  /**
   * Every connection is open (or failed): traffic starts at `t0` (a Bun.nanoseconds() time, now or a little later
   * when several workers start together). The open-loop plan counts from t0 exactly, so the workers' shares of it
   * line up; the closed loop sends its first messages then.
   */
  start(t0: number): void {
    if (this.trafficStarted || this.connected === 0 || this.interrupted) return;
    const wait = (t0 - Bun.nanoseconds()) / 1e6;
    if (wait > 0) return void this.timers.push(setTimeout(() => this.startTraffic(t0), wait));
    this.startTraffic(t0);
  }

  private startTraffic(t0: number): void {
    if (this.trafficStarted || this.interrupted) return;
    this.trafficStarted = true;
    const now = Bun.nanoseconds();
    const { warmupSeconds, durationSeconds, rate } = this.config;
    this.t0 = t0;
    this.trafficStartNs = t0;
    this.measureStartNs = t0 + warmupSeconds * 1e9;
    this.second = 0;
    this.secondEndNs = this.measureStartNs + 1e9;
    // Our own CPU use over the measured window says whether we, rather than the server, could be the limit.
    if (warmupSeconds === 0) this.cpuAtMeasureStart = process.cpuUsage();
    else this.timers.push(setTimeout(() => (this.cpuAtMeasureStart = process.cpuUsage()), warmupSeconds * 1000));
    if (durationSeconds !== undefined) {
      const stopAt = this.measureStartNs + durationSeconds * 1e9;
      // The last second of the window takes the replies that arrive after it (open loop: they are all awaited).
      this.lastSecond = Math.ceil(durationSeconds - 1e-9) - 1;
      this.timers.push(setTimeout(() => this.stop(stopAt), (stopAt - now) / 1e6));
    }
    if (rate !== undefined) {
      // Message n is due at t0 + n/rate: those before the window are warmup, those from its end on are not planned.
      this.firstMeasured = Math.ceil(warmupSeconds * rate - 1e-9);
      this.plannedEnd = Math.ceil((warmupSeconds + durationSeconds!) * rate - 1e-9);
      this.onTick(now);
    } else {
      for (const conn of this.conns) {
        if (conn.state === OPEN) this.send(conn, this.pipeline, now);
      }
    }
    this.maybeFinish(); // every connection that opened may have failed already: then there is nothing to wait for
  }

  // ---- The open-loop plan ---------------------------------------------------------------------------------------

  /** The timer tick: send what is due, then sleep until the next message is due (at least one timer step). */
  private onTick(scheduledFor: number): void {
    const now = Bun.nanoseconds();
    if (now > scheduledFor) this.tickLag.recordValue(toSteps(now - scheduledFor));
    this.pump(now);
    if (this.stopping || this.plannedDone >= this.plannedEnd) return;
    const nextDue = this.t0 + this.plannedDone * this.nsPerMessage;
    const delayMs = Math.max(0, (nextDue - now) / 1e6);
    // A timer fires no sooner than ~1 ms: its lag is counted from max(due, now + 1 ms), what was asked of it.
    const expected = Math.max(nextDue, now + 1e6);
    this.tick = setTimeout(() => this.onTick(expected), delayMs);
  }

  /** Hands every message due by `now` (and not yet handed out) to its connection. */
  private pump(now: number): void {
    if (this.stopping) return;
    let planned = Math.floor((now - this.t0) / this.nsPerMessage) + 1;
    if (planned > this.plannedEnd) planned = this.plannedEnd;
    const from = this.plannedDone;
    if (planned <= from) return;
    this.plannedDone = planned;
    const C = this.totalConns;
    if (planned - from >= C) {
      for (const conn of this.conns) this.sendDue(conn, now);
      return;
    }
    // Fewer due than connections: visit only their connections (each at most once), in plan order.
    let index = from % C;
    for (let n = from; n < planned; n++) {
      const conn = this.byIndex[index];
      if (conn !== undefined) this.sendDue(conn, now);
      if (++index === C) index = 0;
    }
  }

  /** Writes the messages of `conn` that are due, as many as its free pipeline slots allow, in one write(). */
  private sendDue(conn: Conn, now: number): void {
    if (conn.state !== OPEN || this.stopping) return;
    const C = this.totalConns;
    const j = conn.index;
    const due = this.plannedDone > j ? Math.floor((this.plannedDone - 1 - j) / C) + 1 : 0;
    const backlog = due - conn.sent;
    if (backlog <= 0) return;
    const free = this.pipeline - conn.outstanding;
    if (backlog > free && due > conn.waitCountedTo) {
      // These messages are due and their connection is full: the pipeline bound holds them back.
      this.pipelineWaits += due - Math.max(conn.waitCountedTo, conn.sent + Math.max(0, free));
      conn.waitCountedTo = due;
    }
    const count = backlog < free ? backlog : free;
    if (count <= 0) return;
    const times = conn.sendTimes;
    let n = conn.sent * C + j;
    let measured = 0;
    for (let i = 0; i < count; i++, n += C) {
      times[conn.sendSlot] = now;
      if (++conn.sendSlot === this.pipeline) conn.sendSlot = 0;
      if (n >= this.firstMeasured) {
        this.sendLag.record(now - (this.t0 + n * this.nsPerMessage));
        measured++;
      }
    }
    conn.sent += count;
    conn.outstanding += count;
    conn.queuedBytes += count * this.size;
    conn.measuredSent += measured;
    this.measuredSent += measured;
    if (now >= this.measureStartNs) this.secondCounts.sent += measured;
    this.flush(conn);
  }

  // ---- The closed loop (003's) ------------------------------------------------------------------------------------

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
      this.secondCounts.sent += count;
    }
    this.flush(conn);
  }

  // ---- Both ---------------------------------------------------------------------------------------------------------

  /** write() takes what the kernel accepts now; the rest stays queued (a range of the pool) until `drain`. */
  private flush(conn: Conn): void {
    if (conn.queuedBytes === 0 || conn.state !== OPEN) return;
    const written = conn.socket!.write(this.lower, conn.writePos, conn.queuedBytes);
    if (written <= 0) {
      if (written === 0) this.shortWrites++;
      return; // full (drain will call again) or closed (close will report)
    }
    if (written < conn.queuedBytes) this.shortWrites++;
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
    if (now >= this.secondEndNs) this.closeIntervalsUpTo(now);
    let completed = 0;
    const C = this.totalConns;
    while (conn.partial >= this.size) {
      conn.partial -= this.size;
      const sentAt = conn.sendTimes[conn.answerSlot]!;
      if (++conn.answerSlot === this.pipeline) conn.answerSlot = 0;
      if (this.openLoop) {
        const n = conn.answered * C + conn.index; // its number in the plan: replies come back in order
        if (n >= this.firstMeasured) {
          this.corrected.record(now - (this.t0 + n * this.nsPerMessage));
          this.uncorrected.record(now - sentAt);
          this.measuredAnswered++;
          this.secondCounts.messages++;
        }
      } else if (sentAt >= this.measureStartNs && !this.stopping) {
        this.corrected.record(now - sentAt);
        this.measuredAnswered++;
        this.secondCounts.messages++;
        this.lastAnswerNs = now;
      }
      conn.answered++;
      completed++;
    }
    conn.outstanding -= completed;
    this.answeredTotal += completed;
    if (!this.openLoop) return this.send(conn, completed, now);
    if (this.stopping) {
      if (conn.outstanding === 0) this.end(conn);
      return;
    }
    this.pump(now); // the plan's catch-up between timer ticks
    this.sendDue(conn, now); // and this connection's messages that waited for a free slot
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
    const number = conn.index + 1;
    if (index >= checked) {
      const extra = chunk.length - checked;
      const bytes = `${extra} reply byte${extra === 1 ? "" : "s"}`;
      const detail =
        `connection ${number}: ${bytes} more than requested, ` +
        `from stream offset ${streamOffset}: got ${describeByte(got)}`;
      this.firstMismatch ??= { connection: number, message, offset, streamOffset, expected: -1, got };
      this.fail(conn, "mismatch", detail);
      return;
    }
    const expected = this.upper[conn.readPos + index]!;
    this.firstMismatch ??= { connection: number, message, offset, streamOffset, expected, got };
    const where =
      `connection ${number}, message ${message}, ` + `byte ${offset} of ${this.size} (stream offset ${streamOffset})`;
    const detail = `${where}: got ${describeByte(got)}, expected ${describeByte(expected)}`;
    this.fail(conn, "mismatch", detail);
  }

  private onPeerClosed(conn: Conn, error: Error | undefined): void {
    if (conn.state !== OPEN) return; // we ended it, or it already failed
    const number = conn.index + 1;
    if (error) {
      const code = (error as NodeJS.ErrnoException).code ?? error.message;
      this.fail(
        conn,
        classify(error as NodeJS.ErrnoException),
        `connection ${number}: ${code} after ${conn.received} reply bytes`,
      );
      return;
    }
    const owed = conn.outstanding > 0 ? `with ${conn.outstanding} replies owed` : "before the run ended";
    this.fail(conn, "closed", `connection ${number}: closed by the server after ${conn.received} reply bytes, ${owed}`);
  }

  private sweepTimeouts(): void {
    const now = Bun.nanoseconds();
    for (const conn of this.conns) {
      if (conn.state === CONNECTING && now - conn.connectStartNs > this.timeoutNs) {
        conn.state = FAILED;
        this.settledCount++;
        const detail = `connection ${conn.index + 1}: not connected after ${this.config.timeoutSeconds} s`;
        this.recordError("timeout", detail);
        this.afterSettle();
      } else if (conn.state === OPEN && conn.outstanding > 0) {
        const oldest = conn.sendTimes[conn.answerSlot]!;
        if (now - oldest > this.timeoutNs) {
          const detail =
            `connection ${conn.index + 1}: no complete reply to message ${conn.answered + 1} ` +
            `after ${this.config.timeoutSeconds} s (${conn.partial} of ${this.size} bytes)`;
          this.fail(conn, "timeout", detail);
        }
      }
    }
  }

  /**
   * Duration over (at `stopAt`, the planned end, however late the timer fired) or Ctrl-C (now): no new messages;
   * each connection closes once its replies are in.
   */
  private stop(stopAt?: number): void {
    if (this.stopping) return;
    const now = Bun.nanoseconds();
    if (this.openLoop) {
      if (stopAt === undefined)
        this.plannedEnd = Math.min(this.plannedEnd, Math.floor((now - this.t0) / this.nsPerMessage) + 1);
      this.pump(now); // the last messages of the plan (pump never plans past plannedEnd)
    }
    this.stopping = true;
    // The closed loop counts replies until it is told to stop (as 003); the plan's window ends where planned.
    this.stopNs = this.openLoop ? (stopAt ?? now) : now;
    if (this.cpuAtMeasureStart) this.cpuUsed = process.cpuUsage(this.cpuAtMeasureStart);
    for (const conn of this.conns) if (conn.state === OPEN && conn.outstanding === 0) this.end(conn);
    this.maybeFinish();
  }

  private end(conn: Conn): void {
    const wasLive = conn.state === OPEN;
    if (conn.state === CONNECTING) this.settledCount++;
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
    if (Bun.nanoseconds() >= this.measureStartNs) this.secondCounts.errors++;
  }

  private maybeFinish(): void {
    if (this.live > 0 || this.settledCount < this.conns.length) return;
    if (this.conns.length < this.mine() && !this.interrupted) return; // still ramping up
    const finish = this.finish;
    this.finish = undefined;
    finish?.();
  }

  // ---- Per-second intervals ------------------------------------------------------------------------------------

  /** Closes every second that ended by `now` (the last second of the window stays open for the late replies). */
  private closeIntervalsUpTo(now: number): void {
    while (now >= this.secondEndNs && this.second < this.lastSecond) {
      this.closeInterval();
      this.second++;
      this.secondEndNs += 1e9;
    }
  }

  private closeInterval(): void {
    const corrected = this.corrected.close();
    const uncorrected = this.openLoop ? this.uncorrected.close() : corrected;
    this.totals.corrected.add(corrected);
    if (this.openLoop) this.totals.uncorrected.add(uncorrected);
    this.sink.interval({ second: this.second, ...this.secondCounts, corrected, uncorrected });
    corrected.reset();
    uncorrected.reset();
    this.secondCounts = { messages: 0, sent: 0, errors: 0 };
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Workers and merging. With --workers N the parent spawns this file N times as worker processes (an environment
// variable says which); each runs a LoadRun on its share of the connections and talks to the parent over Bun's IPC
// channel. Histograms travel in HdrHistogram's compressed encoding, which is lossless: merging the decoded
// histograms with add() sums their counts exactly.

const WORKER_ENV = "OPEN_LOOP_LOAD_WORKER";

/** What a worker is told at spawn (in its environment, as JSON), and then over IPC. */
interface WorkerSetup {
  config: LoadConfig;
  index: number;
  count: number;
}

type ToWorker = { type: "start"; atEpochMs: number } | { type: "interrupt" };

interface EncodedInterval {
  second: number;
  messages: number;
  sent: number;
  errors: number;
  corrected: string;
  uncorrected: string;
}

type EncodedResults = Omit<Results, "latency" | "uncorrected" | "sendLag" | "connectLatency" | "tickLag"> & {
  latency: string;
  uncorrected: string;
  sendLag: string;
  connectLatency: string;
  tickLag: string;
};

type FromWorker =
  | { type: "settled"; connected: number }
  | { type: "interval"; interval: EncodedInterval }
  | { type: "progress"; progress: Progress }
  | { type: "results"; results: EncodedResults; pid: number };

const encode = (histogram: hdr.Histogram): string => hdr.encodeIntoCompressedBase64(histogram);
const decode = (base64: string): hdr.Histogram => hdr.decodeFromCompressedBase64(base64, 32, false);

function encodeResults(results: Results): EncodedResults {
  return {
    ...results,
    latency: encode(results.latency),
    uncorrected: encode(results.uncorrected),
    sendLag: encode(results.sendLag),
    connectLatency: encode(results.connectLatency),
    tickLag: encode(results.tickLag),
  };
}

function decodeResults(results: EncodedResults): Results {
  return {
    ...results,
    latency: decode(results.latency),
    uncorrected: decode(results.uncorrected),
    sendLag: decode(results.sendLag),
    connectLatency: decode(results.connectLatency),
    tickLag: decode(results.tickLag),
  };
}

/** A wall-clock instant (ms since the epoch) as this process's Bun.nanoseconds(): both clocks run from one start. */
const epochMsToLocalNs = (epochMs: number): number => (epochMs - performance.timeOrigin) * 1e6;

/** A worker process: the child side. Runs until its LoadRun finishes, then sends its results and exits. */
async function workerMain(): Promise<void> {
  const send = (message: FromWorker): void => void process.send!(message);
  const { config, index, count } = JSON.parse(process.env[WORKER_ENV]!) as WorkerSetup;
  const run = new LoadRun(
    config,
    { index, count },
    {
      settled: (connected) => send({ type: "settled", connected }),
      interval: (interval) =>
        send({
          type: "interval",
          interval: { ...interval, corrected: encode(interval.corrected), uncorrected: encode(interval.uncorrected) },
        }),
    },
  );
  process.on("message", (message: ToWorker) => {
    if (message.type === "start") run.start(epochMsToLocalNs(message.atEpochMs));
    else if (message.type === "interrupt") run.interrupt();
  });
  // The terminal's Ctrl-C reaches the whole process group: each worker stops itself, as the parent does.
  process.on("SIGINT", () => run.interrupt());
  process.on("SIGTERM", () => run.interrupt());
  const progress = setInterval(() => send({ type: "progress", progress: run.progress() }), 500);
  const results = await run.run();
  clearInterval(progress);
  const last: FromWorker = { type: "results", results: encodeResults(results), pid: process.pid };
  // Disconnecting at once would drop a message still being written (seen with 2 MB): wait for this one's callback.
  process.send!(last, undefined, undefined, () => {
    process.disconnect?.();
    process.exit(0);
  });
}

/** Collects the intervals and results of every worker (or of the one run in this process) and merges them. */
class Merger {
  private readonly seconds = new Map<
    number,
    { messages: number; sent: number; errors: number; corrected: hdr.Histogram; uncorrected: hdr.Histogram }
  >();
  /** Corrected latency of every closed interval so far: the live p99. */
  readonly soFar = newHistogram();
  readonly progress: Progress[];

  constructor(workers: number) {
    this.progress = Array.from({ length: workers }, () => ({
      phase: "connecting" as const,
      connected: 0,
      failed: 0,
      live: 0,
      answered: 0,
      errors: 0,
    }));
  }

  addInterval(interval: Interval): void {
    let slot = this.seconds.get(interval.second);
    if (slot === undefined) {
      slot = { messages: 0, sent: 0, errors: 0, corrected: newHistogram(), uncorrected: newHistogram() };
      this.seconds.set(interval.second, slot);
    }
    slot.messages += interval.messages;
    slot.sent += interval.sent;
    slot.errors += interval.errors;
    slot.corrected.add(interval.corrected);
    slot.uncorrected.add(interval.uncorrected);
    this.soFar.add(interval.corrected);
  }

  series(elapsedSeconds: number): SeriesPoint[] {
    const last = Math.max(-1, ...this.seconds.keys());
    const points: SeriesPoint[] = [];
    for (let second = 0; second <= last; second++) {
      const slot = this.seconds.get(second);
      // The last second of the window may be a fraction of one (a -d 2.5 run).
      const length = Math.min(1, Math.max(elapsedSeconds - second, 0)) || 1;
      const p = (histogram: hdr.Histogram | undefined, percentile: number): number =>
        histogram === undefined || histogram.totalCount === 0 ? 0 : microseconds(histogram, percentile);
      points.push({
        second,
        messagesPerSecond: (slot?.messages ?? 0) / length,
        sentPerSecond: (slot?.sent ?? 0) / length,
        p50: p(slot?.corrected, 50),
        p99: p(slot?.corrected, 99),
        uncorrectedP99: p(slot?.uncorrected, 99),
        errors: slot?.errors ?? 0,
      });
    }
    return points;
  }

  merge(parts: Results[]): Results {
    const sum = (pick: (r: Results) => number): number => parts.reduce((total, r) => total + pick(r), 0);
    const histogram = (pick: (r: Results) => hdr.Histogram): hdr.Histogram => {
      const merged = newHistogram();
      for (const part of parts) merged.add(pick(part));
      return merged;
    };
    const errors = Object.fromEntries(CLASSES.map((c) => [c, sum((r) => r.errors[c])])) as Record<ErrorClass, number>;
    const firstError: Partial<Record<ErrorClass, string>> = {};
    for (const c of CLASSES) {
      const first = parts.find((r) => r.firstError[c] !== undefined)?.firstError[c];
      if (first !== undefined) firstError[c] = first;
    }
    return {
      elapsedSeconds: Math.max(0, ...parts.map((r) => r.elapsedSeconds)),
      messages: sum((r) => r.messages),
      sent: sum((r) => r.sent),
      planned: sum((r) => r.planned),
      unsent: sum((r) => r.unsent),
      unsentFailed: sum((r) => r.unsentFailed),
      bytesSent: sum((r) => r.bytesSent),
      bytesReceived: sum((r) => r.bytesReceived),
      latency: histogram((r) => r.latency),
      uncorrected: histogram((r) => r.uncorrected),
      sendLag: histogram((r) => r.sendLag),
      connectLatency: histogram((r) => r.connectLatency),
      tickLag: histogram((r) => r.tickLag),
      connected: sum((r) => r.connected),
      errors,
      firstError,
      firstMismatch: parts.find((r) => r.firstMismatch !== undefined)?.firstMismatch,
      interrupted: parts.some((r) => r.interrupted),
      cpu: { user: sum((r) => r.cpu.user), system: sum((r) => r.cpu.system) },
      pipelineWaits: sum((r) => r.pipelineWaits),
      shortWrites: sum((r) => r.shortWrites),
    };
  }
}

interface SeriesPoint {
  second: number;
  messagesPerSecond: number;
  sentPerSecond: number;
  p50: number;
  p99: number;
  uncorrectedP99: number;
  errors: number;
}

/** What a whole run produced: the merged results, each worker's own, and the per-second series. */
interface Outcome {
  results: Results;
  parts: Array<{ pid: number; results: Results }>;
  series: SeriesPoint[];
}

/** Runs the load in this process (one worker), or in `workers` child processes, and merges what they measured. */
async function runLoad(config: LoadConfig, progressLine: ((merger: Merger) => void) | undefined): Promise<Outcome> {
  const merger = new Merger(config.workers);
  const ticker = progressLine ? setInterval(() => progressLine(merger), 1000) : undefined;
  let interrupt: () => void;
  let signals = 0;
  const onSignal = (): void => {
    if (++signals > 1) process.exit(130);
    interrupt();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    if (config.workers === 1) {
      const run = new LoadRun(
        config,
        { index: 0, count: 1 },
        {
          settled: () => run.start(Bun.nanoseconds()),
          interval: (interval) => merger.addInterval(interval),
        },
      );
      interrupt = () => run.interrupt();
      const live = setInterval(() => (merger.progress[0] = run.progress()), 250);
      const results = await run.run();
      clearInterval(live);
      const merged = merger.merge([results]);
      return { results: merged, parts: [{ pid: process.pid, results }], series: merger.series(merged.elapsedSeconds) };
    }
    const parts: Array<{ pid: number; results: Results } | undefined> = new Array(config.workers);
    const children: Subprocess[] = [];
    let settled = 0;
    // A worker whose connections all failed has finished, and exited, on its own: tell only the living.
    const tellAll = (message: ToWorker): void => {
      for (const child of children) if (child.exitCode === null && child.signalCode === null) child.send(message);
    };
    interrupt = () => tellAll({ type: "interrupt" });
    const killAll = (): void => {
      for (const child of children) child.kill("SIGKILL");
    };
    process.on("exit", killAll);
    const done = Array.from({ length: config.workers }, (_, index) => {
      const { promise, resolve } = Promise.withResolvers<void>();
      // A compiled executable (`bun build --compile`) is this program itself and takes no script path.
      const self = Bun.isStandaloneExecutable ? [process.execPath] : [process.execPath, import.meta.path];
      const child = Bun.spawn(self, {
        env: {
          ...process.env,
          [WORKER_ENV]: JSON.stringify({ config, index, count: config.workers } satisfies WorkerSetup),
        },
        stdio: ["ignore", "inherit", "inherit"],
        serialization: "json",
        ipc(message: FromWorker) {
          switch (message.type) {
            case "settled":
              // All workers connected: all start at one wall-clock instant, a little ahead, so that they share
              // one plan (the message to each takes a moment).
              if (++settled === config.workers) {
                const atEpochMs = performance.timeOrigin + performance.now() + 20;
                tellAll({ type: "start", atEpochMs });
              }
              break;
            case "interval":
              merger.addInterval({
                ...message.interval,
                corrected: decode(message.interval.corrected),
                uncorrected: decode(message.interval.uncorrected),
              });
              break;
            case "progress":
              merger.progress[index] = message.progress;
              break;
            case "results":
              parts[index] = { pid: message.pid, results: decodeResults(message.results) };
              resolve();
              break;
          }
        },
      });
      children.push(child);
      void child.exited.then((code) => {
        if (parts[index] === undefined) {
          print(2, `error: worker ${index + 1} exited with ${code} before reporting its results\n`);
          killAll();
          process.exit(1);
        }
      });
      return promise;
    });
    await Promise.all(done);
    await Promise.all(children.map((child) => child.exited));
    process.off("exit", killAll);
    const complete = parts as Array<{ pid: number; results: Results }>;
    const merged = merger.merge(complete.map((part) => part.results));
    return { results: merged, parts: complete, series: merger.series(merged.elapsedSeconds) };
  } finally {
    clearInterval(ticker);
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
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

/** A percentile in microseconds (3 significant digits, as recorded), capped at the exact maximum. */
function microseconds(histogram: hdr.Histogram, percentile: number): number {
  // A percentile is reported as the top of its bucket, which can lie above the exact maximum: cap it there.
  const steps = Math.min(histogram.getValueAtPercentile(percentile), histogram.maxValue);
  return Number(((steps * NS_PER_STEP) / 1000).toFixed(3));
}

/** Percentiles in microseconds (3 significant digits, as recorded). */
function summarise(histogram: hdr.Histogram): LatencySummary {
  const us = (steps: number): number => Number(((steps * NS_PER_STEP) / 1000).toFixed(3));
  const empty = histogram.totalCount === 0;
  const at = (percentile: number): number => (empty ? 0 : microseconds(histogram, percentile));
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
  const loop =
    config.rate === undefined
      ? "closed loop (each connection sends when its replies are in)"
      : `open loop at ${formatCount(config.rate)} msgs/s ` +
        `(${formatCount(Number((config.rate / config.connections).toPrecision(4)))}/s per connection)`;
  const workers = config.workers === 1 ? "" : `, ${config.workers} worker processes`;
  return (
    `Running ${length} @ ${formatAddress(config.host, config.port)}\n` +
    `  ${config.connections} connection${config.connections === 1 ? "" : "s"}, ${config.size}-byte messages, ` +
    `pipeline ${config.pipeline}, connecting ${ramp}, ` +
    `warmup ${formatSeconds(config.warmupSeconds)}, timeout ${formatSeconds(config.timeoutSeconds)}\n` +
    `  ${loop}${workers}\n`
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

/**
 * Did the client keep to its plan, and if not, what held it back? Only the shortfall on connections that stayed
 * up counts: messages a failed connection never sent are its error's doing. Empty when it kept up.
 */
function heldBack(config: LoadConfig, outcome: Outcome): string[] {
  const { results } = outcome;
  if (config.rate === undefined || results.planned === 0) return [];
  const unsent = results.unsent - results.unsentFailed;
  const lag = summarise(results.sendLag);
  // Up to a couple of timer steps of lag is the timer's granularity, not falling behind.
  const lagging = lag.p99 > 10_000;
  if (unsent === 0 && !lagging) return [];
  const reasons: string[] = [];
  const perConnection = config.rate / config.connections;
  if (results.pipelineWaits > 0) {
    // Little's law: messages in flight = rate x latency. Is the bound too tight for the server's usual latency, or
    // did the server only stall at times (then the corrected latency has already counted the wait)?
    const latencySeconds = summarise(results.uncorrected).p50 / 1e6;
    const needed = perConnection * latencySeconds;
    const steady =
      `${formatCount(Number(perConnection.toPrecision(4)))}/s per connection x ${formatNs(latencySeconds * 1e9)} ` +
      `(p50) = ${Number(needed.toPrecision(2))} in flight per connection`;
    const waits = `${formatCount(results.pipelineWaits)} messages found their connection's ${config.pipeline} slot${
      config.pipeline === 1 ? "" : "s"
    } full when due`;
    reasons.push(
      needed >= config.pipeline * 0.5
        ? `too few connections for the rate and the latency: ${waits}; the plan needs ${steady}, and --pipeline ` +
            `allows ${config.pipeline}: raise --pipeline or -c`
        : `the server was slow at times: ${waits}, though ${steady} is within --pipeline ${config.pipeline}; ` +
            "the corrected latency counts their wait (raise --pipeline to write them on time anyway)",
    );
  }
  const busiest = Math.max(...outcome.parts.map((part) => part.results.cpu.user + part.results.cpu.system));
  const tick = summarise(results.tickLag);
  const ticks = `its timer ticks fired up to ${formatNs(tick.p99 * 1000)} late (p99; max ${formatNs(tick.max * 1000)})`;
  if (busiest >= 0.9) {
    reasons.push(
      `the client's event loop: the busiest worker used ${Math.round(busiest * 100)}% of a core and ${ticks}. ` +
        "Add --workers (each is a process with its own loop), or lower --rate",
    );
  } else if (tick.p99 > 5_000 || tick.max > 20_000) {
    reasons.push(
      `the machine: ${ticks} while the busiest worker used only ${Math.round(busiest * 100)}% of a core, so it ` +
        `waited for a CPU (load average ${loadavg()[0]!.toFixed(1)} on ${cpus().length} cores) or for garbage ` +
        "collection",
    );
  }
  if (results.shortWrites > 0) {
    reasons.push(
      `the kernel: ${formatCount(results.shortWrites)} writes found the socket send buffer full, so bytes waited ` +
        "in the client: the server (or the path to it) did not read as fast as the plan sent",
    );
  }
  if (reasons.length === 0) reasons.push("nothing the client measured (not its pipeline, CPU or send buffers)");
  const sentShare = ((results.sent / results.planned) * 100).toFixed(1);
  return [
    `the client did not keep to its plan: it wrote ${formatCount(results.sent)} of ${formatCount(results.planned)} ` +
      `planned messages (${sentShare}%), ${formatNs(lag.p99 * 1000)} behind plan at p99 ` +
      `(max ${formatNs(lag.max * 1000)}). What held it back:`,
    ...reasons,
  ];
}

function textSummary(config: LoadConfig, outcome: Outcome): string {
  const { results } = outcome;
  const open = config.rate !== undefined;
  const connect = summarise(results.connectLatency);
  const mib = (bytes: number): string => (bytes / 1048576).toFixed(2);
  const perSecond = (n: number): number => (results.elapsedSeconds > 0 ? n / results.elapsedSeconds : 0);
  const col = (text: string): string => text.padStart(10);
  const row = (name: string, s: LatencySummary): string => {
    const cells = [s.p50, s.p90, s.p99, s.p99_9, s.max, s.mean].map((us) =>
      col(s.count === 0 ? "-" : formatNs(us * 1000)),
    );
    return `    ${name.padEnd(12)}${cells.join("")}\n`;
  };
  const totalErrors = CLASSES.reduce((sum, c) => sum + results.errors[c], 0);
  let text =
    `  ${"Latency".padEnd(14)}${["p50", "p90", "p99", "p99.9", "max", "mean"].map((h) => h.padStart(10)).join("")}\n` +
    (open
      ? row("corrected", summarise(results.latency)) +
        row("uncorrected", summarise(results.uncorrected)) +
        row("send lag", summarise(results.sendLag))
      : row("reply", summarise(results.latency))) +
    row("connect", connect) +
    (open
      ? "    (corrected: from the planned send time; uncorrected: from the write; send lag: between the two)\n"
      : "") +
    "\n" +
    `  ${formatCount(results.messages)} messages in ${results.elapsedSeconds.toFixed(2)}s` +
    `${results.messages > 0 ? ", each reply checked byte for byte" : ""}\n` +
    `  Messages/sec: ${perSecond(results.messages).toFixed(2)}\n`;
  if (open) {
    const share = config.rate! > 0 ? (perSecond(results.messages) / config.rate!) * 100 : 0;
    text +=
      `  Requested:    ${config.rate!.toFixed(2)} msgs/s; achieved ${share.toFixed(1)}%; ` +
      `written ${formatCount(results.sent)} of ${formatCount(results.planned)} planned` +
      `${results.unsent > 0 ? ` (${formatCount(results.unsent)} never written)` : ""}\n`;
  }
  text +=
    `  Sent:         ${mib(results.bytesSent)} MiB, ${mib(perSecond(results.bytesSent))} MiB/s\n` +
    `  Received:     ${mib(results.bytesReceived)} MiB, ${mib(perSecond(results.bytesReceived))} MiB/s\n` +
    `  Connections:  ${results.connected} of ${config.connections} connected\n` +
    `  Client CPU:   ${cpuText(results.cpu)}\n`;
  if (config.workers > 1) {
    const each = outcome.parts.map((p) => `${Math.round((p.results.cpu.user + p.results.cpu.system) * 100)}%`);
    text += `  Workers:      ${config.workers} processes, ${each.join(", ")} of a core each\n`;
  }
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
 * Share of one core this process used while measuring (summed over the workers, so it can pass 100%). On loopback
 * much of it is "system": the kernel's TCP work for both ends is charged to whichever process is running, so read
 * it next to the server's, not alone.
 */
function cpuText(cpu: { user: number; system: number }): string {
  const percent = (x: number): string => `${Math.round(x * 100)}%`;
  return `${percent(cpu.user + cpu.system)} of one core (user ${percent(cpu.user)}, system ${percent(cpu.system)})`;
}

function jsonSummary(config: LoadConfig, limits: Limits, outcome: Outcome, held: string[]): string {
  const { results } = outcome;
  const perSecond = (n: number): number => (results.elapsedSeconds > 0 ? n / results.elapsedSeconds : 0);
  const open = config.rate !== undefined;
  const total = (errors: Record<ErrorClass, number>): number => CLASSES.reduce((sum, c) => sum + errors[c], 0);
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
        rate: config.rate ?? null,
        workers: config.workers,
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
      requestedRate: config.rate ?? null,
      planned: open ? results.planned : null,
      sent: results.sent,
      sentPerSecond: perSecond(results.sent),
      unsent: open ? results.unsent : null,
      keptUp: open ? held.length === 0 : null,
      heldBack: held,
      bytesSent: results.bytesSent,
      bytesReceived: results.bytesReceived,
      sentMiBPerSecond: perSecond(results.bytesSent) / 1048576,
      receivedMiBPerSecond: perSecond(results.bytesReceived) / 1048576,
      latencyMicroseconds: summarise(results.latency),
      uncorrectedLatencyMicroseconds: summarise(results.uncorrected),
      sendLagMicroseconds: open ? summarise(results.sendLag) : null,
      connectLatencyMicroseconds: summarise(results.connectLatency),
      connected: results.connected,
      clientCpu: { user: results.cpu.user, system: results.cpu.system, total: results.cpu.user + results.cpu.system },
      client: {
        pipelineWaits: results.pipelineWaits,
        shortWrites: results.shortWrites,
        tickLagMicroseconds: summarise(results.tickLag),
      },
      errors: { ...results.errors, total: total(results.errors) },
      firstErrors: results.firstError,
      firstMismatch: results.firstMismatch ?? null,
      interrupted: results.interrupted,
      series: outcome.series,
      histogramUnitNanoseconds: NS_PER_STEP,
      latencyHistogram: encode(results.latency),
      uncorrectedLatencyHistogram: encode(results.uncorrected),
      workers: outcome.parts.map(({ pid, results: part }) => ({
        pid,
        connected: part.connected,
        messages: part.messages,
        sent: part.sent,
        planned: part.planned,
        errors: total(part.errors),
        clientCpu: part.cpu.user + part.cpu.system,
        latencyHistogram: encode(part.latency),
        uncorrectedLatencyHistogram: encode(part.uncorrected),
      })),
    },
    null,
    2,
  )}\n`;
}

// ---------------------------------------------------------------------------------------------------------------
// .hgrm and SVG.

/**
 * HdrHistogram's percentile distribution text (the .hgrm that wrk2 --latency prints and HdrHistogram's plotter
 * reads): Value, Percentile, TotalCount, 1/(1-Percentile), 5 ticks per half distance, values in milliseconds,
 * then the Mean/StdDeviation, Max/Total count, Buckets/SubBuckets footer.
 */
function hgrm(histogram: hdr.Histogram): string {
  return histogram.outputPercentileDistribution(5, 1e6 / NS_PER_STEP);
}

/** The (percentile, milliseconds) points of the distribution, as the .hgrm lists them (without the final inf). */
function percentilePoints(histogram: hdr.Histogram): Array<{ percentile: number; ms: number }> {
  const points: Array<{ percentile: number; ms: number }> = [];
  for (const line of hgrm(histogram).split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields.length !== 4 || !/^[\d.]+$/.test(fields[0]!) || fields[3] === "inf") continue;
    points.push({ ms: Number(fields[0]), percentile: Number(fields[1]) });
  }
  return points;
}

const escapeXml = (text: string): string =>
  text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll('"', "&quot;");

/** A round step for an axis from 0 to `max` with about 5 ticks. */
function niceStep(max: number): number {
  const raw = max / 5;
  const power = 10 ** Math.floor(Math.log10(raw || 1));
  const unit = raw / power;
  return (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10) * power;
}

/**
 * Two panels. Left: latency by percentile, x on HdrHistogram's axis (log10 of 1/(1-p): 90% is 1, 99% is 2, ...),
 * corrected and uncorrected. Right: messages per second and p99 over time (by second of reply arrival).
 */
function plot(config: LoadConfig, outcome: Outcome): string {
  const { results, series } = outcome;
  const width = 1040;
  const height = 490;
  const panel = { top: 85, height: 280, width: 400 };
  const left = { x: 70 };
  const right = { x: 570 };
  const out: string[] = [];
  const colours = { corrected: "#c0392b", uncorrected: "#2e86c1", rate: "#7f8c8d", requested: "#27ae60" };
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
      `font-family="sans-serif" font-size="12">`,
  );
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  const title =
    config.rate === undefined
      ? `Closed loop, ${config.connections} connections, ${config.size}-byte messages`
      : `Open loop at ${formatCount(config.rate)} msgs/s, ${config.connections} connections, ` +
        `pipeline ${config.pipeline}, ${config.size}-byte messages`;
  out.push(`<text x="10" y="22" font-size="16" font-weight="bold">${escapeXml(title)}</text>`);
  out.push(
    `<text x="10" y="42" fill="#555">${escapeXml(
      `${formatAddress(config.host, config.port)}, ${formatCount(results.messages)} replies in ` +
        `${results.elapsedSeconds.toFixed(2)} s, ${config.workers} worker${config.workers === 1 ? "" : "s"}`,
    )}</text>`,
  );

  // Left panel: latency by percentile.
  const curves = [
    { name: config.rate === undefined ? "closed loop" : "corrected", points: percentilePoints(results.latency) },
    ...(config.rate === undefined ? [] : [{ name: "uncorrected", points: percentilePoints(results.uncorrected) }]),
  ];
  const nines = (p: number): number => Math.log10(1 / (1 - Math.min(p, 0.999999)));
  const maxNines = Math.max(
    2,
    Math.ceil(Math.max(0, ...curves.flatMap((c) => c.points.map((p) => nines(p.percentile))))),
  );
  const maxMs = Math.max(0.001, ...curves.flatMap((c) => c.points.map((p) => p.ms))) * 1.05;
  const x1 = (p: number): number => left.x + (nines(p) / maxNines) * panel.width;
  const y1 = (ms: number): number => panel.top + panel.height - (ms / maxMs) * panel.height;
  out.push(`<g id="percentile-panel">`);
  out.push(
    `<text x="${left.x + panel.width / 2}" y="${panel.top - 8}" text-anchor="middle" font-weight="bold">` +
      "Latency by percentile</text>",
  );
  const yStep = niceStep(maxMs);
  for (let ms = 0; ms <= maxMs; ms += yStep) {
    const y = y1(ms).toFixed(1);
    out.push(`<line x1="${left.x}" y1="${y}" x2="${left.x + panel.width}" y2="${y}" stroke="#eee"/>`);
    out.push(`<text x="${left.x - 6}" y="${y}" text-anchor="end" dy="4">${Number(ms.toPrecision(3))}</text>`);
  }
  for (let k = 0; k <= maxNines; k++) {
    const x = (left.x + (k / maxNines) * panel.width).toFixed(1);
    const label = k === 0 ? "0%" : `${(100 - 100 / 10 ** k).toFixed(Math.max(0, k - 2))}%`;
    out.push(`<line x1="${x}" y1="${panel.top}" x2="${x}" y2="${panel.top + panel.height}" stroke="#eee"/>`);
    out.push(`<text x="${x}" y="${panel.top + panel.height + 16}" text-anchor="middle">${label}</text>`);
  }
  out.push(
    `<text x="${left.x + panel.width / 2}" y="${panel.top + panel.height + 34}" text-anchor="middle" fill="#555">` +
      "percentile (log scale of 1/(1-p), as HdrHistogram plots)</text>",
  );
  out.push(
    `<text x="${left.x - 50}" y="${panel.top + panel.height / 2}" fill="#555" text-anchor="middle" ` +
      `transform="rotate(-90 ${left.x - 50} ${panel.top + panel.height / 2})">latency (ms)</text>`,
  );
  curves.forEach((curve, i) => {
    const colour = i === 0 ? colours.corrected : colours.uncorrected;
    const d = curve.points
      .map((p, n) => `${n === 0 ? "M" : "L"}${x1(p.percentile).toFixed(1)},${y1(p.ms).toFixed(1)}`)
      .join(" ");
    if (d !== "") out.push(`<path class="latency" d="${d}" fill="none" stroke="${colour}" stroke-width="2"/>`);
    const ly = panel.top + 14 + i * 16;
    out.push(`<rect x="${left.x + 10}" y="${ly - 9}" width="12" height="3" fill="${colour}"/>`);
    out.push(`<text x="${left.x + 28}" y="${ly}">${escapeXml(curve.name)}</text>`);
  });
  out.push("</g>");

  // Right panel: msgs/s (left axis) and p99 (right axis) per second.
  const seconds = Math.max(1, series.length);
  const maxRate = Math.max(1, config.rate ?? 0, ...series.map((s) => s.messagesPerSecond)) * 1.1;
  const maxP99 = Math.max(0.001, ...series.map((s) => s.p99 / 1000)) * 1.1;
  const x2 = (second: number): number => right.x + (second / seconds) * panel.width;
  const yRate = (rate: number): number => panel.top + panel.height - (rate / maxRate) * panel.height;
  const yP99 = (ms: number): number => panel.top + panel.height - (ms / maxP99) * panel.height;
  out.push(`<g id="time-panel">`);
  out.push(
    `<text x="${right.x + panel.width / 2}" y="${panel.top - 8}" text-anchor="middle" font-weight="bold">` +
      "Messages per second and p99, each second</text>",
  );
  const rateStep = niceStep(maxRate);
  for (let rate = 0; rate <= maxRate; rate += rateStep) {
    const y = yRate(rate).toFixed(1);
    out.push(`<line x1="${right.x}" y1="${y}" x2="${right.x + panel.width}" y2="${y}" stroke="#eee"/>`);
    out.push(`<text x="${right.x - 6}" y="${y}" text-anchor="end" dy="4">${formatCount(Math.round(rate))}</text>`);
  }
  const p99Step = niceStep(maxP99);
  for (let ms = 0; ms <= maxP99; ms += p99Step) {
    out.push(
      `<text x="${right.x + panel.width + 6}" y="${yP99(ms).toFixed(1)}" dy="4" fill="${colours.corrected}">` +
        `${Number(ms.toPrecision(3))}</text>`,
    );
  }
  const axisX = right.x + panel.width + 50;
  const axisY = panel.top + panel.height / 2;
  out.push(
    `<text x="${axisX}" y="${axisY}" fill="${colours.corrected}" text-anchor="middle" ` +
      `transform="rotate(90 ${axisX} ${axisY})">p99 (ms)</text>`,
  );
  const secondStep = Math.max(1, Math.ceil(seconds / 10));
  for (let second = 0; second <= seconds; second += secondStep) {
    out.push(
      `<text x="${x2(second).toFixed(1)}" y="${panel.top + panel.height + 16}" text-anchor="middle">${second}</text>`,
    );
  }
  out.push(
    `<text x="${right.x + panel.width / 2}" y="${panel.top + panel.height + 34}" text-anchor="middle" fill="#555">` +
      "seconds (replies by arrival)</text>",
  );
  const barWidth = panel.width / seconds;
  for (const point of series) {
    const y = yRate(point.messagesPerSecond);
    out.push(
      `<rect class="rate" x="${(x2(point.second) + 1).toFixed(1)}" y="${y.toFixed(1)}" ` +
        `width="${Math.max(1, barWidth - 2).toFixed(1)}" height="${(panel.top + panel.height - y).toFixed(1)}" ` +
        `fill="${colours.rate}" fill-opacity="0.5"/>`,
    );
  }
  if (config.rate !== undefined) {
    const y = yRate(config.rate).toFixed(1);
    out.push(
      `<line x1="${right.x}" y1="${y}" x2="${right.x + panel.width}" y2="${y}" stroke="${colours.requested}" ` +
        `stroke-dasharray="6 4"/>`,
    );
  }
  const p99Path = series
    .map((s, n) => `${n === 0 ? "M" : "L"}${x2(s.second + 0.5).toFixed(1)},${yP99(s.p99 / 1000).toFixed(1)}`)
    .join(" ");
  if (p99Path !== "") {
    out.push(`<path class="p99" d="${p99Path}" fill="none" stroke="${colours.corrected}" stroke-width="2"/>`);
  }
  const legend = [
    { colour: colours.rate, text: "msgs/s (left axis)" },
    ...(config.rate === undefined ? [] : [{ colour: colours.requested, text: "requested rate" }]),
    { colour: colours.corrected, text: `p99 ${config.rate === undefined ? "" : "corrected "}(ms, right axis)` },
  ];
  legend.forEach((entry, i) => {
    const ly = panel.top + panel.height + 56 + i * 16;
    out.push(`<rect x="${right.x}" y="${ly - 9}" width="12" height="10" fill="${entry.colour}"/>`);
    out.push(`<text x="${right.x + 18}" y="${ly}">${escapeXml(entry.text)}</text>`);
  });
  out.push("</g>");
  out.push("</svg>");
  return `${out.join("\n")}\n`;
}

// ---------------------------------------------------------------------------------------------------------------
// Command line.

// The usage line names the command as it was started, so renaming or copying the stage changes nothing here:
// `bun PATH` for this file, or the name it was built under (`bun run build`: an executable or an installed command).
const THIS_COMMAND = import.meta.path.endsWith(".ts")
  ? `bun ${relative(process.cwd(), import.meta.path)}`
  : basename(import.meta.path);

const HELP = `Usage: ${THIS_COMMAND} [options]

Request/response load that verifies every reply byte for byte against the uppercase of the request. With
--rate, open loop: messages go out on a fixed plan whatever the server does, and latency is measured from
each message's planned send time (corrected for coordinated omission) as well as from its actual write.
Without --rate, closed loop as test/003-load-generator.ts. Exit code 0 if there was no error, 1 otherwise.

Options:
  --rate N               open loop: N messages per second in total, spread over the connections (-d only)
  -c, --connections N    connections (default 10)
  -d, --duration TIME    measured run time: 10, 10s, 500ms, 2m (default 10s; not with -m)
  -m, --messages N       closed loop: measured messages per connection, instead of a duration
  -s, --size BYTES       bytes per message (default 64)
  --pipeline N           most messages in flight per connection (default 1)
  --workers N            processes sharing the connections, results merged exactly (default 1)
  --connect-rate N       new connections per second, 0 = all at once (default 5000)
  --warmup TIME          traffic before measuring starts, not counted (default 0)
  --timeout TIME         time allowed to connect, and for each reply (default 5s)
  --host HOST            server address (default 127.0.0.1)
  --port PORT            server port (default 5000)
  --json                 JSON results on stdout (the text summary goes to stderr)
  --hgrm FILE            write the latency percentile distribution (HdrHistogram .hgrm text, ms)
  --plot FILE            write an SVG: latency by percentile, and msgs/s and p99 over time
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

/** An output file: its folder must exist now, rather than the run failing to save at the end. */
function parseOutputFile(name: string, text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  if (text === "" || !existsSync(dirname(resolve(text)))) {
    throw new UsageError(`${name} needs a file in an existing folder, got "${text}"`);
  }
  return text;
}

function parseConfig(argv: string[]): LoadConfig | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        rate: { type: "string" },
        connections: { type: "string", short: "c", default: "10" },
        duration: { type: "string", short: "d" },
        messages: { type: "string", short: "m" },
        size: { type: "string", short: "s", default: "64" },
        pipeline: { type: "string", default: "1" },
        workers: { type: "string", default: "1" },
        "connect-rate": { type: "string", default: "5000" },
        warmup: { type: "string", default: "0" },
        timeout: { type: "string", default: "5s" },
        host: { type: "string", default: "127.0.0.1" },
        port: { type: "string", default: "5000" },
        json: { type: "boolean", default: false },
        hgrm: { type: "string" },
        plot: { type: "string" },
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
  if (values.rate !== undefined && values.messages !== undefined) {
    throw new UsageError("--rate plans messages over a duration: give -d, not -m");
  }
  const size = parseInteger("-s", values.size, 1, 16 * 1024 * 1024);
  const pipeline = parseInteger("--pipeline", values.pipeline, 1, 10_000);
  if (size * pipeline > 64 * 1024 * 1024) {
    throw new UsageError(
      `-s times --pipeline must be at most 64 MiB in flight per connection, got ${size * pipeline} bytes`,
    );
  }
  const connections = parseInteger("-c", values.connections, 1, 1_000_000);
  const workers = parseInteger("--workers", values.workers, 1, 64);
  if (workers > connections) throw new UsageError(`--workers (${workers}) must not exceed -c (${connections})`);
  return {
    host: values.host,
    port: parseInteger("--port", values.port, 1, 65535),
    connections,
    durationSeconds: values.messages === undefined ? parseTime("-d", values.duration ?? "10s", false) : undefined,
    messagesPerConnection: values.messages === undefined ? undefined : parseInteger("-m", values.messages, 1, 1e12),
    size,
    pipeline,
    connectRate: parseInteger("--connect-rate", values["connect-rate"], 0, 10_000_000),
    warmupSeconds: parseTime("--warmup", values.warmup, true),
    timeoutSeconds: parseTime("--timeout", values.timeout, false),
    json: values.json,
    rate: values.rate === undefined ? undefined : parseInteger("--rate", values.rate, 1, 100_000_000),
    workers,
    hgrmFile: parseOutputFile("--hgrm", values.hgrm),
    plotFile: parseOutputFile("--plot", values.plot),
  };
}

function progressText(config: LoadConfig, merger: Merger, startMs: number): string {
  const parts = merger.progress;
  const sum = (pick: (p: Progress) => number): number => parts.reduce((total, p) => total + pick(p), 0);
  if (parts.some((p) => p.phase === "connecting")) {
    return `connecting: ${sum((p) => p.connected)} open, ${sum((p) => p.failed)} failed, of ${config.connections}`;
  }
  const seconds = (performance.now() - startMs) / 1000;
  const answered = sum((p) => p.answered);
  const rate = seconds > 0 ? answered / seconds : 0;
  const of = config.rate === undefined ? "" : ` of ${formatCount(config.rate)}`;
  const p99 = merger.soFar.totalCount === 0 ? "-" : formatNs(microseconds(merger.soFar, 99) * 1000);
  return (
    `${seconds.toFixed(1)}s  ${formatCount(answered)} msgs  ${formatCount(Math.round(rate))}${of} msgs/s  ` +
    `p99 ${p99}  ${sum((p) => p.live)} connections  ${sum((p) => p.errors)} errors`
  );
}

function save(file: string, text: string): void {
  try {
    writeFileSync(file, text);
  } catch (error) {
    print(2, `error: cannot write ${file}: ${(error as Error).message}\n`);
    process.exitCode = 1;
  }
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
  const limits = readLimits(config.connections, config.workers);
  human.write(header(config));
  human.write(limitsLine(config, limits));
  for (const problem of limits.problems) print(2, `warning: ${problem}\n`);
  human.write("\n");

  // The live line is for a person watching a terminal; piped output stays clean.
  const tty = process.stderr.isTTY === true;
  let trafficStartMs = 0;
  const progress = tty
    ? (merger: Merger) => {
        if (trafficStartMs === 0 && merger.progress.every((p) => p.phase !== "connecting")) {
          trafficStartMs = performance.now();
        }
        print(2, `\r\x1b[K${pc.dim(progressText(config, merger, trafficStartMs || performance.now()))}`);
      }
    : undefined;
  const outcome = await runLoad(config, progress);
  if (tty) print(2, "\r\x1b[K");

  const { results } = outcome;
  const held = heldBack(config, outcome);
  human.write(textSummary(config, outcome));
  if (held.length > 0)
    print(
      2,
      `warning: ${held[0]}\n${held
        .slice(1)
        .map((reason) => `  - ${reason}\n`)
        .join("")}`,
    );
  if (config.json) print(1, jsonSummary(config, limits, outcome, held));
  if (config.hgrmFile !== undefined) save(config.hgrmFile, hgrm(results.latency));
  if (config.plotFile !== undefined) save(config.plotFile, plot(config, outcome));
  if (results.connected === 0 && results.errors.refused === config.connections) {
    print(
      2,
      `error: nothing is listening on ${formatAddress(config.host, config.port)} (every connection was refused)\n`,
    );
  }
  const failed = CLASSES.some((c) => results.errors[c] > 0);
  process.exit(failed ? 1 : (process.exitCode ?? 0));
}

if (process.env[WORKER_ENV] !== undefined) await workerMain();
else await main();
