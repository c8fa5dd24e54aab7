// `COMMAND --healthcheck [TARGET]`: the health check built into every command (`bun run build` puts it in front of
// each stage), for container images that have no shell, curl or nc. One line on stdout (healthy) or stderr (not),
// exit 0 or 1, as Docker's HEALTHCHECK expects (2 is reserved there, so a usage error also exits 1).
//
//   HOST:PORT                 one verified echo exchange: a line sent, its uppercase read back in full
//   http://HOST:PORT/PATH     one GET; any answer below 500 is healthy (the process is up and serving HTTP)
//   (none)                    HOST:PORT from the environment variables HOST and PORT, the ones the echo server
//                             reads, so `docker run -e PORT=7000` needs no change to the check; a wildcard HOST
//                             (0.0.0.0, ::) is checked on loopback
// With ACCEPT_PROXY set (an echo server behind a balancer, from stage 015), the exchange starts with a PROXY v2
// LOCAL header, as a balancer's own health check does: a server that requires the header then answers it.
//
// Stages stay self-contained: this lives outside them, in the launcher the build generates.

const TIMEOUT_MS = 3000;

export interface HealthResult {
  healthy: boolean;
  message: string;
}

/** The target `--healthcheck` checks when given none: the echo server's own HOST and PORT. */
export function targetFromEnvironment(env: Record<string, string | undefined>): string {
  const host = env.HOST || "127.0.0.1";
  const port = env.PORT || "5000";
  const loopback = host === "0.0.0.0" ? "127.0.0.1" : host === "::" || host === "[::]" ? "::1" : host;
  return loopback.includes(":") ? `[${loopback}]:${port}` : `${loopback}:${port}`;
}

/** HOST:PORT (IPv6 in brackets) -> host and port, or undefined if it is not one. */
function parseAddress(text: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  const port = Number(match?.[3]);
  if (!match || port < 1 || port > 65535) return undefined;
  return { host: (match[1] ?? match[2])!, port };
}

/** The PROXY protocol v2 header of a balancer's own connection (command LOCAL, no addresses). */
const PROXY_V2_LOCAL = new Uint8Array([
  ...[0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a], // the signature
  0x20, // version 2, command LOCAL
  0x00, // no address family
  0x00, // no address block: length 0
  0x00,
]);

/** Does the echo server require a PROXY header (its ACCEPT_PROXY variable, as it reads it)? */
export function requiresProxyHeader(env: Record<string, string | undefined>): boolean {
  return ["1", "true", "yes"].includes((env.ACCEPT_PROXY ?? "").toLowerCase());
}

/**
 * One echo exchange with the server at `host:port`: the reply must be the probe, uppercased, byte for byte. With
 * `proxyHeader`, a PROXY v2 LOCAL header goes first (and is not part of the reply).
 */
function echoExchange(host: string, port: number, timeoutMs: number, proxyHeader = false): Promise<HealthResult> {
  const probe = `healthcheck ${process.pid} ${Date.now()}\n`;
  const expected = probe.toUpperCase();
  const started = performance.now();
  return new Promise((resolvePromise) => {
    let received = "";
    let done = false;
    const finish = (healthy: boolean, message: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolvePromise({ healthy, message });
    };
    const timer = setTimeout(
      () => finish(false, `${host}:${port}: no full echo within ${timeoutMs} ms (got ${received.length} bytes)`),
      timeoutMs,
    );
    Bun.connect({
      hostname: host,
      port,
      socket: {
        open(socket) {
          if (proxyHeader) socket.write(PROXY_V2_LOCAL);
          socket.write(probe); // a few dozen bytes: the kernel takes them whole
        },
        data(socket, chunk) {
          received += new TextDecoder().decode(chunk);
          if (received.length < expected.length) return;
          const ms = Math.round(performance.now() - started);
          if (received === expected) finish(true, `${host}:${port} echoed ${expected.length} bytes in ${ms} ms`);
          else finish(false, `${host}:${port} answered ${JSON.stringify(received)}, not ${JSON.stringify(expected)}`);
          socket.end(); // after finish(): end() runs the close handler at once
        },
        close() {
          finish(false, `${host}:${port} closed the connection before the whole echo`);
        },
        error(_socket, error) {
          finish(false, `${host}:${port}: ${error.message}`);
        },
      },
    }).catch((error: Error & { code?: string }) => finish(false, `${host}:${port}: ${error.code ?? error.message}`));
  });
}

async function httpGet(url: string, timeoutMs: number): Promise<HealthResult> {
  const started = performance.now();
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), redirect: "manual" });
    await response.arrayBuffer();
    const ms = Math.round(performance.now() - started);
    return { healthy: response.status < 500, message: `${url} answered ${response.status} in ${ms} ms` };
  } catch (error) {
    const { name, code, message } = error as Error & { code?: string };
    const why = name === "TimeoutError" ? `no answer within ${timeoutMs} ms` : (code ?? message);
    return { healthy: false, message: `${url}: ${why}` };
  }
}

/** Checks `target` (see the top of this file); rejects only for a target that is neither form. */
export async function check(target: string, timeoutMs = TIMEOUT_MS, proxyHeader = false): Promise<HealthResult> {
  if (/^https?:\/\//.test(target)) return httpGet(target, timeoutMs);
  const address = parseAddress(target);
  if (address === undefined) throw new Error(`--healthcheck takes HOST:PORT or http://HOST:PORT/PATH, got "${target}"`);
  return echoExchange(address.host, address.port, timeoutMs, proxyHeader);
}

/** `--healthcheck [TARGET]` as the launcher calls it: prints one line and returns the exit code. */
export async function healthcheckMain(args: string[], env: Record<string, string | undefined>): Promise<number> {
  if (args.length > 1) {
    console.error("unhealthy: --healthcheck takes at most one target: HOST:PORT or http://HOST:PORT/PATH");
    return 1;
  }
  try {
    const target = args[0] ?? targetFromEnvironment(env);
    const { healthy, message } = await check(target, TIMEOUT_MS, requiresProxyHeader(env));
    if (healthy) console.log(`healthy: ${message}`);
    else console.error(`unhealthy: ${message}`);
    return healthy ? 0 : 1;
  } catch (error) {
    console.error(`unhealthy: ${(error as Error).message}`);
    return 1;
  }
}
