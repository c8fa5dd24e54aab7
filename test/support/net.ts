// A small, careful TCP client for the tests: it keeps every byte it receives, honours partial writes (Bun's
// `write()` does not buffer) and can half-close, so assertions can be made on exact bytes.

import type { Socket } from "bun";

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
          state.length += chunk.length;
          notify();
        },
        drain(socket) {
          flush(socket, state);
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
    this.state.pending.push(typeof bytes === "string" ? encode(bytes) : bytes);
    flush(this.socket, this.state);
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

function flush(socket: Socket<ClientState>, state: ClientState): void {
  while (state.pending.length > 0) {
    const head = state.pending[0]!;
    const written = socket.write(head);
    if (written < 0) return; // closed: nothing more can be sent
    if (written < head.length) {
      state.pending[0] = head.subarray(written);
      return; // `drain` calls us again
    }
    state.pending.shift();
  }
  for (const wake of state.wake) wake();
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
  const sendQueued = (socket: Socket<FaultyConnection>): void => {
    const state = socket.data;
    while (state.pending.length > 0) {
      const head = state.pending[0]!;
      const written = socket.write(head);
      if (written < 0) return;
      if (written < head.length) {
        state.pending[0] = head.subarray(written);
        return;
      }
      state.pending.shift();
    }
  };
  const listener = Bun.listen<FaultyConnection>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.data = { number: ++accepted, answered: 0, pending: [], held: [] };
        connected.add(socket);
        if (fault.kind === "barrier" && !released && connected.size >= fault.connections) {
          released = true;
          for (const waiting of connected) {
            waiting.data.pending.push(...waiting.data.held);
            waiting.data.held = [];
            sendQueued(waiting);
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
            state.pending.push(reply.subarray(0, allowed));
            sendQueued(socket);
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
        state.pending.push(reply);
        sendQueued(socket);
      },
      drain(socket) {
        sendQueued(socket);
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

/** A port on 127.0.0.1 where nothing listens (it was free a moment ago): connecting to it is refused. */
export function unusedPort(): number {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = listener.port;
  listener.stop(true);
  return port;
}
