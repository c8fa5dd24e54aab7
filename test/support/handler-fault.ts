// A bug on demand, for the tests only: preloaded into a stage (`BUN_OPTIONS="--preload <this file>"`, which the
// stage's worker processes inherit), it wraps Bun.listen so that the stage's own socket handlers throw as a bug in
// them would, and a test can check that one connection's exception costs that connection only.
//
//   HANDLER_FAULT_DATA=TEXT   a chunk containing TEXT makes the `data` handler throw before the stage sees it.
//   HANDLER_FAULT_OPEN=FILE   while FILE exists, the next accepted connection makes `open` throw before the stage's
//                             own `open` runs, so `socket.data` is still unset when Bun calls `error` and `close`.
//                             Whoever removes FILE first takes the fault: one connection, in one process.
//
// Nothing here runs in a stage started without these variables: Bun.listen is then left alone.

import { unlinkSync } from "node:fs";
import type { SocketHandler, TCPSocketListenOptions } from "bun";

const dataMarker = process.env.HANDLER_FAULT_DATA;
const openFile = process.env.HANDLER_FAULT_OPEN;

/** True once for the connection that takes the `open` fault (removing the file is atomic across processes). */
function takeOpenFault(): boolean {
  if (openFile === undefined) return false;
  try {
    unlinkSync(openFile);
    return true;
  } catch {
    return false;
  }
}

function contains(chunk: Uint8Array, marker: string): boolean {
  return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length).includes(marker);
}

if (dataMarker !== undefined || openFile !== undefined) {
  const listen = Bun.listen;
  const faulty = <Data>(options: TCPSocketListenOptions<Data>) => {
    const handlers: SocketHandler<Data> = { ...options.socket };
    const { open, data } = options.socket;
    handlers.open = (socket) => {
      if (takeOpenFault()) throw new Error("fault injected by the test in open()");
      return open?.(socket);
    };
    if (data !== undefined && dataMarker !== undefined) {
      handlers.data = (socket, chunk) => {
        if (contains(chunk, dataMarker)) throw new Error("fault injected by the test in data()");
        return data(socket, chunk);
      };
    }
    return listen({ ...options, socket: handlers });
  };
  (Bun as unknown as { listen: typeof faulty }).listen = faulty;
}
