#!/usr/bin/env bun
/*
 * 015 - behind a load balancer: the PROXY protocol
 *
 * Adds:   behind a TCP load balancer (HAProxy, nginx's stream module, this project's proxy with --send-proxy-v2, a
 *         cloud balancer) every client seems to come from the balancer: the logs and --max-per-ip would see one
 *         address. With --accept-proxy (ACCEPT_PROXY=1) each connection must start with a PROXY header, v1 (one
 *         text line, "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n") or v2 (binary), which the balancer
 *         writes before the client's bytes: the address it carries is the client's, for the log lines and the
 *         per-address limit, and the header itself is not echoed. Admission waits for it. Strict, as a server
 *         that trusts the balancer must be: a connection whose header is missing, malformed or not complete
 *         within --idle-timeout is closed with a log line and counted (refused, reason proxy-header), since a
 *         client allowed to write its own header could claim any address. A v2 LOCAL header (the balancer's own
 *         health check) keeps the socket's address, and a connection that closes before a single byte (a TCP
 *         probe) is let go quietly. Off by default: only behind a balancer that sends it.
 * Lacks:  TLVs of v2 (the balancer's TLS details, a unique id) are skipped, not read. One exact global count for
 *         the limits (see 011); a replaced worker's own counters start from 0 (012). The last echo stage:
 *         docs/echo-deployable.md says what was left alone, and why.
 *
 * Try it: bun tcp_echo_server/015-behind-a-balancer.ts --port 5000 --workers 1 --accept-proxy
 *         printf 'PROXY TCP4 192.168.0.1 192.168.0.11 56324 5000\r\nhello' | nc -N 127.0.0.1 5000   -> HELLO,
 *             and the log says "serving 192.168.0.1"
 *         printf 'hello' | nc -N 127.0.0.1 5000      -> nothing: no header, closed, logged
 *         in front of it: bun tcp_proxy/014-dns-discovery.ts --port 6000 --upstream 127.0.0.1:5000 --send-proxy-v2
 *
 * Layout: as in 014, except where marked:
 *         Logger; EchoServerConfig          new: acceptProxy
 *         toUpperAsciiInPlace; socket options; BATCH_BYTES; LINGER_MS; clientsAllowedByFdLimit
 *         Client                            new: header (the bytes of a PROXY header so far)
 *         REFUSAL_REASONS                   new: proxy-header
 *         Counters, DrainReport, ToWorker, FromWorker
 *         EchoServer
 *           onOpen                          with --accept-proxy, admission waits for the header
 *           readHeader, refuseHeader        new: the header first, then the echo of what follows it
 *           onData                          hands bytes to readHeader until the header is read
 *           onEnd, onIdle                   a header the stream or the clock ends first
 *         WorkerSlot; Supervisor; emptyCounters, addCounters, renderMetrics
 *         PROXY protocol                    new: parseIp, formatIp, parseProxyHeader (as in tcp_proxy/008)
 *         helpers, HELP, ENVIRONMENT, DEFAULTS, parseConfig   new: --accept-proxy [ACCEPT_PROXY]
 *         workerMain; main
 */

import type { Socket, Subprocess, TCPSocketListener } from "bun";
import { dlopen, FFIType, ptr } from "bun:ffi";
import { readdirSync, readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { parseArgs } from "node:util";
import pc from "picocolors";
import { basename, relative } from "node:path";

const LEVELS = ["debug", "info", "warn", "error"] as const;
type Level = (typeof LEVELS)[number];
const LOG_FORMATS = ["text", "json"] as const;
type LogFormat = (typeof LOG_FORMATS)[number];

const LEVEL_COLOURS: Record<Level, (text: string) => string> = {
  debug: pc.dim,
  info: pc.green,
  warn: pc.yellow,
  error: pc.red,
};

/**
 * Timestamped, levelled log lines on stderr; stdout is kept for the machine-readable listening line. Each line
 * says which process wrote it (the supervisor or worker N), which connection it is about, and how many clients
 * that worker serves. As JSON (one object a line) with --log-format json, for log collectors.
 */
class Logger {
  private readonly threshold: number;

  constructor(
    level: Level,
    private readonly format: LogFormat,
    /** Worker index, or undefined for the supervisor. */
    private readonly worker: number | undefined,
    private readonly activeClients: () => [active: number, limit: number] | undefined = () => undefined,
  ) {
    this.threshold = LEVELS.indexOf(level);
  }

  enabled(level: Level): boolean {
    return LEVELS.indexOf(level) >= this.threshold;
  }

  private write(level: Level, message: string, connId?: number): void {
    if (LEVELS.indexOf(level) < this.threshold) return;
    const time = new Date().toISOString();
    const active = this.activeClients();
    if (this.format === "json") {
      const line: Record<string, unknown> = { time, level, pid: process.pid, worker: this.worker ?? null };
      if (connId !== undefined) line.conn = connId;
      if (active !== undefined) [line.active, line.limit] = active;
      line.msg = message;
      process.stderr.write(`${JSON.stringify(line)}\n`);
      return;
    }
    const label = LEVEL_COLOURS[level](level.toUpperCase().padEnd(5));
    const process_ = this.worker === undefined ? "supervisor" : `worker ${this.worker}`;
    const who = connId === undefined ? process_ : `${process_} conn ${connId}`;
    const where = active === undefined ? who : `${who} | active ${active[0]}/${active[1]}`;
    process.stderr.write(`${pc.dim(time)} ${label} ${pc.cyan(`[${where}]`)} ${message}\n`);
  }

  debug(message: string, connId?: number): void {
    this.write("debug", message, connId);
  }
  info(message: string, connId?: number): void {
    this.write("info", message, connId);
  }
  warn(message: string, connId?: number): void {
    this.write("warn", message, connId);
  }
  error(message: string, connId?: number): void {
    this.write("error", message, connId);
  }
}

interface EchoServerConfig {
  host: string;
  port: number;
  logLevel: Level;
  logFormat: LogFormat;
  workers: number;
  maxClients: number;
  /** Connections allowed from one remote address; 0 = no per-address limit. */
  maxPerIp: number;
  /** Bytes of unsent reply a client may have queued before its reading is paused. */
  maxBuffer: number;
  /** Seconds a client may stay silent; 0 disables the timeout. */
  idleTimeout: number;
  /** Seconds a graceful shutdown may take before the remaining clients are cut. */
  drainTimeout: number;
  /** Port of the Prometheus endpoint (0 = a free one); undefined = no metrics. */
  metricsPort: number | undefined;
  /** Address of the Prometheus endpoint: loopback unless asked, whatever --host is. */
  metricsHost: string;
  /** Every connection starts with a PROXY header (v1 or v2) from the balancer in front: the client's address. */
  acceptProxy: boolean;
}

// Bytes, not strings: a reply must be exactly as long as the request whatever the client sends. The chunk Bun
// hands to `data` is a fresh buffer of our own, so it is uppercased in place and sent back: no copy. Four bytes at a
// time (SWAR, "SIMD within a register"): for each byte with the top bit clear, adding 0x1f sets bit 7 iff it is
// >= 0x61 ('a'), adding 0x05 sets bit 7 iff it is >= 0x7b (past 'z'); no byte can carry into the next. The bytes
// that are 'a'..'z' get 0x80 in the mask, and subtracting mask >>> 2 (0x20 each) uppercases exactly those.
// About 4x faster than the byte loop of 009 on chunks of a few KiB and more (0.26 against 1.0 ns a byte here);
// below SWAR_MIN_BYTES making the 32-bit view costs more than it saves, and the plain loop (in place) is used.
const SWAR_MIN_BYTES = 256;

function toUpperAsciiInPlace(bytes: Uint8Array): Uint8Array {
  const length = bytes.length;
  let i = 0;
  if (length < SWAR_MIN_BYTES) {
    for (; i < length; i++) {
      const byte = bytes[i]!;
      if ((byte - 0x61) >>> 0 < 26) bytes[i] = byte - 0x20;
    }
    return bytes;
  }
  const unaligned = (4 - (bytes.byteOffset & 3)) & 3; // 32-bit views must start on a multiple of 4
  for (; i < unaligned && i < length; i++) {
    const byte = bytes[i]!;
    if ((byte - 0x61) >>> 0 < 26) bytes[i] = byte - 0x20;
  }
  const words = (length - i) >>> 2;
  if (words > 0) {
    // Int32Array, not Uint32Array: a word read from a Uint32Array is above 2^31 half the time, and the JIT then
    // carries it as a double; int32 words stay integers (15% faster here). The sums below wrap the same either way.
    const view = new Int32Array(bytes.buffer, bytes.byteOffset + i, words);
    for (let w = 0; w < words; w++) {
      const word = view[w]!;
      const low7 = word & 0x7f7f7f7f;
      const lowercase = (low7 + 0x1f1f1f1f) & ~(low7 + 0x05050505) & ~word & 0x80808080;
      view[w] = word - (lowercase >>> 2);
    }
    i += words * 4;
  }
  for (; i < length; i++) {
    const byte = bytes[i]!;
    if ((byte - 0x61) >>> 0 < 26) bytes[i] = byte - 0x20;
  }
  return bytes;
}

// Linux values of the constants getsockopt() takes (from <sys/socket.h> and <netinet/tcp.h>).
const SOL_SOCKET = 1;
const IPPROTO_TCP = 6;
const SOCKET_OPTIONS: ReadonlyArray<[name: string, level: number, option: number]> = [
  ["SO_REUSEADDR", SOL_SOCKET, 2],
  ["SO_REUSEPORT", SOL_SOCKET, 15],
  ["SO_KEEPALIVE", SOL_SOCKET, 9],
  ["SO_RCVBUF", SOL_SOCKET, 8],
  ["SO_SNDBUF", SOL_SOCKET, 7],
  ["SO_ACCEPTCONN", SOL_SOCKET, 30],
  ["TCP_NODELAY", IPPROTO_TCP, 1],
];

/** Bun sockets expose their file descriptor, but the typings do not say so. */
type WithFd = { fd?: number };

/** Queued reply chunks are merged into writes of up to this many bytes (bigger ones go out as they are). */
const BATCH_BYTES = 64 * 1024;

/** How long a draining server waits for a client to close after its FIN (Apache's lingering close waits 2 s). */
const LINGER_MS = 2000;

/** File descriptors kept free for the server itself (listener, stdio, event loop, a log file, a DNS lookup...). */
const RESERVED_FDS = 32;

/**
 * How many client sockets fit under the process's open-files limit (RLIMIT_NOFILE, which Bun raises to the hard
 * limit at start), leaving room for what is already open and a reserve. Undefined where /proc does not tell.
 */
function clientsAllowedByFdLimit(): { limit: number; allowed: number } | undefined {
  try {
    const line = readFileSync("/proc/self/limits", "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max open files"));
    const soft = line?.split(/\s{2,}/)[1];
    if (soft === undefined || soft === "unlimited") return undefined;
    const limit = Number(soft);
    const open = readdirSync("/proc/self/fd").length;
    return { limit, allowed: Math.max(1, limit - open - RESERVED_FDS) };
  } catch {
    return undefined;
  }
}

