// A small, careful TCP client for the tests: it keeps every byte it receives, honours partial writes (Bun's
// `write()` does not buffer) and can half-close, so assertions can be made on exact bytes.

import type { Socket, TCPSocketListener } from "bun";
import { flushQueue, queuedBytes, sendQueued } from "../../lib/sockets.ts";
import { formatAddress } from "../../lib/stages.ts";

// Moved to lib/sockets.ts (one home for the tooling); re-exported for the tests that import it from here.
export { unusedPort } from "../../lib/sockets.ts";

/** The reference transformation every echo stage must apply: ASCII a-z uppercased, every other byte unchanged. */
export function upperAscii(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!;
    out[i] = byte >= 0x61 && byte <= 0x7a ? byte - 0x20 : byte;
  }
  return out;
}

/** Every byte value 0-255 once, then the lowercase alphabet: the binary-safety probe. */
export function allByteValues(): Uint8Array {
  const bytes = new Uint8Array(256 + 26);
  for (let i = 0; i < 256; i++) bytes[i] = i;
  for (let i = 0; i < 26; i++) bytes[256 + i] = 0x61 + i;
  return bytes;
}

export const encode = (text: string): Uint8Array => new TextEncoder().encode(text);
export const decode = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);

interface ClientState {
  chunks: Uint8Array[];
  reads: number;
  length: number;
  pending: Uint8Array[];
  peerEnded: boolean;
  closed: boolean;
  closeError: Error | undefined;
  wake: Set<() => void>;
}

/** A connected test client. */
export class TestClient {
  private constructor(
    private readonly socket: Socket<ClientState>,
    private readonly state: ClientState,
  ) {}

  static async connect(port: number, host = "127.0.0.1"): Promise<TestClient> {
    const state: ClientState = {
      chunks: [],
      reads: 0,
      length: 0,
      pending: [],
      peerEnded: false,
      closed: false,
      closeError: undefined,
      wake: new Set(),
    };
    const notify = (): void => {
      for (const wake of state.wake) wake();
    };
    const socket = await Bun.connect<ClientState>({
      hostname: host,
      port,
      allowHalfOpen: true,
      data: state,
      socket: {
        data(_socket, chunk) {
          state.chunks.push(new Uint8Array(chunk));
          state.reads++;
          state.length += chunk.length;
          notify();
        },
        drain(socket) {
          if (flushQueue(socket, state.pending) === "flushed") notify();
        },
        end() {
          state.peerEnded = true;
          notify();
        },
        close(_socket, error) {
          state.closed = true;
          state.closeError = error;
          notify();
        },
        error(_socket, error) {
          state.closeError = error;
          notify();
        },
      },
    });
    return new TestClient(socket, state);
  }

  /** Queues `bytes` for sending; what the kernel does not take now is sent on `drain`. */
  write(bytes: Uint8Array | string): void {
    const chunk = typeof bytes === "string" ? encode(bytes) : bytes;
    if (sendQueued(this.socket, this.state.pending, chunk) === "flushed") this.notify();
  }

  private notify(): void {
    for (const wake of this.state.wake) wake();
  }

  /** Resolves once everything written so far has been handed to the kernel. */
  async flushed(timeoutMs = 10_000): Promise<void> {
    await this.until(() => this.state.pending.length === 0, timeoutMs, "the write queue to flush");
  }

  /** Sends FIN once the queue is flushed: the client keeps reading (half-close). */
  async shutdown(): Promise<void> {
    await this.flushed();
    this.socket.shutdown();
  }

  /** Everything received so far. */
  get received(): Uint8Array {
    if (this.state.chunks.length !== 1) {
      const all = new Uint8Array(this.state.length);
      let offset = 0;
      for (const chunk of this.state.chunks) {
        all.set(chunk, offset);
        offset += chunk.length;
      }
      this.state.chunks = [all];
    }
    return this.state.chunks[0]!;
  }

  /** The client's own port: what a proxy in front of the server reports as the source port. */
  get localPort(): number {
    return this.socket.localPort;
  }

