// Stand-ins for time and for a child process, so that the arithmetic of grace periods and deadlines can be tested
// in-process, to the millisecond, whatever the load on the machine; real time keeps one end-to-end test each.

import type { Clock } from "../../lib/clock.ts";
import type { ChildLike } from "../../lib/processes.ts";

interface Pending {
  at: number;
  callback: () => void;
  id: number;
}

/**
 * A clock a test moves by hand (lib/clock.ts's Clock): nothing fires until `advance` says so, and each due timer
 * fires at its own time, in order, with the promise jobs it caused run before the next one.
 */
export class ManualClock implements Clock {
  private time = 0;
  private nextId = 1;
  private readonly pending: Pending[] = [];

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const timer = { at: this.time + Math.max(0, ms), callback, id: this.nextId++ };
    this.pending.push(timer);
    return timer.id;
  }

  clearTimeout(handle: unknown): void {
    const index = this.pending.findIndex((timer) => timer.id === handle);
    if (index >= 0) this.pending.splice(index, 1);
  }

  /** Timers not fired yet, as milliseconds from now. */
  get waiting(): number[] {
    return this.pending.map((timer) => timer.at - this.time).sort((a, b) => a - b);
  }

  /** Moves time forward by `ms`, firing every timer that falls due, each followed by the promise jobs it caused. */
  async advance(ms: number): Promise<void> {
    const target = this.time + ms;
    await settle();
    for (;;) {
      const due = this.pending.filter((timer) => timer.at <= target).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.pending.splice(this.pending.indexOf(due), 1);
      this.time = due.at;
      due.callback();
      await settle();
    }
    this.time = target;
  }
}

/** Lets every promise job queued so far (and those they queue) run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
  await new Promise<void>((resolve) => setImmediate(resolve));
}

/** How a FakeChild answers a signal: it exits after `afterMs` on the clock, never ("ignore"), or at once. */
export type Reaction = { afterMs: number } | "ignore" | "at once";

/**
 * A child process that is not one: it records the signals it gets and exits as told, on a ManualClock. SIGKILL
 * ends it at once unless `unkillable` (a process stuck in the kernel, which even SIGKILL does not end in time).
 */
export class FakeChild implements ChildLike {
  static nextPid = 900_000;
  readonly pid = FakeChild.nextPid++;
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  /** Each signal received, with the clock's time. */
  readonly signals: Array<{ signal: string; at: number }> = [];
  private readonly done = Promise.withResolvers<number>();
  readonly exited = this.done.promise;

  constructor(
    private readonly clock: ManualClock,
    private readonly onSignal: Partial<Record<NodeJS.Signals, Reaction>> = {},
    private readonly unkillable = false,
  ) {}

  kill(signal: NodeJS.Signals | number = "SIGTERM"): void {
    const name = typeof signal === "number" ? `signal ${signal}` : signal;
    this.signals.push({ signal: name, at: this.clock.now() });
    if (this.exitCode !== null || this.signalCode !== null) return;
    if (name === "SIGKILL") {
      if (!this.unkillable) this.die("SIGKILL");
      return;
    }
    const reaction = this.onSignal[name as NodeJS.Signals] ?? "at once";
    if (reaction === "ignore") return;
    if (reaction === "at once") return this.exit(0);
    this.clock.setTimeout(() => this.exit(0), reaction.afterMs);
  }

  /** Exits by itself with `code`. */
  exit(code: number): void {
    if (this.exitCode !== null || this.signalCode !== null) return;
    this.exitCode = code;
    this.done.resolve(code);
  }

  private die(signal: NodeJS.Signals): void {
    this.signalCode = signal;
    this.done.resolve(128 + (signal === "SIGKILL" ? 9 : 15));
  }
}