/** Per-client state, assigned in `open` (the listen-level `data` object would be shared by every socket). */
interface Client {
  id: number;
  ip: string;
  /** Counted in the limits; false for a refused client. */
  admitted: boolean;
  /** Reply bytes the kernel has not taken yet, oldest first: sent on `drain`, never dropped or reordered. */
  queue: Uint8Array[];
  queued: number;
  /** Reading is paused because the queue went over --max-buffer. */
  paused: boolean;
  /** The client sent FIN: close once the queue is flushed. */
  peerEnded: boolean;
  /** Graceful shutdown began: no more echoing, FIN once the queue is flushed. */
  draining: boolean;
  finSent: boolean;
  /** Closed by us at the drain deadline (or on a second signal) with replies still owed. */
  cut: boolean;
  idleTimer: Timer | undefined;
  /** After our FIN in a drain: how long we keep reading (and discarding) before closing anyway. */
  lingerTimer: Timer | undefined;
  /** With --accept-proxy, the PROXY header's bytes so far; undefined once it has been read (or without it). */
  header: Uint8Array | undefined;
  bytesIn: number;
  bytesOut: number;
  closed: boolean;
}

const REFUSAL_REASONS = ["max-clients", "max-per-ip", "shutting-down", "proxy-header"] as const;
type RefusalReason = (typeof REFUSAL_REASONS)[number];

/** What a worker counts; the supervisor sums them over the workers for the metrics endpoint. */
interface Counters {
  connectionsActive: number;
  connectionsTotal: number;
  refused: Record<RefusalReason, number>;
  receivedBytes: number;
  sentBytes: number;
  errors: number;
  queuedBytes: number;
}

/** A worker's totals when it stops, for the supervisor's closing line. */
interface DrainReport {
  drained: number;
  cut: number;
  discarded: number;
  served: number;
  refused: number;
  receivedBytes: number;
  sentBytes: number;
}

/** Messages between the supervisor and its workers (over the IPC channel Bun.spawn opens). */
type ToWorker = { type: "metrics"; seq: number } | { type: "drain"; signal: string } | { type: "cut"; signal: string };
type FromWorker =
  | { type: "listening"; port: number }
  | { type: "failed"; reason: string }
  | { type: "metrics"; seq: number; counters: Counters }
  | { type: "stopped"; report: DrainReport };

class EchoServer {
  readonly host: string;
  readonly port: number;
  readonly maxClients: number;
  readonly maxPerIp: number;
  readonly acceptProxy: boolean;
  readonly maxBuffer: number;
  readonly idleTimeout: number;
  readonly drainTimeout: number;
  /** "share " when the limits are this worker's share of the configured ones. */
  private readonly share: string;
  private readonly log: Logger;
  /** Checked on every chunk, so a disabled debug level costs no string building. */
  private readonly debug: boolean;
  private listener: TCPSocketListener<Client> | undefined;
  private nextId = 1;
  /** Every admitted connection: the limits count them, shutdown drains them. */
  private readonly clients = new Set<Socket<Client>>();
  private readonly perIp = new Map<string, number>();
  private stopping = false;
  private drainDeadline: Timer | undefined;
  private readonly totals = { served: 0, bytesIn: 0, bytesOut: 0, drained: 0, cut: 0, discarded: 0, errors: 0 };
  private readonly refused: Record<RefusalReason, number> = {
    "max-clients": 0,
    "max-per-ip": 0,
    "shutting-down": 0,
    "proxy-header": 0,
  };

  constructor(
    config: EchoServerConfig,
    readonly worker: number,
    private readonly onStopped: (report: DrainReport) => void,
  ) {
    this.host = config.host;
    this.port = config.port;
    this.maxPerIp = config.maxPerIp;
    this.acceptProxy = config.acceptProxy;
    this.maxBuffer = config.maxBuffer;
    this.idleTimeout = config.idleTimeout;
    this.drainTimeout = config.drainTimeout;
    this.share = config.workers > 1 ? "share " : "";
    this.log = new Logger(config.logLevel, config.logFormat, worker, () => [this.clients.size, this.maxClients]);
    this.debug = this.log.enabled("debug");
    // Past the open-files limit accept() fails with EMFILE, and Bun then stops accepting and spins a core until
    // descriptors free up: better to refuse clients below the limit, cleanly, and say why.
    const fds = clientsAllowedByFdLimit();
    this.maxClients = fds === undefined ? config.maxClients : Math.min(config.maxClients, fds.allowed);
    if (fds !== undefined && config.maxClients > fds.allowed) {
      this.log.warn(
        `--max-clients ${this.share}${config.maxClients} does not fit under the open-files limit of ${fds.limit}: ` +
          `serving at most ${fds.allowed} clients at once (raise it with ulimit -n)`,
      );
    }
  }