  /** How many `data` events delivered the bytes: how sliced the stream arrived. */
  get reads(): number {
    return this.state.reads;
  }

  get receivedLength(): number {
    return this.state.length;
  }

  get isClosed(): boolean {
    return this.state.closed;
  }

  /** True once the server has sent FIN (or the connection is gone). */
  get peerEnded(): boolean {
    return this.state.peerEnded || this.state.closed;
  }

  get closeError(): Error | undefined {
    return this.state.closeError;
  }

  /** Waits until at least `count` bytes have arrived in total, and returns all received bytes. */
  async readAtLeast(count: number, timeoutMs = 10_000): Promise<Uint8Array> {
    await this.until(() => this.state.length >= count, timeoutMs, `${count} bytes`, true);
    return this.received;
  }

  /** Waits for the server to end the connection; returns everything received. */
  async readToEnd(timeoutMs = 10_000): Promise<Uint8Array> {
    await this.until(() => this.peerEnded, timeoutMs, "the server to close the connection");
    return this.received;
  }

  /** Resolves true if the server ends the connection within `ms`, false otherwise (the connection stays open). */
  async endsWithin(ms: number): Promise<boolean> {
    try {
      await this.until(() => this.peerEnded, ms, "end");
      return true;
    } catch {
      return false;
    }
  }

  /** Stops reading from the socket (the kernel buffers fill, then the peer's writes stall): a slow reader. */
  pauseReading(): void {
    this.socket.pause();
  }

  resumeReading(): void {
    this.socket.resume();
  }

  /** Bytes queued here that the kernel has not taken yet (a server that stops reading leaves them here). */
  get unsent(): number {
    return queuedBytes(this.state.pending);
  }

  close(): void {
    this.socket.end();
  }

  /** Closes with RST instead of FIN, as a crashing client would. */
  reset(): void {
    this.socket.terminate();
  }

  private until(done: () => boolean, timeoutMs: number, what: string, failOnEnd = false): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (done()) {
          finish();
          resolve();
        } else if (failOnEnd && this.peerEnded) {
          finish();
          reject(new Error(`connection ended after ${this.state.length} bytes while waiting for ${what}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} (received ${this.state.length} bytes)`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.state.wake.delete(check);
      };
      this.state.wake.add(check);
      check();
    });
  }
}

/**
 * Resolves once the peer has stopped taking `client`'s bytes (its queue here has not shrunk for 300 ms) or has
 * taken them all. Polled: the kernel gives no event for "the other side stopped reading".
 */
export async function peerStopsTaking(client: TestClient, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  let last = client.unsent;
  let since = performance.now();
  while (client.unsent > 0 && performance.now() < deadline) {
    await Bun.sleep(50);
    if (client.unsent !== last) [last, since] = [client.unsent, performance.now()];
    else if (performance.now() - since >= 300) return;
  }
}

/** Connects, sends `request`, optionally half-closes, and waits for `request.length` reply bytes. */
export async function exchange(
  port: number,
  request: Uint8Array | string,
  options: { halfClose?: boolean; host?: string; timeoutMs?: number } = {},
): Promise<Uint8Array> {
  const bytes = typeof request === "string" ? encode(request) : request;
  const client = await TestClient.connect(port, options.host);
  try {
    client.write(bytes);
    if (options.halfClose) await client.shutdown();
    return (await client.readAtLeast(bytes.length, options.timeoutMs)).slice();
  } finally {
    client.close();
  }
}

/**
 * Opens `count` connections to `port`, `batch` at a time. A connect completes in the kernel before the server has
 * accepted it, so batches alone do not stop a busy server's accept queue (512 in Bun) from overflowing into 1 s SYN
 * retransmits: with `greeting`, every client of a batch sends it and waits for as many bytes back before the next
 * batch starts, which paces the ramp to the server (those bytes stay in `received`).
 */
