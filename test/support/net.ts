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

  /** Stops reading: the kernel's receive buffer fills and the server's writes start to fall short. */
  pauseReading(): void {
    this.socket.pause();
  }

  resumeReading(): void {
    this.socket.resume();
  }

  /** Bytes queued here that the kernel has not taken yet. */
  get unsent(): number {
    let bytes = 0;
    for (const chunk of this.state.pending) bytes += chunk.length;
    return bytes;
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