  /**
   * Reads the options of the socket behind file descriptor `fd` with libc getsockopt(). Returns an empty object
   * where that is not possible (not Linux, no libc), so callers can log "unavailable" instead of failing.
   */
  static getSocketOptions(fd: number): Record<string, number> {
    if (process.platform !== "linux") return {};
    let libc;
    try {
      libc = dlopen("libc.so.6", {
        getsockopt: {
          args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr],
          returns: FFIType.i32,
        },
      });
    } catch {
      return {};
    }
    try {
      const options: Record<string, number> = {};
      const value = new Int32Array(1);
      const length = new Uint32Array(1);
      for (const [name, level, option] of SOCKET_OPTIONS) {
        length[0] = value.byteLength;
        if (libc.symbols.getsockopt(fd, level, option, ptr(value), ptr(length)) === 0) options[name] = value[0]!;
      }
      return options;
    } finally {
      libc.close();
    }
  }

  /** Binds and starts accepting; returns the port actually bound (useful with --port 0). */
  start(): number {
    const options: Bun.TCPSocketListenOptions<Client> & { reusePort: boolean } = {
      hostname: this.host,
      port: this.port,
      // Every worker binds the same port; the kernel hands each new connection to one of them.
      reusePort: true,
      // We close after the queue is flushed; by default Bun would close as soon as the client's FIN arrives.
      allowHalfOpen: true,
      socket: {
        open: (socket) => this.onOpen(socket),
        data: (socket, data) => this.onData(socket, data),
        drain: (socket) => this.flush(socket),
        end: (socket) => this.onEnd(socket),
        close: (socket, error) => this.onClose(socket, error),
        error: (socket, error) => this.onHandlerError(socket, error),
      },
    }; // reusePort works on Bun.listen, but its typings only declare it for Bun.connect
    const listener = Bun.listen<Client>(options);
    this.listener = listener;
    const perIp = this.maxPerIp > 0 ? `${this.maxPerIp} per address` : "no per-address limit";
    this.log.info(
      `listening on ${formatAddress(this.host, listener.port)} (pid ${process.pid}; ` +
        `at most ${this.maxClients} clients at once, ${perIp}, ` +
        `${formatBytes(this.maxBuffer)} reply queue per client, ` +
        `idle timeout ${this.idleTimeout ? `${this.idleTimeout} s` : "off"}, drain timeout ${this.drainTimeout} s)`,
    );
    this.log.debug(`listening socket options: ${formatOptions((listener as WithFd).fd)}`);
    return listener.port;
  }

  private onOpen(socket: Socket<Client>): void {
    socket.data = {
      id: this.nextId++,
      ip: peerAddress(socket),
      admitted: false,
      queue: [],
      queued: 0,
      paused: false,
      peerEnded: false,
      draining: false,
      finSent: false,
      cut: false,
      idleTimer: undefined,
      lingerTimer: undefined,
      header: this.acceptProxy ? new Uint8Array(0) : undefined,
      bytesIn: 0,
      bytesOut: 0,
      closed: false,
    };
    // Reading the options loads libc (about 10 us a client, more than echoing a message): only for debug lines.
    if (this.debug) this.log.debug(`socket options: ${formatOptions((socket as WithFd).fd)}`, socket.data.id);
    if (!this.acceptProxy) return this.handleConn(socket);
    // Admission waits for the header, which says who the client is; it has --idle-timeout to come.
    if (this.idleTimeout > 0) socket.data.idleTimer = setTimeout(() => this.onIdle(socket), this.idleTimeout * 1000);
  }

  /**
   * --accept-proxy: collects the PROXY header, then admits the client under the address it gives and echoes what
   * came after it. Anything else first (no header, a malformed one) closes the connection, with a log line.
   */
  private readHeader(socket: Socket<Client>, data: Uint8Array): void {
    const client = socket.data;
    const bytes = Buffer.concat([client.header!, data]);
    const parsed = parseProxyHeader(bytes);
    if (parsed.status === "incomplete") {
      client.header = bytes;
      return;
    }
    client.header = undefined;
    clearTimeout(client.idleTimer);
    if (parsed.status === "invalid") return this.refuseHeader(socket, parsed.reason);
    if (parsed.source) client.ip = formatIp(parsed.source.ip);
    this.handleConn(socket);
    const rest = bytes.subarray(parsed.length);
    if (client.admitted && rest.length > 0) this.onData(socket, rest);
  }

  private refuseHeader(socket: Socket<Client>, reason: string): void {
    this.refused["proxy-header"]++;
    this.log.warn(`closing: bad PROXY header: ${reason}`, socket.data.id);
    socket.end();
  }

  /**
   * Admits a connection, or refuses it (closes at once) when a limit is reached: nobody waits in a queue. 005's
   * semaphore held the clients over its limit, each on an open file descriptor, answering nothing for as long as
   * the queue ahead of them: an unbounded waiting room that hides overload. A refusal is seen at once.
   */
  private handleConn(socket: Socket<Client>): void {
    const client = socket.data;
    const fromIp = this.perIp.get(client.ip) ?? 0;
    let reason: RefusalReason | undefined;
    let refusal = "";
    if (this.stopping) {
      reason = "shutting-down";
      refusal = "shutting down";
    } else if (this.clients.size >= this.maxClients) {
      reason = "max-clients";
      refusal = `${this.clients.size} clients connected, the limit (--max-clients ${this.share}${this.maxClients})`;
    } else if (this.maxPerIp > 0 && fromIp >= this.maxPerIp) {
      reason = "max-per-ip";
      const where = this.share ? " in this worker" : "";
      refusal = `${fromIp} connections from this address, the limit (--max-per-ip ${this.maxPerIp}${where})`;
    }
    if (reason !== undefined) {
      this.refused[reason]++;
      this.log.warn(`refused ${client.ip}: ${refusal}`, client.id);
      socket.end();
      return;
    }
    client.admitted = true;
    this.clients.add(socket);
    this.perIp.set(client.ip, fromIp + 1);
    this.totals.served++;
    if (this.idleTimeout > 0) client.idleTimer = setTimeout(() => this.onIdle(socket), this.idleTimeout * 1000);
    this.log.info(`serving ${client.ip}`, client.id);
  }

  // The loop: Bun calls this for every chunk a client sends, for as long as its connection is open and not paused.
  private onData(socket: Socket<Client>, data: Uint8Array): void {
    const client = socket.data;
    if (client.header !== undefined) return this.readHeader(socket, data);
    if (client.draining) {
      // Shutting down: the replies owed before the signal go out, requests that arrive after it are dropped.
      this.totals.discarded += data.length;
      return;
    }
    client.bytesIn += data.length;
    this.totals.bytesIn += data.length;
    if (this.debug) this.log.debug(`received ${data.length} bytes`, client.id);
    client.idleTimer?.refresh(); // activity: start the idle clock again
    this.send(socket, toUpperAsciiInPlace(data));
  }

  /** Writes what the kernel takes now and queues the rest; pauses reading while the queue is over --max-buffer. */
  private send(socket: Socket<Client>, reply: Uint8Array): void {
    const client = socket.data;
    let rest = reply;
    if (client.queued === 0) {
      const written = socket.write(reply);
      if (written > 0) this.countSent(client, written);
      if (written === reply.length) return;
      if (written < 0) return; // the connection is gone; `close` cleans up
      rest = reply.subarray(written);
    }
    client.queue.push(rest); // behind older bytes: order is kept
    client.queued += rest.length;
    if (client.queued > this.maxBuffer && !client.paused) {
      client.paused = true;
      socket.pause();
      if (this.debug)
        this.log.debug(`reply queue at ${client.queued} bytes, over --max-buffer: pausing its reading`, client.id);
    }
  }

  /**
   * Hands queued bytes to the kernel, oldest first, until it takes no more (Bun then calls `drain` again). Small
   * queued chunks go out together, up to BATCH_BYTES a write: one system call instead of one per chunk.
   */
  private flush(socket: Socket<Client>): void {
    const client = socket.data;
    const queue = client.queue;
    while (queue.length > 0) {
      if (queue.length > 1 && queue[0]!.length < BATCH_BYTES) {
        let count = 0;
        let size = 0;
        while (count < queue.length && size + queue[count]!.length <= BATCH_BYTES) size += queue[count++]!.length;
        if (count > 1) queue.splice(0, count, Buffer.concat(queue.slice(0, count), size));
      }
      const head = queue[0]!;
      const written = socket.write(head);
      if (written < 0) return;
      if (written > 0) {
        client.queued -= written;
        this.countSent(client, written);
        client.idleTimer?.refresh(); // the client is reading: not idle
      }
      if (written < head.length) {
        queue[0] = head.subarray(written);
        break;
      }
      queue.shift();
    }
    // Resume below half the mark rather than at it, so a slow reader is not paused and resumed for every chunk.
    if (client.paused && client.queued <= this.maxBuffer / 2 && !client.draining) {
      client.paused = false;
      socket.resume();
      if (this.debug) this.log.debug(`reply queue down to ${client.queued} bytes: reading again`, client.id);
    }
    if (client.queued === 0) this.afterFlush(socket);
  }

  private countSent(client: Client, bytes: number): void {
    client.bytesOut += bytes;
    this.totals.bytesOut += bytes;
  }

  /** Everything owed is with the kernel: finish a half-close or a drain. */
  private afterFlush(socket: Socket<Client>): void {
    const client = socket.data;
    if (client.peerEnded) {
      socket.end(); // the client FINned earlier and now has its complete reply
    } else if (client.draining && !client.finSent) {
      client.finSent = true;
      socket.shutdown(); // FIN after the last reply byte
      // Lingering close: keep reading (and discarding) until the client closes too, for at most LINGER_MS. Closing
      // while its bytes are still arriving would answer them with RST, and an RST makes the client's kernel drop
      // the reply bytes it has not read yet.
      if (client.paused) {
        client.paused = false;
        socket.resume();
      }
      client.lingerTimer = setTimeout(() => socket.end(), LINGER_MS);
    }
  }

  // The client has nothing more to send (it called shutdown() or close(); `nc -N` does at the end of its input).
  // With allowHalfOpen we can still write: the reply is completed before we close.
  private onEnd(socket: Socket<Client>): void {
    const client = socket.data;
    if (client.header?.length === 0) return void socket.end(); // not a byte: a TCP health check (kubelet's), quietly
    if (client.header !== undefined) return this.refuseHeader(socket, "the stream ended before it was complete");
    client.peerEnded = true;
    this.log.info(
      `client closed its side (FIN)${client.queued > 0 ? `: flushing ${client.queued} queued bytes first` : ""}`,
      client.id,
    );
    if (client.queued === 0) socket.end();
  }

  private onIdle(socket: Socket<Client>): void {
    if (socket.data.header !== undefined) return this.refuseHeader(socket, `none within ${this.idleTimeout}s`);
    this.log.info(`idle for ${this.idleTimeout} s: closing`, socket.data.id);
    socket.end();
  }

  private onClose(socket: Socket<Client>, error?: Error): void {
    const client = clientOf(socket);
    if (client === undefined || client.closed) return; // undefined: its `open` threw, it was never counted
    client.closed = true;
    clearTimeout(client.idleTimer);
    clearTimeout(client.lingerTimer);
    if (!client.admitted) return;
    this.clients.delete(socket);
    const fromIp = (this.perIp.get(client.ip) ?? 1) - 1;
    if (fromIp > 0) this.perIp.set(client.ip, fromIp);
    else this.perIp.delete(client.ip);
    if (error) {
      this.totals.errors++;
      this.log.info(`connection failed: ${error.message}`, client.id); // a client's RST is routine
    }
    const lost = client.queued > 0 ? `, ${client.queued} reply bytes undelivered` : "";
    this.log.info(`done: received ${client.bytesIn} bytes, sent ${client.bytesOut}${lost}`, client.id);
    if (this.stopping) {
      if (client.queued === 0 && !client.cut) this.totals.drained++;
      else this.totals.cut++;
      if (this.clients.size === 0) this.finishShutdown();
    }
  }

  /** A snapshot of this worker's counters, for the supervisor's metrics endpoint. */
  counters(): Counters {
    let queuedBytes = 0;
    for (const socket of this.clients) queuedBytes += socket.data.queued;
    return {
      connectionsActive: this.clients.size,
      connectionsTotal: this.totals.served,
      refused: { ...this.refused },
      receivedBytes: this.totals.bytesIn,
      sentBytes: this.totals.bytesOut,
      errors: this.totals.errors,
      queuedBytes,
    };
  }

  /**
   * A handler threw: Bun hands the exception to `error` (without an `error` handler, or if this one threw too, it
   * would end the process, and every client with it). Only this client pays: its connection is closed (RST) with a
   * log line, and the server carries on with the others.
   */
  private onHandlerError(socket: Socket<Client>, error: Error): void {
    this.totals.errors++;
    const client = clientOf(socket);
    this.log.error(`${client ? "" : "a client being accepted: "}${error.message}; closing that connection`, client?.id);
    socket.terminate();
  }

  /**
   * Stops accepting and drains: every client gets the replies it is owed, then FIN; the server closes each
   * connection when the client closes its side, or LINGER_MS later. Whoever is still connected at
   * --drain-timeout (a client that does not read its replies) is cut (RST).
   * Asking again changes nothing (the supervisor and a process-group signal may both ask); `cutNow` cuts.
   */
  shutdown(signal: string): void {
    if (this.stopping) return;
    this.stopping = true;
    this.listener?.stop();
    let owed = 0;
    for (const socket of this.clients) owed += socket.data.queued;
    this.log.info(
      `${signal}: no new clients; draining ${this.clients.size} client(s) owed ${owed} queued reply bytes, ` +
        `at most ${this.drainTimeout} s`,
    );
    if (this.clients.size === 0) {
      this.finishShutdown();
      return;
    }
    this.drainDeadline = setTimeout(() => {
      this.log.warn(`drain timeout (${this.drainTimeout} s): cutting ${this.clients.size} client(s)`);
      this.cutRemaining();
    }, this.drainTimeout * 1000);
    for (const socket of [...this.clients]) {
      socket.data.draining = true;
      if (socket.data.queued === 0) this.afterFlush(socket);
    }
  }

  /** The second signal: cut every remaining client now. */
  cutNow(signal: string): void {
    if (!this.stopping) this.shutdown(signal);
    if (this.clients.size === 0) return;
    this.log.warn(`${signal} received again: cutting ${this.clients.size} client(s) now`);
    this.cutRemaining();
  }

  private cutRemaining(): void {
    for (const socket of [...this.clients]) {
      socket.data.cut = true;
      socket.terminate(); // RST: the client can tell it did not get everything
    }
  }

  private finishShutdown(): void {
    clearTimeout(this.drainDeadline);
    const { served, bytesIn, bytesOut, drained, cut, discarded } = this.totals;
    const refused = REFUSAL_REASONS.reduce((sum, reason) => sum + this.refused[reason], 0);
    const level = cut > 0 ? "warn" : "info";
    this.log[level](
      `shutdown complete: ${drained} client(s) drained, ${cut} cut; ` +
        `since start ${served} served, ${refused} refused, ` +
        `${bytesIn} bytes received and ${bytesOut} sent back, ${discarded} dropped after the signal`,
    );
    this.onStopped({ drained, cut, discarded, served, refused, receivedBytes: bytesIn, sentBytes: bytesOut });
  }
}