export async function connectMany(
  port: number,
  count: number,
  options: { batch?: number; host?: string; greeting?: string } = {},
): Promise<TestClient[]> {
  const batch = options.batch ?? 100;
  const greeting = options.greeting;
  const clients: TestClient[] = [];
  try {
    for (let start = 0; start < count; start += batch) {
      const size = Math.min(batch, count - start);
      const opened = await Promise.all(Array.from({ length: size }, () => TestClient.connect(port, options.host)));
      clients.push(...opened);
      if (greeting !== undefined) {
        await Promise.all(
          opened.map((client) => {
            client.write(greeting);
            return client.readAtLeast(client.receivedLength + encode(greeting).length);
          }),
        );
      }
    }
  } catch (error) {
    for (const client of clients) client.reset();
    throw error;
  }
  return clients;
}

/**
 * `count` clients that connect and reset at once (RST, as `SO_LINGER` 0 or a port scanner does), all in flight
 * together, so that many reset before the server's accept completes; with `first`, each sends those bytes (a
 * partial PROXY header, say) just before its RST. Resolves once every one has been reset, with how many could not
 * connect at all (a server that stopped listening, or died: the caller decides whether that is a failure).
 */
export async function resetStorm(
  port: number,
  count: number,
  options: { host?: string; first?: Uint8Array | string } = {},
): Promise<number> {
  let failed = 0;
  await Promise.all(
    Array.from({ length: count }, async () => {
      try {
        const socket = await Bun.connect({ hostname: options.host ?? "127.0.0.1", port, socket: { data() {} } });
        if (options.first !== undefined) socket.write(options.first);
        socket.terminate();
      } catch {
        failed++;
      }
    }),
  );
  return failed;
}

/** How a deliberately wrong echo server misbehaves (see `startFaultyEchoServer`). */
export type Fault =
  /** Echoes in uppercase, but the reply byte at stream offset `atOffset` has its case flipped (XOR 0x20). */
  | { kind: "flip"; atOffset: number }
  /** Echoes correctly until `afterBytes` bytes of the connection's stream have been answered, then sends RST. */
  | { kind: "reset"; afterBytes: number }
  /** Echoes correctly until `afterBytes` bytes have been answered, then closes cleanly (FIN). */
  | { kind: "close"; afterBytes: number }
  /** Accepts and reads, never replies. */
  | { kind: "silent" }
  /** Accepts and never reads: its receive buffer fills, then the sender's writes stall (a hung upstream). */
  | { kind: "deaf" }
  /** Holds every reply until `connections` clients are connected at the same time, then echoes normally. */
  | { kind: "barrier"; connections: number }
  /** Answers every chunk, on any connection, with the uppercase of the first chunk it ever received (a stale cache). */
  | { kind: "replay" };

export interface FaultyServer extends Disposable {
  readonly host: string;
  readonly port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  stop(): void;
}

interface FaultyConnection {
  /** 1-based, in accept order. */
  number: number;
  /** Replies held back until a barrier opens. */
  held: Uint8Array[];
  /** Reply bytes produced so far on this connection (the stream offset of the next one). */
  answered: number;
  pending: Uint8Array[];
}

/**
 * An uppercase echo server in the test process that misbehaves as `fault` says, on every connection or only on
 * the `onlyConnection`-th one (1-based, in accept order), so a test can check that a client notices and says so.
 * Honours partial writes like a real server should. `using` stops it (and closes its connections).
 */
