// The guided demo: an echo stage, optionally a proxy stage in front of it, a client against them, the client's
// summary, then everything stopped. Every process it starts is stopped on every path (success, failure, Ctrl-C).

import pc from "picocolors";
import { flushQueue, sendQueued } from "../lib/sockets.ts";
import { formatAddress } from "../lib/stages.ts";
import {
  type Catalogue,
  type Command,
  type RuleId,
  type Stage,
  stageCommand,
  stageHelp,
  stageOptions,
} from "./catalogue.ts";
import { GRACE_MS, type Outcome, Service, awaitWithGrace, describeOutcome, stopChild } from "./children.ts";

export interface DemoPlan {
  echo: Stage;
  proxy?: Stage;
  /** A `test/NNN-client*.ts` stage; without one the demo runs its own small check. */
  client?: Stage;
  connections: number;
}

export interface DemoReport {
  ok: boolean;
  interrupted: boolean;
  /** What the client printed as its summary (or the built-in check's result). */
  summary: string;
  /** Every process the demo started, for whoever wants to check they are gone. */
  pids: number[];
}

export interface DemoOptions {
  interrupted: AbortSignal;
  /** Where progress and the children's prefixed output go (the terminal, or a test's buffer). */
  print: (line: string) => void;
  colour: boolean;
  graceMs?: number;
}

const PREFIX_COLOURS: Record<string, (text: string) => string> = {
  echo: pc.cyan,
  proxy: pc.magenta,
  client: pc.yellow,
};

class Interrupted extends Error {}

/** Resolves with `promise`, or rejects with Interrupted as soon as `signal` is aborted. */
function unlessInterrupted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new Interrupted());
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(new Interrupted());
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

async function commandFor(
  catalogue: Catalogue,
  stage: Stage,
  values: Partial<Record<RuleId, string>>,
): Promise<Command> {
  return stageCommand(stage, stageOptions(stage, await stageHelp(catalogue, stage)), values);
}

export async function runDemo(catalogue: Catalogue, plan: DemoPlan, options: DemoOptions): Promise<DemoReport> {
  const { interrupted, print } = options;
  const graceMs = options.graceMs ?? GRACE_MS;
  const colour = (name: string, text: string): string =>
    options.colour ? (PREFIX_COLOURS[name] ?? pc.dim)(text) : text;
  const services: Service[] = [];
  const start = (name: string, command: Command): Service => {
    const prefix = colour(name, `${name.padEnd(6)}| `);
    // Children write to a pipe, so they would drop their colours; keep them when the menu's output has colour.
    // Without colour FORCE_COLOR must be absent, not empty: Bun's console.error colours for an empty one.
    const env = options.colour ? { FORCE_COLOR: "1", NO_COLOR: undefined } : { NO_COLOR: "1", FORCE_COLOR: undefined };
    const service = new Service(name, command, catalogue.root, (line) => print(`${prefix}${line}`), env);
    services.push(service);
    print(colour(name, `> ${name}: ${service.describe()}`));
    return service;
  };
  const report: DemoReport = { ok: false, interrupted: false, summary: "", pids: [] };
  try {
    const echo = start("echo", await commandFor(catalogue, plan.echo, { port: "0" }));
    let target = await unlessInterrupted(echo.waitForListening(interrupted), interrupted);
    if (plan.proxy) {
      const upstream = formatAddress(target);
      const proxy = start("proxy", await commandFor(catalogue, plan.proxy, { port: "0", upstream }));
      target = await unlessInterrupted(proxy.waitForListening(interrupted), interrupted);
    }
    if (plan.client) {
      const values = { host: target.host, port: String(target.port), connections: String(plan.connections) };
      const client = start("client", await commandFor(catalogue, plan.client, values));
      const code = await unlessInterrupted(client.child.exited, interrupted);
      await client.drained();
      // Killed by Ctrl-C's SIGINT, which can be handled here before the menu's own SIGINT handler has run.
      if (client.child.signalCode === "SIGINT") throw new Interrupted();
      report.ok = code === 0;
      report.summary =
        client.stdout.trim() || lastLines(client.stderr, 10) || `(the client printed nothing; exit code ${code})`;
      if (code !== 0) report.summary += `\n(client exited with code ${code})`;
    } else {
      print(colour("client", `> client: none yet (no test/NNN-client*.ts), so the menu checks by itself`));
      const check = await unlessInterrupted(builtInCheck(target.host, target.port), interrupted);
      report.ok = check.ok;
      report.summary = check.summary;
    }
  } catch (error) {
    const diedOfCtrlC = services.some((service) => service.child.signalCode === "SIGINT");
    if (error instanceof Interrupted || interrupted.aborted || diedOfCtrlC) {
      report.interrupted = true;
      report.summary = "interrupted (Ctrl-C)";
    } else {
      report.summary = (error as Error).message;
    }
  } finally {
    report.pids = services.map((service) => service.pid);
    // Last started, first stopped: the client, then the proxy, then the echo server. After a Ctrl-C they all had
    // the terminal's SIGINT already; otherwise they get one now. Either way: grace period, then SIGKILL.
    for (const service of services.reverse()) {
      const outcome: Outcome = report.interrupted
        ? await awaitWithGrace(service.child, graceMs)
        : await stopChild(service.child, "SIGINT", graceMs);
      await service.drained();
      print(colour(service.name, `> ${service.name} (pid ${service.pid}) ${describeOutcome(outcome)}`));
    }
  }
  return report;
}

