// A hand-driven clock for code that takes one (the proxy stages' toxics): time moves only when the test says so,
// and every timer due on the way runs in order, so delays and pacing are checked to the millisecond, in-process,
// without waiting for them and without a loaded machine's noise.

interface Pending {
  at: number;
  order: number;
  callback: () => void;
}

export class ManualClock {
  private time = 0;
  private order = 0;
  private readonly timers = new Map<number, Pending>();
  /** Every delay handed to setTimer, in order: to check what reaches a real timer. */
  readonly requested: number[] = [];

  now(): number {
    return this.time;
  }

  setTimer(callback: () => void, ms: number): unknown {
    const id = ++this.order;
    this.requested.push(ms);
    this.timers.set(id, { at: this.time + ms, order: id, callback });
    return id;
  }

  clearTimer(timer: unknown): void {
    this.timers.delete(timer as number);
  }

  /** Timers waiting now. */
  get pending(): number {
    return this.timers.size;
  }

  /** Moves time forward by `ms`, running each timer that falls due on the way at its own time, in order. */
  advance(ms: number): void {
    const end = this.time + ms;
    for (;;) {
      let next: [number, Pending] | undefined;
      for (const entry of this.timers) {
        const [, timer] = entry;
        if (timer.at > end) continue;
        if (next === undefined || timer.at < next[1].at || (timer.at === next[1].at && timer.order < next[1].order)) {
          next = entry;
        }
      }
      if (next === undefined) break;
      this.timers.delete(next[0]);
      this.time = Math.max(this.time, next[1].at);
      next[1].callback();
    }
    this.time = end;
  }
}

/** A `random()` that returns `values` in turn (then the last one forever), and counts its calls. */
export function scripted(...values: number[]): (() => number) & { calls: number } {
  const random = Object.assign(() => values[Math.min(random.calls++, values.length - 1)] ?? 0.5, { calls: 0 });
  return random;
}