/** One worker process as the supervisor sees it. */
interface WorkerSlot {
  index: number;
  proc: Subprocess<"ignore", "inherit", "inherit">;
  startedAt: number;
  listening: boolean;
  /** Its last counters, kept so a worker that dies does not take its share of the totals with it. */
  last: Counters | undefined;
  report: DrainReport | undefined;
}

const METRICS_TIMEOUT_MS = 1000;

/** What the metrics endpoint answers to one request. */
interface HttpAnswer {
  status: number;
  body: string;
  type?: string;
}

/** One connection to the metrics endpoint. */
interface HttpExchange {
  /** The request head so far (latin1), until its blank line. */
  head: string;
  /** The request has been read (or refused): later bytes are ignored. */
  answering: boolean;
  /** The response is queued: close once it is out. */
  responded: boolean;
  /** Response bytes the kernel has not taken yet. */
  queue: Uint8Array[];
  closed: boolean;
  timer: Timer | undefined;
}

const HTTP_REASONS: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  431: "Request Header Fields Too Large",
};
/** Most bytes of request head read before it is refused; Prometheus sends a few hundred. */
const HTTP_HEAD_LIMIT = 8192;
/** Time a client has to send its request before it is answered 408 and closed. */
const HTTP_REQUEST_MS = 10_000;

/**
 * The metrics endpoint: one HTTP/1.x request per connection (`Connection: close`), answered on Bun.listen. Not
 * Bun.serve: it drops a request whose client half-closes (FIN) before an asynchronous response is ready, and
 * this one is asynchronous (the workers are asked over IPC), so `printf 'GET /metrics HTTP/1.0\r\n\r\n' | nc -N`
 * got nothing. With allowHalfOpen the socket stays writable after the client's FIN. Bounded like the echo itself:
 * a head of at most HTTP_HEAD_LIMIT bytes, sent within HTTP_REQUEST_MS, and a bug in a handler closes only that
 * connection (the supervisor must not die of a scraper).
 */
class MetricsEndpoint {
  private readonly listener: TCPSocketListener<HttpExchange>;

  constructor(
    host: string,
    port: number,
    private readonly log: Logger,
    private readonly answer: (path: string) => Promise<HttpAnswer>,
  ) {
    this.listener = Bun.listen<HttpExchange>({
      hostname: host,
      port,
      allowHalfOpen: true,
      socket: {
        open: (socket) => {
          socket.data = { head: "", answering: false, responded: false, queue: [], closed: false, timer: undefined };
          socket.data.timer = setTimeout(() => this.respond(socket, { status: 408, body: "" }), HTTP_REQUEST_MS);
        },
        data: (socket, chunk) => this.onData(socket, chunk),
        drain: (socket) => this.flush(socket),
        // The client has sent all it will: without a whole request head there is nothing to answer.
        end: (socket) => {
          if (!socket.data.answering) socket.end();
        },
        close: (socket) => {
          const exchange = socket.data as HttpExchange | undefined;
          if (exchange === undefined) return;
          exchange.closed = true;
          clearTimeout(exchange.timer);
        },
        error: (socket, error) => {
          this.log.error(`metrics endpoint: ${error.message}; closing that connection`);
          socket.terminate();
        },
      },
    });
  }

