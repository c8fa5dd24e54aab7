// Time, as code that waits or gives up takes it: handed in, so that a test can run the arithmetic of a grace
// period or a deadline in-process on a clock it moves by hand, and keep real time for one end-to-end measurement.

export interface Clock {
  /** Milliseconds on a monotonic scale (only differences mean anything). */
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The real clock: performance.now() and the runtime's timers. */
export const systemClock: Clock = {
  now: () => performance.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as Timer),
};
