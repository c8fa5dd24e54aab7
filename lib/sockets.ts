// Socket helpers for the tooling: a free port, and the write queue every careful Bun socket needs.
//
// Bun's socket.write() does not buffer: it returns how many bytes the kernel took (maybe fewer, 0 when its buffer
// is full, -1 once the socket is closed). What it did not take must be kept, in order, and written again on
// `drain`, which fires only after a short write. These helpers keep it in a plain array of chunks.

/** The part of a Bun socket the write queue uses. */
export interface Writable {
  write(data: Uint8Array): number;
}

/** What `flushQueue` left: everything written, bytes still waiting for `drain`, or a closed socket. */
export type FlushResult = "flushed" | "pending" | "closed";

/** Writes the queued chunks, oldest first, until the kernel takes less than offered; the rest stays queued. */
export function flushQueue(socket: Writable, queue: Uint8Array[]): FlushResult {
  while (queue.length > 0) {
    const head = queue[0]!;
    const written = socket.write(head);
    if (written < 0) return "closed"; // nothing more can be sent
    if (written < head.length) {
      queue[0] = head.subarray(written);
      return "pending"; // `drain` is the time to call this again
    }
    queue.shift();
  }
  return "flushed";
}

/**
 * Sends `bytes` after whatever is queued: written at once when the queue is empty, and what the kernel does not
 * take is queued (on a closed socket, all of it, as `flushQueue` leaves it). Returns what `flushQueue` would.
 */
export function sendQueued(socket: Writable, queue: Uint8Array[], bytes: Uint8Array): FlushResult {
  if (queue.length > 0) {
    queue.push(bytes);
    return "pending";
  }
  const written = socket.write(bytes);
  if (written < 0) {
    queue.push(bytes);
    return "closed";
  }
  if (written < bytes.length) {
    queue.push(bytes.subarray(written));
    return "pending";
  }
  return "flushed";
}

/** Total bytes waiting in `queue`. */
export function queuedBytes(queue: readonly Uint8Array[]): number {
  let bytes = 0;
  for (const chunk of queue) bytes += chunk.length;
  return bytes;
}

/** A port on 127.0.0.1 where nothing listens (it was free a moment ago, and may be taken again a moment later). */
export function unusedPort(): number {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = listener.port;
  listener.stop(true);
  return port;
}

/** True if `port` can be bound on 127.0.0.1 right now (it may be taken again a moment later). */
export function portIsFree(port: number): boolean {
  try {
    Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } }).stop(true);
    return true;
  } catch {
    return false;
  }
}