  get port(): number {
    return this.listener.port;
  }

  stop(): void {
    this.listener.stop(true);
  }

  private onData(socket: Socket<HttpExchange>, chunk: Uint8Array): void {
    const exchange = socket.data;
    if (exchange.answering) return;
    exchange.head += Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length).toString("latin1");
    const end = exchange.head.indexOf("\r\n\r\n");
    if (end < 0) {
      if (exchange.head.length > HTTP_HEAD_LIMIT) this.respond(socket, { status: 431, body: "" });
      return;
    }
    const request = /^([A-Z]+) ([^ ]+) HTTP\/1\.[01]$/.exec(exchange.head.slice(0, exchange.head.indexOf("\r\n")));
    if (request === null) return this.respond(socket, { status: 400, body: "" });
    if (request[1] !== "GET") return this.respond(socket, { status: 405, body: "" });
    exchange.answering = true;
    const path = request[2]!.split("?")[0]!;
    this.answer(path).then(
      (answer) => this.respond(socket, answer),
      (error: Error) => {
        this.log.error(`metrics endpoint: ${error.message}`);
        socket.terminate();
      },
    );
  }

  /** Writes the response (what the kernel does not take now goes on `drain`), then closes. */
  private respond(socket: Socket<HttpExchange>, answer: HttpAnswer): void {
    const exchange = socket.data;
    if (exchange.responded) return;
    [exchange.answering, exchange.responded] = [true, true];
    clearTimeout(exchange.timer);
    if (exchange.closed) return; // the client left while the workers were asked
    const body = new TextEncoder().encode(answer.body);
    const head =
      `HTTP/1.1 ${answer.status} ${HTTP_REASONS[answer.status] ?? ""}\r\n` +
      `Content-Type: ${answer.type ?? "text/plain; charset=utf-8"}\r\n` +
      `Content-Length: ${body.length}\r\n` +
      `${answer.status === 405 ? "Allow: GET\r\n" : ""}Connection: close\r\n\r\n`;
    exchange.queue.push(new TextEncoder().encode(head), body);
    this.flush(socket);
  }

  private flush(socket: Socket<HttpExchange>): void {
    const exchange = socket.data;
    while (exchange.queue.length > 0) {
      const next = exchange.queue[0]!;
      const written = socket.write(next);
      if (written < 0) return;
      if (written < next.length) {
        exchange.queue[0] = next.subarray(written);
        return;
      }
      exchange.queue.shift();
    }
    if (exchange.responded && !exchange.closed) socket.end();
  }
}

/**
 * Runs the workers: starts them, prints the listening line when they all listen, replaces any that dies, serves
 * the metrics, and stops them all on SIGINT/SIGTERM.
 */
class Supervisor {
  private readonly log: Logger;
  private readonly slots: Array<WorkerSlot | undefined>;
  private port: number;
  private announced = false;
  private stopping = false;
  private restarts = 0;
  /** Counters of workers that are gone, so that the whole-server totals never go backwards. */
  private readonly retired: Counters = emptyCounters();
  private metricsEndpoint: MetricsEndpoint | undefined;
  private metricsSeq = 0;
  private readonly pendingMetrics = new Map<string, (counters: Counters) => void>();
  private hardDeadline: Timer | undefined;

  constructor(private readonly config: EchoServerConfig) {
    this.log = new Logger(config.logLevel, config.logFormat, undefined);
    this.slots = new Array<WorkerSlot | undefined>(config.workers).fill(undefined);
    this.port = config.port;
  }

  start(): void {
    const { workers, maxClients, maxPerIp, host } = this.config;
    // The workers bind with SO_REUSEPORT, and the kernel lets any socket of this user that sets it join their
    // port, a second copy of this stage included: it would print its listening line and take half the clients.
    // So the port is claimed first with a plain bind, which fails on a port that anything listens on (a
    // SO_REUSEPORT group too), and released for the workers. (With --port 0 this is also where the port is
    // picked.) Two copies started in the same instant could both pass before either's workers listen: see Lacks.
    try {
      const probe = Bun.listen({ hostname: host, port: this.port, socket: { data() {} } });
      this.port = probe.port;
      probe.stop(true);
    } catch (error) {
      const { code, message } = error as NodeJS.ErrnoException;
      const reason = code === "EADDRINUSE" ? "address already in use" : (code ?? message);
      console.error(`error: cannot listen on ${formatAddress(host, this.port)}: ${reason}`);
      process.exit(1);
    }
    this.log.info(
      `starting ${workers} worker(s) on ${formatAddress(host, this.port)}; ` +
        `each serves at most ${Math.ceil(maxClients / workers)} clients` +
        `${maxPerIp > 0 ? ` and ${maxPerIp} per address` : ""}`,
    );
    for (let index = 0; index < workers; index++) this.spawn(index);
  }

  private spawn(index: number): void {
    const { workers, maxClients } = this.config;
    const workerConfig: EchoServerConfig = {
      ...this.config,
      port: this.port,
      maxClients: Math.ceil(maxClients / workers),
    };
    // A compiled executable (`bun build --compile`) is this program itself and takes no script path.
    const self = Bun.isStandaloneExecutable ? [process.execPath] : [process.execPath, import.meta.path];
    const proc = Bun.spawn(self, {
      env: { ...process.env, ECHO_WORKER: String(index), ECHO_WORKER_CONFIG: JSON.stringify(workerConfig) },
      stdio: ["ignore", "inherit", "inherit"],
      ipc: (message: FromWorker) => this.onMessage(slot, message),
    });
    const slot: WorkerSlot = {
      index,
      proc,
      startedAt: performance.now(),
      listening: false,
      last: undefined,
      report: undefined,
    };
    this.slots[index] = slot;
    this.log.info(`worker ${index} started (pid ${proc.pid})`);
    void proc.exited.then((code) => this.onExit(slot, code));
  }

  private onMessage(slot: WorkerSlot, message: FromWorker): void {
    switch (message.type) {
      case "listening":
        slot.listening = true;
        if (this.announced)
          this.log.info(
            `worker ${slot.index} (pid ${slot.proc.pid}) is back: ${this.config.workers} worker(s) listening`,
          );
        if (!this.announced && this.slots.every((s) => s?.listening)) void this.announce();
        break;
      case "failed":
        if (!this.announced) {
          // Nothing is serving yet: the configuration is wrong (port in use, bad address). Stop, as 006 would.
          console.error(`error: cannot listen on ${formatAddress(this.config.host, this.port)}: ${message.reason}`);
          for (const s of this.slots) s?.proc.kill("SIGKILL");
          process.exit(1);
        }
        this.log.error(`worker ${slot.index} cannot listen: ${message.reason}`);
        break;
      case "metrics":
        slot.last = message.counters;
        this.pendingMetrics.get(`${slot.index}:${message.seq}`)?.(message.counters);
        break;
      case "stopped":
        slot.report = message.report;
        break;
    }
  }

  /** All workers listen: start the metrics endpoint, then print the one line on stdout. */
  private async announce(): Promise<void> {
    this.announced = true;
    const { metricsPort, metricsHost, host } = this.config;
    if (metricsPort !== undefined) {
      try {
        this.metricsEndpoint = new MetricsEndpoint(metricsHost, metricsPort, this.log, (path) =>
          this.serveMetrics(path),
        );
        this.log.info(`metrics on http://${formatAddress(metricsHost, this.metricsEndpoint.port)}/metrics`);
      } catch (error) {
        const { code, message } = error as NodeJS.ErrnoException;
        console.error(
          `error: cannot serve metrics on ${formatAddress(metricsHost, metricsPort)}: ` +
            `${code === "EADDRINUSE" ? "address already in use" : (code ?? message)}`,
        );
        for (const s of this.slots) s?.proc.kill("SIGKILL");
        process.exit(1);
      }
    }
    this.log.info(`all ${this.config.workers} worker(s) listening`);
    console.log(`listening on ${formatAddress(host, this.port)}`);
  }

  private onExit(slot: WorkerSlot, code: number): void {
    if (this.slots[slot.index] === slot && !this.stopping) {
      this.slots[slot.index] = undefined;
      addCounters(this.retired, slot.last);
      if (!this.announced) {
        console.error(`error: worker ${slot.index} exited with code ${code} before listening`);
        for (const s of this.slots) s?.proc.kill("SIGKILL");
        process.exit(1);
      }
      this.restarts++;
      const how = slot.proc.signalCode ? `killed by ${slot.proc.signalCode}` : `exited with code ${code}`;
      // A worker that dies straight after starting would die again at once: wait a little before each retry.
      const delay = performance.now() - slot.startedAt < 1000 ? 1000 : 0;
      this.log.warn(
        `worker ${slot.index} (pid ${slot.proc.pid}) ${how}: replacing it${delay ? ` in ${delay} ms` : ""}`,
      );
      setTimeout(() => {
        if (!this.stopping) this.spawn(slot.index);
      }, delay);
      return;
    }
    if (
      this.stopping &&
      this.slots.every((s) => s === undefined || s.proc.exitCode !== null || s.proc.signalCode !== null)
    ) {
      this.finish();
    }
  }