function lastLines(text: string, count: number): string {
  return text.trimEnd().split("\n").slice(-count).join("\n").trim();
}

export const CHECK_LINE = "hello from the menu\n";

/** The demo's stand-in for a client stage: one connection, one line, the uppercase reply checked byte for byte. */
export async function builtInCheck(
  host: string,
  port: number,
  timeoutMs = 5000,
): Promise<{ ok: boolean; summary: string }> {
  const request = new TextEncoder().encode(CHECK_LINE);
  const expected = CHECK_LINE.toUpperCase();
  const started = performance.now();
  let received = new Uint8Array(0);
  let timer: Timer | undefined;
  try {
    const reply = await new Promise<Uint8Array>((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`no full reply within ${timeoutMs / 1000} s`)), timeoutMs);
      const unsent: Uint8Array[] = []; // write() may take part of the request: the rest waits for `drain`
      void Bun.connect({
        hostname: host,
        port,
        socket: {
          open: (socket) => void sendQueued(socket, unsent, request),
          drain: (socket) => void flushQueue(socket, unsent),
          data(socket, chunk) {
            const joined = new Uint8Array(received.length + chunk.length);
            joined.set(received);
            joined.set(chunk, received.length);
            received = joined;
            if (received.length >= request.length) {
              resolve(received); // first: end() runs the close handler at once
              socket.end();
            }
          },
          close() {
            reject(new Error(`connection closed after ${received.length} of ${request.length} bytes`));
          },
          connectError(_socket, error) {
            reject(error);
          },
        },
      }).catch(reject);
    });
    const text = new TextDecoder().decode(reply);
    const ms = (performance.now() - started).toFixed(1);
    if (text === expected) {
      return {
        ok: true,
        summary: `built-in check: sent ${JSON.stringify(CHECK_LINE)}, got ${JSON.stringify(text)} in ${ms} ms: OK`,
      };
    }
    return {
      ok: false,
      summary:
        `built-in check: sent ${JSON.stringify(CHECK_LINE)}, expected ${JSON.stringify(expected)}, ` +
        `got ${JSON.stringify(text)}`,
    };
  } catch (error) {
    return { ok: false, summary: `built-in check to ${host}:${port} failed: ${(error as Error).message}` };
  } finally {
    clearTimeout(timer);
  }
}