export function startFaultyEchoServer(fault: Fault, onlyConnection?: number): FaultyServer {
  let accepted = 0;
  const connected = new Set<Socket<FaultyConnection>>();
  let released = false; // the barrier has opened
  let firstReply: Uint8Array | undefined; // for "replay"
  const send = (socket: Socket<FaultyConnection>, reply: Uint8Array): void =>
    void sendQueued(socket, socket.data.pending, reply);
  const listener = Bun.listen<FaultyConnection>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.data = { number: ++accepted, answered: 0, pending: [], held: [] };
        connected.add(socket);
        if (fault.kind === "deaf" && (onlyConnection === undefined || onlyConnection === accepted)) socket.pause();
        if (fault.kind === "barrier" && !released && connected.size >= fault.connections) {
          released = true;
          for (const waiting of connected) {
            for (const reply of waiting.data.held) send(waiting, reply);
            waiting.data.held = [];
          }
        }
      },
      close(socket) {
        connected.delete(socket);
      },
      data(socket, chunk) {
        const state = socket.data;
        const faulty = onlyConnection === undefined || onlyConnection === state.number;
        if (faulty && fault.kind === "silent") return;
        let reply = upperAscii(chunk);
        if (faulty && fault.kind === "replay") {
          firstReply ??= reply;
          const stale = new Uint8Array(reply.length);
          for (let i = 0; i < stale.length; i++) stale[i] = firstReply[i % firstReply.length]!;
          reply = stale;
        }
        if (faulty && fault.kind === "barrier" && !released) {
          state.held.push(reply);
          return;
        }
        if (faulty && (fault.kind === "reset" || fault.kind === "close")) {
          const allowed = Math.max(0, fault.afterBytes - state.answered);
          if (allowed < reply.length) {
            send(socket, reply.subarray(0, allowed));
            if (fault.kind === "reset") socket.terminate();
            else socket.end();
            return;
          }
        }
        if (faulty && fault.kind === "flip") {
          const index = fault.atOffset - state.answered;
          if (index >= 0 && index < reply.length) {
            reply = reply.slice();
            reply[index] = reply[index]! ^ 0x20;
          }
        }
        state.answered += reply.length;
        send(socket, reply);
      },
      drain(socket) {
        flushQueue(socket, socket.data.pending);
      },
    },
  });
  return {
    host: "127.0.0.1",
    port: listener.port,
    get accepted() {
      return accepted;
    },
    stop() {
      listener.stop(true);
    },
    [Symbol.dispose]() {
      listener.stop(true);
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Upstreams for the proxy tests, in-process so a test can stop and restart them in a moment.

interface EchoUpstreamConnection {
  queue: Uint8Array[];
  peerEnded: boolean;
  head: Uint8Array[];
  headLength: number;
  index: number;
}

export interface EchoUpstreamOptions {
  host?: string;
  port?: number;
  greeting?: string;
}

/** How many bytes of each connection an `EchoUpstream` keeps, for assertions on what arrived first (PROXY headers). */
const HEAD_BYTES = 4096;

/**
 * A careful echo server (ASCII a-z uppercased) running inside the test process: it honours partial writes (queue,
 * pause, flush on drain) and half-close (after the client's FIN it finishes its replies, then FINs), so a 64 MiB
 * transfer through a proxy is limited by the proxy, not by the upstream. `stop()` closes the port and every
 * connection; `restart()` listens again on the same port, for failover and health-check tests.
 */
export class EchoUpstream implements AsyncDisposable {
  /** Connections accepted since start (across restarts). */
  accepted = 0;
  /** The first bytes each connection sent (up to 4 KiB each), in order of arrival. */
  readonly heads: Uint8Array[] = [];
  private listener: TCPSocketListener<EchoUpstreamConnection> | undefined;
  private readonly sockets = new Set<Socket<EchoUpstreamConnection>>();
  private wake = new Set<() => void>();

  private constructor(
    readonly host: string,
    public port: number,
    private readonly greeting: Uint8Array | undefined,
  ) {}

  /**
   * `greeting`: bytes sent to each connection as soon as it is accepted, before any echo. Through a proxy, the
   * client receiving them is the event that says the proxy's upstream connection is open.
   */
  static start(options: EchoUpstreamOptions = {}): EchoUpstream {
    const greeting = options.greeting === undefined ? undefined : encode(options.greeting);
    const upstream = new EchoUpstream(options.host ?? "127.0.0.1", options.port ?? 0, greeting);
    upstream.listen();
    return upstream;
  }

  /** `host:port`, as the proxies' --upstream takes it. */
  get address(): string {
    return formatAddress(this);
  }

  get active(): number {
    return this.sockets.size;
  }

  get listening(): boolean {
    return this.listener !== undefined;
  }

  private listen(): void {
    const notify = (): void => {
      for (const wake of this.wake) wake();
    };
    this.listener = Bun.listen<EchoUpstreamConnection>({
      hostname: this.host,
      port: this.port,
      allowHalfOpen: true,
      socket: {
        open: (socket) => {
          socket.data = { queue: [], peerEnded: false, head: [], headLength: 0, index: this.heads.length };
          this.sockets.add(socket);
          this.accepted++;
          this.heads.push(new Uint8Array(0));
          if (this.greeting) socket.data.queue.push(this.greeting);
          flushEcho(socket);
          notify();
        },
        data: (socket, chunk) => {
          const state = socket.data;
          if (state.headLength < HEAD_BYTES) {
            state.head.push(chunk.slice(0, HEAD_BYTES - state.headLength));
            state.headLength += Math.min(chunk.length, HEAD_BYTES - state.headLength);
            this.heads[state.index] = concatBytes(state.head);
            notify();
          }
          state.queue.push(upperAscii(chunk));
          flushEcho(socket);
        },
        drain: (socket) => flushEcho(socket),
        end: (socket) => {
          socket.data.peerEnded = true;
          flushEcho(socket);
        },
        close: (socket) => {
          this.sockets.delete(socket);
          notify();
        },
        error: () => {},
      },
    });
    this.port = this.listener.port;
  }

  /** Stops listening (connects are refused from now on) and closes every open connection. */
  stop(): void {
    this.listener?.stop(true);
    this.listener = undefined;
    for (const socket of this.sockets) socket.terminate();
    this.sockets.clear();
  }

  /** Listens again on the same port. */
  restart(): void {
    if (!this.listener) this.listen();
  }

  /** Waits until `accepted` reaches `count`. */
  async waitAccepted(count: number, timeoutMs = 5000): Promise<void> {
    await this.until(() => this.accepted >= count, timeoutMs, `${count} accepted connections`);
  }

  until(done: () => boolean, timeoutMs: number, what: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!done()) return;
        finish();
        resolve();
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`echo upstream: timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.wake.delete(check);
      };
      this.wake.add(check);
      check();
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.stop();
  }
}

/** Starts an in-process `EchoUpstream` on a free port (or `port`). */
export function startEchoUpstream(options: EchoUpstreamOptions = {}): EchoUpstream {
  return EchoUpstream.start(options);
}

function flushEcho(socket: Socket<EchoUpstreamConnection>): void {
  const state = socket.data;
  const result = flushQueue(socket, state.queue);
  if (result === "closed") return;
  if (result === "pending") {
    socket.pause(); // stop reading until the client reads its replies: backpressure, not unbounded memory
    return;
  }
  socket.resume();
  if (state.peerEnded) socket.end();
}

export function concatBytes(chunks: readonly Uint8Array[]): Uint8Array {
  let length = 0;
  for (const chunk of chunks) length += chunk.length;
  const all = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    all.set(chunk, offset);
    offset += chunk.length;
  }
  return all;
}

/**
 * A listening socket that never accepts, with a backlog of 0, made with libc through bun:ffi (Linux). Once
 * `fill()` has parked a connection or two in its accept queue, the kernel drops further SYNs, so a connect to it
 * hangs until the connecting side gives up: the loopback stand-in for an unreachable host, for connect timeouts.
 */
export class Blackhole implements AsyncDisposable {
  private readonly parked: Socket[] = [];

  private constructor(
    private readonly fd: number,
    readonly port: number,
    private readonly closeFd: (fd: number) => void,
  ) {}

  static async open(): Promise<Blackhole> {
    const { dlopen, FFIType, ptr } = await import("bun:ffi");
    const libc = dlopen("libc.so.6", {
      socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
      bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
      listen: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
      getsockname: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
      close: { args: [FFIType.i32], returns: FFIType.i32 },
    });
    const fd = libc.symbols.socket(2 /* AF_INET */, 1 /* SOCK_STREAM */, 0);
    if (fd < 0) throw new Error("blackhole: socket() failed");
    const address = new Uint8Array(16); // struct sockaddr_in: family, port (big-endian), 127.0.0.1, zero padding
    new DataView(address.buffer).setUint16(0, 2, true);
    address.set([127, 0, 0, 1], 4);
    const length = new Uint32Array([16]);
    if (libc.symbols.bind(fd, ptr(address), 16) !== 0 || libc.symbols.listen(fd, 0) !== 0) {
      libc.symbols.close(fd);
      throw new Error("blackhole: bind() or listen() failed");
    }
    libc.symbols.getsockname(fd, ptr(address), ptr(length));
    const port = new DataView(address.buffer).getUint16(2, false);
    return new Blackhole(fd, port, (descriptor) => void libc.symbols.close(descriptor));
  }

  /** Parks connections in the accept queue until a new connect no longer completes within 200 ms. */
  async fill(): Promise<void> {
    for (let i = 0; i < 8; i++) {
      const attempt = Bun.connect({ hostname: "127.0.0.1", port: this.port, socket: { data() {}, error() {} } });
      const timedOut = Symbol("timeout");
      let timer: Timer | undefined;
      const result = await Promise.race([
        attempt,
        new Promise<typeof timedOut>((resolve) => (timer = setTimeout(() => resolve(timedOut), 200))),
      ]);
      clearTimeout(timer);
      if (result === timedOut) {
        attempt.then(
          (socket) => socket.terminate(),
          () => {},
        );
        return;
      }
      this.parked.push(result);
    }
    throw new Error("blackhole: the accept queue never filled");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const socket of this.parked) socket.terminate();
    this.closeFd(this.fd);
  }
}

/** `size` random bytes (crypto.getRandomValues fills at most 64 KiB per call). */
export function randomBytes(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let offset = 0; offset < size; offset += 65536) crypto.getRandomValues(bytes.subarray(offset, offset + 65536));
  return bytes;
}

export function sha256(bytes: Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
}

/**
 * Sends `data` through an echo path at `port` and reads the reply until it is complete or stops growing for
 * `stallMs` (a proxy that lost bytes never completes it). With `halfClose`, FIN follows the data and the reply
 * must end with the peer's FIN. `intact` is true when the reply is exactly upperAscii(data).
 */
export async function echoTransfer(
  port: number,
  data: Uint8Array,
  options: { halfClose?: boolean; stallMs?: number; host?: string } = {},
): Promise<{ intact: boolean; received: number; ended: boolean; seconds: number }> {
  const stallMs = options.stallMs ?? 1000;
  const started = performance.now();
  const client = await TestClient.connect(port, options.host);
  try {
    client.write(data);
    if (options.halfClose) void client.shutdown().catch(() => {});
    let seen = -1;
    while (client.receivedLength !== seen) {
      seen = client.receivedLength;
      try {
        if (options.halfClose) await client.readToEnd(stallMs);
        else await client.readAtLeast(data.length, stallMs);
        break;
      } catch {
        if (client.peerEnded) break; // closed early: nothing more will come
      }
    }
    const seconds = (performance.now() - started) / 1000;
    const received = client.receivedLength;
    const intact = received === data.length && sha256(client.received) === sha256(upperAscii(data));
    return { intact, received, ended: client.peerEnded, seconds };
  } finally {
    client.close();
  }
}

/**
 * Did the bytes a client sends the moment it connects (before the proxy can have reached its upstream) get
 * through? Sends "early", waits for the upstream to accept the proxy's connection, sends "|late", and checks
 * that the echo reads "EARLY|LATE" in that order.
 */
export async function earlyBytesKept(proxyPort: number, upstream: EchoUpstream): Promise<boolean> {
  const before = upstream.accepted;
  const client = await TestClient.connect(proxyPort);
  try {
    client.write("early");
    await upstream.waitAccepted(before + 1);
    client.write("|late");
    const first = await client.readAtLeast(5, 2000);
    if (decode(first.subarray(0, 5)) !== "EARLY") return false;
    return decode(await client.readAtLeast(10, 2000)) === "EARLY|LATE";
  } catch {
    return false;
  } finally {
    client.close();
  }
}