  /** First signal: every worker drains. Second: every worker cuts. */
  shutdown(signal: string): void {
    const live = this.slots.filter((slot): slot is WorkerSlot => slot !== undefined);
    if (this.stopping) {
      this.log.warn(`${signal} received again: workers cut their clients now`);
      for (const slot of live) this.send(slot, { type: "cut", signal });
      return;
    }
    this.stopping = true;
    this.log.info(
      `${signal} received: ${live.length} worker(s) stop accepting and drain, at most ${this.config.drainTimeout} s`,
    );
    for (const slot of live) this.send(slot, { type: "drain", signal });
    // A worker that does not finish in time (stuck, or busy beyond the deadline) is killed.
    this.hardDeadline = setTimeout(
      () => {
        for (const slot of live) {
          if (slot.proc.exitCode === null && slot.proc.signalCode === null) {
            this.log.error(`worker ${slot.index} (pid ${slot.proc.pid}) did not stop in time: killing it`);
            slot.proc.kill("SIGKILL");
          }
        }
      },
      this.config.drainTimeout * 1000 + 2000,
    );
    if (live.length === 0) this.finish();
  }

  private send(slot: WorkerSlot, message: ToWorker): void {
    try {
      slot.proc.send(message);
    } catch {
      // its channel is closed: it is exiting, and onExit will see it
    }
  }

  private finish(): void {
    clearTimeout(this.hardDeadline);
    this.metricsEndpoint?.stop();
    const total: DrainReport = {
      drained: 0,
      cut: 0,
      discarded: 0,
      served: 0,
      refused: 0,
      receivedBytes: 0,
      sentBytes: 0,
    };
    let clean = true;
    for (const slot of this.slots) {
      if (slot === undefined) continue;
      if (slot.proc.exitCode !== 0) clean = false;
      for (const key of Object.keys(total) as Array<keyof DrainReport>) total[key] += slot.report?.[key] ?? 0;
    }
    const level = clean && total.cut === 0 ? "info" : "warn";
    this.log[level](
      `shutdown complete: ${total.drained} client(s) drained, ` +
        `${total.cut} cut across ${this.slots.length} worker(s); ` +
        `since start ${total.served} served, ${total.refused} refused, ${total.receivedBytes} bytes received and ` +
        `${total.sentBytes} sent back, ${total.discarded} dropped after the signal; bye`,
    );
    process.exit(clean ? 0 : 1);
  }

  /** Asks every live worker for its counters (answers within a second, else its last known ones). */
  private async gather(): Promise<Array<[index: number, counters: Counters]>> {
    const seq = ++this.metricsSeq;
    const live = this.slots.filter((slot): slot is WorkerSlot => slot !== undefined && slot.listening);
    return Promise.all(
      live.map(
        (slot) =>
          new Promise<[number, Counters]>((resolve) => {
            const key = `${slot.index}:${seq}`;
            const done = (counters: Counters | undefined): void => {
              clearTimeout(timer);
              this.pendingMetrics.delete(key);
              resolve([slot.index, counters ?? emptyCounters()]);
            };
            const timer = setTimeout(() => done(slot.last), METRICS_TIMEOUT_MS);
            this.pendingMetrics.set(key, done);
            this.send(slot, { type: "metrics", seq });
          }),
      ),
    );
  }

  private async serveMetrics(path: string): Promise<HttpAnswer> {
    if (path !== "/metrics") return { status: 404, body: "see /metrics\n" };
    const perWorker = await this.gather();
    const sum = emptyCounters();
    addCounters(sum, this.retired);
    for (const [, counters] of perWorker) addCounters(sum, counters);
    // Gauges are about now: a retired worker's connections are gone.
    sum.connectionsActive -= this.retired.connectionsActive;
    sum.queuedBytes -= this.retired.queuedBytes;
    const text = renderMetrics(sum, perWorker, {
      workers: perWorker.length,
      restarts: this.restarts,
    });
    return { status: 200, body: text, type: "text/plain; version=0.0.4; charset=utf-8" };
  }
}

function emptyCounters(): Counters {
  return {
    connectionsActive: 0,
    connectionsTotal: 0,
    refused: { "max-clients": 0, "max-per-ip": 0, "shutting-down": 0, "proxy-header": 0 },
    receivedBytes: 0,
    sentBytes: 0,
    errors: 0,
    queuedBytes: 0,
  };
}

function addCounters(into: Counters, from: Counters | undefined): void {
  if (from === undefined) return;
  into.connectionsActive += from.connectionsActive;
  into.connectionsTotal += from.connectionsTotal;
  for (const reason of REFUSAL_REASONS) into.refused[reason] += from.refused[reason];
  into.receivedBytes += from.receivedBytes;
  into.sentBytes += from.sentBytes;
  into.errors += from.errors;
  into.queuedBytes += from.queuedBytes;
}

/** Prometheus text exposition format 0.0.4: HELP and TYPE before each family, then its samples. */
function renderMetrics(
  sum: Counters,
  perWorker: Array<[number, Counters]>,
  supervisor: { workers: number; restarts: number },
): string {
  const lines: string[] = [];
  const family = (
    name: string,
    type: "counter" | "gauge",
    help: string,
    samples: Array<[labels: string, value: number]>,
  ): void => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) lines.push(`${name}${labels} ${value}`);
  };
  const fields: Array<[name: string, type: "counter" | "gauge", help: string, pick: (c: Counters) => number]> = [
    ["connections_active", "gauge", "Client connections being served now.", (c) => c.connectionsActive],
    ["connections_total", "counter", "Client connections served (admitted) since start.", (c) => c.connectionsTotal],
    ["received_bytes_total", "counter", "Bytes received from clients and echoed.", (c) => c.receivedBytes],
    ["sent_bytes_total", "counter", "Reply bytes handed to the kernel.", (c) => c.sentBytes],
    ["errors_total", "counter", "Connections that ended with an error (reset by the peer, ...).", (c) => c.errors],
    ["queued_bytes", "gauge", "Reply bytes waiting for slow readers.", (c) => c.queuedBytes],
  ];
  for (const [name, type, help, pick] of fields) family(`echo_${name}`, type, help, [["", pick(sum)]]);
  family(
    "echo_connections_refused_total",
    "counter",
    "Connections refused, by the limit that refused them.",
    REFUSAL_REASONS.map((reason) => [`{reason="${reason}"}`, sum.refused[reason]]),
  );
  family("echo_workers", "gauge", "Worker processes running.", [["", supervisor.workers]]);
  family("echo_worker_restarts_total", "counter", "Workers that died and were replaced.", [["", supervisor.restarts]]);
  // Per worker under their own names, so that sum() over a family never counts a connection twice.
  for (const [name, type, help, pick] of fields) {
    family(
      `echo_worker_${name}`,
      type,
      `${help} Per worker.`,
      perWorker.map(([index, c]) => [`{worker="${index}"}`, pick(c)]),
    );
  }
  family(
    "echo_worker_connections_refused_total",
    "counter",
    "Connections refused, by the limit that refused them. Per worker.",
    perWorker.flatMap(([index, c]) =>
      REFUSAL_REASONS.map((reason): [string, number] => [`{worker="${index}",reason="${reason}"}`, c.refused[reason]]),
    ),
  );
  return `${lines.join("\n")}\n`;
}

// ---- The PROXY protocol (as in tcp_proxy/008-proxy-protocol.ts) -----------------------------------------------

/** An IP address as bytes: 4 for IPv4, 16 for IPv6. IPv4-mapped IPv6 (::ffff:1.2.3.4) is read as IPv4. */
type Ip = Uint8Array;

interface Endpoint {
  ip: Ip;
  port: number;
}

