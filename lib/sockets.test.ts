// The write queue against a socket that takes what it is told to, and a real one that stops reading.

import { expect, test } from "bun:test";
import { flushQueue, portIsFree, queuedBytes, sendQueued, unusedPort, type Writable } from "./sockets.ts";

/** A socket whose kernel takes `room` bytes in total until given more; -1 once closed. */
class FakeSocket implements Writable {
  written: number[] = [];
  closed = false;
  constructor(public room: number) {}
  write(data: Uint8Array): number {
    if (this.closed) return -1;
    const taken = Math.min(this.room, data.length);
    this.room -= taken;
    this.written.push(...data.subarray(0, taken));
    return taken;
  }
}

const bytes = (...values: number[]): Uint8Array => new Uint8Array(values);

test("sendQueued writes at once when it can, queues the rest in order, flushQueue sends it on drain", () => {
  const socket = new FakeSocket(3);
  const queue: Uint8Array[] = [];
  expect(sendQueued(socket, queue, bytes(1, 2))).toBe("flushed");
  expect(sendQueued(socket, queue, bytes(3, 4, 5))).toBe("pending"); // 3 taken, 4 5 kept
  expect(sendQueued(socket, queue, bytes(6))).toBe("pending"); // behind the queue, not before it
  expect(queuedBytes(queue)).toBe(3);
  expect(flushQueue(socket, queue)).toBe("pending"); // still no room
  socket.room = 2;
  expect(flushQueue(socket, queue)).toBe("pending");
  expect(queue).toEqual([bytes(6)]);
  socket.room = 10;
  expect(flushQueue(socket, queue)).toBe("flushed");
  expect(socket.written).toEqual([1, 2, 3, 4, 5, 6]);
  socket.closed = true;
  expect(sendQueued(socket, queue, bytes(7))).toBe("closed");
  expect(flushQueue(socket, queue)).toBe("closed");
  expect(queuedBytes(queue)).toBe(1); // kept: the caller decides what a closed socket means
});

test("a real socket whose peer stops reading: everything arrives, in order, once it reads again", async () => {
  const total = 16 * 1024 * 1024;
  const data = new Uint8Array(total);
  for (let i = 0; i < total; i++) data[i] = i % 251;
  let received = 0;
  let inOrder = true;
  const accepted = Promise.withResolvers<{ resume(): void }>();
  const allReceived = Promise.withResolvers<void>();
  const listener = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.pause(); // not reading yet: the sender's kernel buffers fill
        accepted.resolve(socket);
      },
      data(_socket, chunk) {
        for (let i = 0; i < chunk.length; i++) if (chunk[i] !== (received + i) % 251) inOrder = false;
        received += chunk.length;
        if (received === total) allReceived.resolve();
      },
    },
  });
  const queue: Uint8Array[] = [];
  const client = await Bun.connect({
    hostname: "127.0.0.1",
    port: listener.port,
    socket: { data() {}, drain: (socket) => void flushQueue(socket, queue) },
  });
  try {
    const server = await accepted.promise;
    for (let offset = 0; offset < total; offset += 1024 * 1024)
      sendQueued(client, queue, data.subarray(offset, offset + 1024 * 1024));
    expect(queuedBytes(queue)).toBeGreaterThan(0); // the kernel could not take 16 MiB of an unread stream
    server.resume();
    await allReceived.promise;
    expect({ received, inOrder, queued: queuedBytes(queue) }).toEqual({ received: total, inOrder: true, queued: 0 });
  } finally {
    client.end();
    listener.stop(true);
  }
});

test("unusedPort is free and refuses connections; portIsFree says so, and not for a port in use", async () => {
  const port = unusedPort();
  expect(portIsFree(port)).toBe(true);
  await expect(Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } })).rejects.toThrow();
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  try {
    expect(portIsFree(listener.port)).toBe(false);
  } finally {
    listener.stop(true);
  }
});
