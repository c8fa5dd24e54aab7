#!/usr/bin/env bun
/*
 * 001 - a naive pipe: one port forwarded to one upstream
 *
 * Adds:   the smallest TCP proxy. It listens on --host:--port (default 127.0.0.1:6000); for every client it opens
 *         a connection to --upstream HOST:PORT and copies bytes both ways: what the client sends goes to the
 *         upstream, what the upstream sends goes back to the client. When either side closes, so does the other.
 * Lacks:  it is naive on purpose, and this is exactly what breaks (002 to 005 fix each one):
 *         - an upstream that refuses the connection just closes the client, without a word; no logs (002);
 *         - bytes the client sends before the upstream connection is open are dropped: connecting takes at least
 *           one turn of the event loop, and a client that speaks first (most do) loses its first message (003);
 *         - write() in Bun does not buffer: it returns how many bytes the kernel took, and the rest is silently
 *           lost. Small messages fit; a big transfer is truncated and corrupted the moment one side reads more
 *           slowly than the other writes (003 queues the rest, waits for `drain`, pauses the sender);
 *         - half-close: when the client has finished sending (FIN, `nc -N`), the proxy closes both connections at
 *           once, so the upstream's reply never reaches it (004 forwards the FIN and keeps the other way open);
 *         - an exception in any handler (a bug) ends the process, and every client's connection with it: there is
 *           no `error` handler to contain it to one connection (002);
 *         - no timeouts (004), no limits (005).
 *
 * Try it: bun tcp_echo_server/005-bounded-concurrency.ts --port 5000
 *         bun tcp_proxy/001-naive-pipe.ts --port 6000 --upstream 127.0.0.1:5000
 *         nc 127.0.0.1 6000     (type a line: it comes back uppercased, through the proxy; Ctrl-C to quit)
 *         printf 'hello' | nc -N 127.0.0.1 6000     -> nothing: the early bytes and the half-close both break here
 */

import type { Socket, SocketHandler, TCPSocketListener } from "bun";
import { basename, relative } from "node:path";
import { parseArgs } from "node:util";

// The usage line names the command as it was started, so renaming or copying the stage changes nothing here:
// `bun PATH` for this file, or the name it was built under (`bun run build`: an executable or an installed command).
const THIS_COMMAND = import.meta.path.endsWith(".ts")
  ? `bun ${relative(process.cwd(), import.meta.path)}`
  : basename(import.meta.path);

// Naive, but still no stack trace for bad input: one line and a non-zero exit (2 = usage, 1 = cannot listen).
function fail(message: string, exitCode: number): never {
  console.error(`error: ${message}`);
  process.exit(exitCode);
}

let values;
try {
  ({ values } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "6000" },
      upstream: { type: "string", default: "127.0.0.1:5000" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  }));
} catch (error) {
  fail(`${(error as Error).message.replace(/\s*\n\s*/g, " ")} (see --help)`, 2);
}
if (values.help) {
  process.stdout.write(`Usage: ${THIS_COMMAND} [options]

Forwards every client to the upstream, both directions, naively (see the header for what breaks).

Options:
  --host HOST            address to listen on (default 127.0.0.1)
  --port PORT            port to listen on, 0 for a free one (default 6000)
  --upstream HOST:PORT   where to forward each client (default 127.0.0.1:5000)
  -h, --help             show this help
`);
  process.exit(0);
}

const separator = values.upstream.lastIndexOf(":");
const upstreamHost = values.upstream.slice(0, separator).replace(/^\[(.*)\]$/, "$1");
const upstreamPort = Number(values.upstream.slice(separator + 1));
const port = Number(values.port);
if (!/^\d+$/.test(values.port) || port > 65535)
  fail(`--port must be an integer from 0 to 65535, got "${values.port}"`, 2);
if (separator < 1) fail(`--upstream must be HOST:PORT, got "${values.upstream}"`, 2);
if (!Number.isInteger(upstreamPort) || upstreamPort < 1 || upstreamPort > 65535) {
  fail(`--upstream needs a port from 1 to 65535, got "${values.upstream}"`, 2);
}

/** Each accepted client holds its upstream socket once that connection is open (undefined until then). */
type Pair = { upstream: Socket<Pair> | undefined; client: Socket<Pair> | undefined };

const handlers: SocketHandler<Pair> = {
  open(client) {
    const pair: Pair = { upstream: undefined, client };
    client.data = pair; // a fresh object per client: the listen-level `data` is one object shared by all
    Bun.connect<Pair>({
      hostname: upstreamHost,
      port: upstreamPort,
      data: pair,
      socket: {
        data(_upstream, bytes) {
          pair.client?.write(bytes); // NAIVE: whatever the kernel does not take now is lost
        },
        close() {
          pair.client?.end();
          pair.client = undefined;
        },
      },
    }).then(
      (upstream) => {
        if (pair.client) pair.upstream = upstream;
        else upstream.end(); // the client left while we were connecting
      },
      () => pair.client?.end(), // refused or unreachable: hang up, say nothing
    );
  },
  data(client, bytes) {
    client.data.upstream?.write(bytes); // NAIVE: dropped if the upstream is not connected yet, or partly taken
  },
  close(client) {
    client.data.upstream?.end();
    client.data.client = undefined;
  },
};

let listener: TCPSocketListener<Pair>;
try {
  listener = Bun.listen<Pair>({ hostname: values.host, port, socket: handlers });
} catch (error) {
  const { code, message } = error as NodeJS.ErrnoException;
  fail(`cannot listen on ${values.host}:${port}: ${code === "EADDRINUSE" ? "address already in use" : message}`, 1);
}

console.log(`listening on ${values.host.includes(":") ? `[${values.host}]` : values.host}:${listener.port}`);