function parseIp(text: string): Ip | undefined {
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(text)) {
    const parts = text.split(".");
    if (parts.some((part) => Number(part) > 255 || (part.length > 1 && part.startsWith("0")))) return undefined;
    return new Uint8Array(parts.map(Number));
  }
  if (!text.includes(":")) return undefined;
  let hex = text;
  let ipv4Tail: Ip | undefined;
  const lastColon = text.lastIndexOf(":");
  if (text.includes(".", lastColon)) {
    // ::ffff:192.0.2.1 and friends: the last 32 bits written as IPv4
    ipv4Tail = parseIp(text.slice(lastColon + 1));
    if (ipv4Tail?.length !== 4) return undefined;
    hex = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const halves = hex.split("::");
  if (halves.length > 2) return undefined;
  const groups = (part: string): number[] | undefined => {
    if (part === "") return [];
    const values = part.split(":").map((group) => (/^[0-9a-fA-F]{1,4}$/.test(group) ? parseInt(group, 16) : NaN));
    return values.some(Number.isNaN) ? undefined : values;
  };
  const left = groups(halves[0]!);
  const right = halves.length === 2 ? groups(halves[1]!) : [];
  if (left === undefined || right === undefined) return undefined;
  const missing = 8 - left.length - right.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined;
  const all = [...left, ...new Array<number>(halves.length === 2 ? missing : 0).fill(0), ...right];
  const bytes = new Uint8Array(16);
  all.forEach((group, i) => {
    bytes[2 * i] = group >> 8;
    bytes[2 * i + 1] = group & 0xff;
  });
  if (ipv4Tail) bytes.set(ipv4Tail, 12);
  const mapped = bytes.subarray(0, 10).every((byte) => byte === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  return mapped ? bytes.slice(12) : bytes;
}

/** Text form: dotted IPv4, or IPv6 with the longest run of zero groups written "::" (RFC 5952). */
function formatIp(ip: Ip): string {
  if (ip.length === 4) return ip.join(".");
  const groups = Array.from({ length: 8 }, (_, i) => (ip[2 * i]! << 8) | ip[2 * i + 1]!);
  let [bestStart, bestLength] = [-1, 1];
  for (let start = 0; start < 8; start++) {
    let length = 0;
    while (start + length < 8 && groups[start + length] === 0) length++;
    if (length > bestLength) [bestStart, bestLength] = [start, length];
  }
  const hex = groups.map((group) => group.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}

const PROXY_V2_SIGNATURE = new Uint8Array([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const PROXY_V1_PREFIX = new TextEncoder().encode("PROXY ");
/** A v1 line is at most 107 bytes with its CRLF (the spec's worst case, TCP6 with the longest addresses). */
const PROXY_V1_MAX = 107;
/** v2 allows 64 KiB of TLVs after the addresses; more than this from a load balancer is not worth buffering. */
const PROXY_V2_MAX_LENGTH = 2048;

type HeaderParse =
  | { status: "incomplete" }
  | { status: "invalid"; reason: string }
  | { status: "ok"; version: 1 | 2; length: number; source?: Endpoint; destination?: Endpoint };

function startsLike(bytes: Uint8Array, prefix: Uint8Array): boolean {
  const length = Math.min(bytes.length, prefix.length);
  for (let i = 0; i < length; i++) if (bytes[i] !== prefix[i]) return false;
  return true;
}

/** Reads a PROXY header, v1 or v2, at the start of `bytes`: done, invalid, or more bytes needed. */
function parseProxyHeader(bytes: Uint8Array): HeaderParse {
  const invalid = (reason: string): HeaderParse => ({ status: "invalid", reason });
  if (bytes.length === 0) return { status: "incomplete" };
  if (startsLike(bytes, PROXY_V1_PREFIX)) {
    let end = -1;
    for (let i = 1; i < Math.min(bytes.length, PROXY_V1_MAX); i++) {
      if (bytes[i - 1] === 0x0d && bytes[i] === 0x0a) {
        end = i + 1;
        break;
      }
    }
    if (end < 0)
      return bytes.length >= PROXY_V1_MAX ? invalid("v1 line longer than 107 bytes") : { status: "incomplete" };
    const fields = new TextDecoder().decode(bytes.subarray(0, end - 2)).split(" ");
    if (fields[1] === "UNKNOWN") return { status: "ok", version: 1, length: end };
    if (fields.length !== 6 || (fields[1] !== "TCP4" && fields[1] !== "TCP6")) return invalid("malformed v1 line");
    const [source, destination] = [parseIp(fields[2]!), parseIp(fields[3]!)];
    const ports = [fields[4]!, fields[5]!].map((port) => (/^(0|[1-9]\d{0,4})$/.test(port) ? Number(port) : NaN));
    const ipv4 = fields[1] === "TCP4";
    const familyOk = (text: string) => (ipv4 ? !text.includes(":") : text.includes(":"));
    if (!source || !destination || !familyOk(fields[2]!) || !familyOk(fields[3]!)) return invalid("bad v1 address");
    if (ports.some((port) => !(port <= 65535))) return invalid("bad v1 port");
    return {
      status: "ok",
      version: 1,
      length: end,
      source: { ip: source, port: ports[0]! },
      destination: { ip: destination, port: ports[1]! },
    };
  }
  if (startsLike(bytes, PROXY_V2_SIGNATURE)) {
    if (bytes.length < 16) return { status: "incomplete" };
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const [versionCommand, family, length] = [bytes[12]!, bytes[13]!, view.getUint16(14)];
    if (versionCommand >> 4 !== 2) return invalid(`v2 version ${versionCommand >> 4}`);
    const command = versionCommand & 0x0f;
    if (command > 1) return invalid(`v2 command ${command}`);
    if (length > PROXY_V2_MAX_LENGTH) return invalid(`v2 header of ${length} bytes`);
    if (bytes.length < 16 + length) return { status: "incomplete" };
    // LOCAL (the balancer's own health check) or a family that is not TCP: keep the real connection's endpoints.
    if (command === 0 || (family !== 0x11 && family !== 0x21)) return { status: "ok", version: 2, length: 16 + length };
    const size = family === 0x11 ? 4 : 16;
    if (length < 2 * size + 4) return invalid("v2 address block too short");
    return {
      status: "ok",
      version: 2,
      length: 16 + length,
      source: { ip: bytes.slice(16, 16 + size), port: view.getUint16(16 + 2 * size) },
      destination: { ip: bytes.slice(16 + size, 16 + 2 * size), port: view.getUint16(18 + 2 * size) },
    };
  }
  return invalid("no PROXY header");
}

/**
 * The client a socket belongs to, or undefined before `open` has set `socket.data`: Bun still calls `error` and
 * `close` for a socket whose `open` threw, so those two must not take `socket.data` for granted.
 */
function clientOf(socket: Socket<Client>): Client | undefined {
  return socket.data as Client | undefined;
}

function formatOptions(fd: number | undefined): string {
  const options = fd === undefined ? {} : EchoServer.getSocketOptions(fd);
  const entries = Object.entries(options);
  return entries.length === 0 ? "unavailable on this platform" : entries.map(([k, v]) => `${k}=${v}`).join(" ");
}

// Bun has no address for a client that reset its connection before we asked.
function peerAddress(socket: Socket<unknown>): string {
  return socket.remoteAddress || "(a client already gone)";
}

function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

function formatBytes(bytes: number): string {
  if (bytes % (1024 * 1024) === 0) return `${bytes / (1024 * 1024)} MiB`;
  if (bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}

// The usage line names the command as it was started, so renaming or copying the stage changes nothing here:
// `bun PATH` for this file, or the name it was built under (`bun run build`: an executable or an installed command).
const THIS_COMMAND = import.meta.path.endsWith(".ts")
  ? `bun ${relative(process.cwd(), import.meta.path)}`
  : basename(import.meta.path);

const HELP = `Usage: ${THIS_COMMAND} [options]

Serves every client at once on every core, each message uppercased (ASCII a-z), whatever the client does.
Worker processes share the port; a worker that dies is replaced. Clients over a limit are refused.
SIGINT/SIGTERM: stop accepting, deliver the replies owed, close; a second signal cuts at once.

Options (each also read from the environment variable in brackets; an option given here wins):
  --host HOST           address to listen on (default 127.0.0.1)                               [HOST]
  --port PORT           port to listen on, 0 for a free one (default 5000)                      [PORT]
  --workers N           worker processes (default: the CPUs this process may use,
                        ${`here ${availableParallelism()})`.padEnd(71)}[WORKERS]
  --max-clients N       clients served at once, shared out between the workers (default 10000) [MAX_CLIENTS]
  --max-per-ip N        connections from one address, 0 = no limit (default 0)                 [MAX_PER_IP]
  --max-buffer BYTES    unsent reply bytes per client before its reading pauses; k and m
                        suffixes for KiB and MiB (default 256k)                                [MAX_BUFFER]
  --idle-timeout S      close a client silent for S seconds, 0 = never (default 60)            [IDLE_TIMEOUT]
  --drain-timeout S     on SIGINT/SIGTERM, cut the clients still connected after S seconds
                        (default 8)                                                            [DRAIN_TIMEOUT]
  --metrics-port PORT   serve Prometheus metrics at http://METRICS-HOST:PORT/metrics, 0 for a
                        free port (default: no metrics)                                        [METRICS_PORT]
  --metrics-host HOST   address for the metrics endpoint, whatever --host is (default
                        127.0.0.1: metrics are not for the clients' network)                   [METRICS_HOST]
  --accept-proxy        require a PROXY header (v1 or v2) from the load balancer in front on every
                        connection; its address is the client's (default: off)                 [ACCEPT_PROXY]
  --log-level LEVEL     debug, info, warn or error (default info)                              [LOG_LEVEL]
  --log-format FORMAT   text or json, one object a line (default text)                         [LOG_FORMAT]
  -h, --help            show this help
`;

class UsageError extends Error {}

// setTimeout() takes at most 2^31-1 ms (about 24.8 days); beyond that it would fire at once.
const MAX_TIMER_SECONDS = Math.floor((2 ** 31 - 1) / 1000);

/** Option name -> environment variable, for containers (`docker run -e PORT=7000 ...`). */
const ENVIRONMENT: Record<string, string> = {
  host: "HOST",
  port: "PORT",
  workers: "WORKERS",
  "max-clients": "MAX_CLIENTS",
  "max-per-ip": "MAX_PER_IP",
  "max-buffer": "MAX_BUFFER",
  "idle-timeout": "IDLE_TIMEOUT",
  "drain-timeout": "DRAIN_TIMEOUT",
  "metrics-port": "METRICS_PORT",
  "metrics-host": "METRICS_HOST",
  "log-level": "LOG_LEVEL",
  "log-format": "LOG_FORMAT",
};

const DEFAULTS: Record<string, string | undefined> = {
  host: "127.0.0.1",
  port: "5000",
  workers: String(availableParallelism()),
  "max-clients": "10000",
  "max-per-ip": "0",
  "max-buffer": "256k",
  "idle-timeout": "60",
  "drain-timeout": "8",
  "metrics-port": undefined,
  "metrics-host": "127.0.0.1",
  "log-level": "info",
  "log-format": "text",
};

function parseConfig(argv: string[], env: Record<string, string | undefined>): EchoServerConfig | "help" {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        ...Object.fromEntries(Object.keys(ENVIRONMENT).map((name) => [name, { type: "string" as const }])),
        "accept-proxy": { type: "boolean" },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    // parseArgs can explain over several lines; a usage error is one.
    throw new UsageError((error as Error).message.replace(/\s*\n\s*/g, " "));
  }
  if (values.help) return "help";
  // The value of an option and how to name it in an error: the flag if given, else the environment variable.
  const option = (name: string): { value: string | undefined; label: string } => {
    const flag = values[name];
    if (typeof flag === "string") return { value: flag, label: `--${name}` };
    const fromEnv = env[ENVIRONMENT[name]!];
    if (fromEnv !== undefined && fromEnv !== "") return { value: fromEnv, label: ENVIRONMENT[name]! };
    return { value: DEFAULTS[name], label: `--${name}` };
  };
  const integer = (name: string, min: number, max: number, what: string): number => {
    const { value, label } = option(name);
    if (value === undefined || !/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
      throw new UsageError(`${label} must be ${what}, got "${value}"`);
    }
    return Number(value);
  };
  const seconds = (name: string, from: string): number => {
    const { value, label } = option(name);
    if (value === undefined || !/^\d+(\.\d+)?$/.test(value) || Number(value) > MAX_TIMER_SECONDS) {
      throw new UsageError(`${label} must be a number of seconds from ${from} to ${MAX_TIMER_SECONDS}, got "${value}"`);
    }
    return Number(value);
  };
  /** A flag without a value: given, or its variable 1/true/yes (0/false/no/empty: off). */
  const onOff = (name: string, variable: string): boolean => {
    if (values[name] === true) return true;
    const text = (env[variable] ?? "").toLowerCase();
    if (["1", "true", "yes"].includes(text)) return true;
    if (["", "0", "false", "no"].includes(text)) return false;
    throw new UsageError(`${variable} must be 1 or 0 (true or false), got "${env[variable]}"`);
  };
  const oneOf = <T extends string>(name: string, allowed: readonly T[]): T => {
    const { value, label } = option(name);
    if (!allowed.includes(value as T))
      throw new UsageError(`${label} must be one of ${allowed.join(", ")}, got "${value}"`);
    return value as T;
  };

  const port = integer("port", 0, 65535, "an integer from 0 to 65535");
  const logLevel = oneOf("log-level", LEVELS);
  const logFormat = oneOf("log-format", LOG_FORMATS);
  const host = option("host");
  if (host.value === "" || host.value === undefined) throw new UsageError(`${host.label} must not be empty`);
  const workers = integer("workers", 1, 1024, "an integer from 1 to 1024");
  const maxClients = integer("max-clients", 1, Number.MAX_SAFE_INTEGER, "a positive integer");
  const maxPerIp = integer("max-per-ip", 0, Number.MAX_SAFE_INTEGER, "an integer (0 = no limit)");
  const buffer = option("max-buffer");
  const size = /^(\d+)([km]?)$/i.exec(buffer.value ?? "");
  const maxBuffer = size
    ? Number(size[1]) * { "": 1, k: 1024, m: 1024 * 1024 }[size[2]!.toLowerCase() as "" | "k" | "m"]
    : 0;
  if (maxBuffer < 1) {
    throw new UsageError(
      `${buffer.label} must be a positive number of bytes (k, m suffixes allowed), got "${buffer.value}"`,
    );
  }
  const idleTimeout = seconds("idle-timeout", "0 (never)");
  const drainTimeout = seconds("drain-timeout", "0");
  const metrics = option("metrics-port");
  const metricsPort =
    metrics.value === undefined ? undefined : integer("metrics-port", 0, 65535, "an integer from 0 to 65535");
  const metricsHost = option("metrics-host");
  if (metricsHost.value === "" || metricsHost.value === undefined) {
    throw new UsageError(`${metricsHost.label} must not be empty`);
  }
  return {
    host: host.value,
    port,
    logLevel,
    logFormat,
    workers,
    maxClients,
    maxPerIp,
    maxBuffer,
    idleTimeout,
    drainTimeout,
    metricsPort,
    metricsHost: metricsHost.value,
    acceptProxy: onOff("accept-proxy", "ACCEPT_PROXY"),
  };
}

/** A worker: one EchoServer, driven by the supervisor over IPC. */
function workerMain(index: number, config: EchoServerConfig): void {
  const reply = (message: FromWorker): void => {
    process.send?.(message);
  };
  const server = new EchoServer(config, index, (report) => {
    reply({ type: "stopped", report });
    process.disconnect?.(); // the IPC channel was the last thing open: the worker now exits with 0
  });
  try {
    reply({ type: "listening", port: server.start() });
  } catch (error) {
    const { code, message } = error as NodeJS.ErrnoException;
    reply({ type: "failed", reason: code === "EADDRINUSE" ? "address already in use" : (code ?? message) });
    process.disconnect?.();
    process.exitCode = 1;
    return;
  }
  process.on("message", (message: ToWorker) => {
    if (message.type === "metrics") reply({ type: "metrics", seq: message.seq, counters: server.counters() });
    else if (message.type === "drain") server.shutdown(`${message.signal} received`);
    else if (message.type === "cut") server.cutNow(message.signal);
  });
  // Ctrl-C in a terminal signals the whole process group: the supervisor handles it and tells the workers (so a
  // worker does not count it twice). A SIGTERM sent to one worker alone makes it drain and exit; it is replaced.
  process.on("SIGINT", () => {});
  process.on("SIGTERM", () => server.shutdown("SIGTERM received"));
  // The supervisor is gone (killed with SIGKILL?): do not keep serving on our own; drain and go.
  process.on("disconnect", () => server.shutdown("supervisor gone"));
}

function main(): void {
  const workerIndex = process.env.ECHO_WORKER;
  const workerConfig = process.env.ECHO_WORKER_CONFIG;
  if (workerIndex !== undefined && workerConfig !== undefined) {
    workerMain(Number(workerIndex), JSON.parse(workerConfig) as EchoServerConfig);
    return;
  }
  let config: EchoServerConfig | "help";
  try {
    config = parseConfig(process.argv.slice(2), process.env);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`error: ${error.message} (see --help)`);
    process.exit(2);
  }
  if (config === "help") {
    process.stdout.write(HELP);
    return;
  }
  const supervisor = new Supervisor(config);
  supervisor.start();
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => supervisor.shutdown(signal));
}

main();
