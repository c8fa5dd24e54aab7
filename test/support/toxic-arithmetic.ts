// The toxics' arithmetic, checked in-process with a hand-driven clock (test/support/clock.ts): when each piece is
// due under latency and jitter, how bandwidth paces, how a slicer cuts, that a lane keeps order, waits for a
// destination that has not taken the last piece, holds chunks rather than pieces, and never hands a timer more
// than it can wait. Registered by every proxy stage that exports this seam (its main() runs only when the file is
// run, so importing it starts nothing). The end-to-end tests beside each stage keep one measurement per toxic on
// real sockets, with bounds loose enough for a loaded machine; the exact numbers are checked here.

import { describe, expect, test } from "bun:test";
import { ManualClock, scripted } from "./clock.ts";

export interface Piece {
  bytes: Uint8Array;
  at: number;
}

export interface ToxicDescription {
  name: string;
  type: string;
  stream: string;
  toxicity: number;
  attributes: Record<string, number>;
}

interface LaneLike<T> {
  heldBytes: number;
  readonly empty: boolean;
  blocked: boolean;
  cut: boolean;
  push(chunk: Uint8Array, toxics: readonly T[]): void;
  unblock(): void;
  setStalled(stalled: boolean): void;
  stop(): void;
}

/** What a stage exports for these tests (T: its toxic type). */
export interface ToxicSeam<T extends ToxicDescription> {
  MAX_ATTRIBUTE: number;
  makeToxic(input: Record<string, unknown>): T;
  delayed(pieces: Iterable<Piece>, latency: number, jitter: number, random: () => number): Generator<Piece>;
  paced(pieces: Iterable<Piece>, rate: number, pace: { at: number }): Generator<Piece>;
  sliced(
    pieces: Iterable<Piece>,
    averageSize: number,
    sizeVariation: number,
    delayUs: number,
    random: () => number,
  ): Generator<Piece>;
  Lane: new (
    deliver: (bytes: Uint8Array) => boolean,
    progressed: () => void,
    clock?: ManualClock,
    random?: () => number,
  ) => LaneLike<T>;
}

/** How many bytes make a KB in the stage's bandwidth toxic (1024 in 007's KiB, 1000 as toxiproxy counts). */
export interface ArithmeticOptions {
  /** How many bytes make a KB in the stage's bandwidth toxic: 1024 (the lab's KiB) or 1000 as toxiproxy counts. */
  bytesPerKB: number;
  /** "toxiproxy" (014 on): integer attributes, negative ones accepted (meaning 0), as toxiproxy reads them. */
  semantics?: "lab" | "toxiproxy";
}

const bytes = (count: number, fill = 0x61): Uint8Array => new Uint8Array(count).fill(fill);

export function toxicArithmeticTests<T extends ToxicDescription>(
  stage: string,
  load: () => Promise<ToxicSeam<T>>,
  options: ArithmeticOptions,
): void {
  describe(`${stage}: toxic arithmetic, in-process with a hand-driven clock`, () => {
    const setup = async () => {
      const seam = await load();
      const clock = new ManualClock();
      const delivered: { at: number; bytes: Uint8Array }[] = [];
      let accept = true;
      const lane = new seam.Lane(
        (piece) => {
          delivered.push({ at: clock.now(), bytes: piece });
          return accept;
        },
        () => {},
        clock,
        scripted(0.5),
      );
      const toxic = (type: string, attributes: Record<string, number>, name?: string) =>
        seam.makeToxic({ type, stream: "downstream", attributes, ...(name ? { name } : {}) });
      return { seam, clock, lane, delivered, toxic, refuse: () => (accept = false), accept: () => (accept = true) };
    };

    test("latency: latency ms later, jitter spread evenly around it, never before the bytes came", async () => {
      const { seam } = await setup();
      const at = (latency: number, jitter: number, random: number) =>
        [...seam.delayed([{ bytes: bytes(1), at: 1000 }], latency, jitter, () => random)][0]!.at;
      expect(at(100, 0, 0.3)).toBe(1100);
      expect(at(100, 20, 0)).toBe(1080); // random() in [0, 1): -jitter ...
      expect(at(100, 20, 0.5)).toBe(1100);
      expect(at(100, 20, 0.75)).toBe(1110); // ... up to +jitter
      expect(at(10, 50, 0)).toBe(1000); // jitter larger than the latency: at once, not in the past
    });

    test("bandwidth: 10 ms worth per piece, each due when the bytes before it have gone through", async () => {
      const { seam } = await setup();
      const rate = 100; // KB/s
      const perMs = (rate * options.bytesPerKB) / 1000;
      const pace = { at: -Infinity };
      const first = [...seam.paced([{ bytes: bytes(10 * perMs * 10), at: 0 }], rate, pace)];
      expect(first.map((piece) => piece.bytes.length)).toEqual(new Array(10).fill(10 * perMs));
      expect(first.map((piece) => Math.round(piece.at))).toEqual([10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
      // Bytes that come while earlier ones are still being paced queue behind them; after a pause, from when they came.
      expect([...seam.paced([{ bytes: bytes(perMs * 10), at: 50 }], rate, pace)].map((p) => p.at)).toEqual([110]);
      expect([...seam.paced([{ bytes: bytes(perMs * 10), at: 500 }], rate, pace)].map((p) => p.at)).toEqual([510]);
    });

    test("slicer: average_size +- size_variation bytes, delay microseconds apart, every byte once", async () => {
      const { seam } = await setup();
      const data = Uint8Array.from({ length: 100 }, (_, i) => i);
      const even = [...seam.sliced([{ bytes: data, at: 0 }], 10, 0, 1000, () => 0.5)];
      expect(even.map((piece) => piece.bytes.length)).toEqual(new Array(10).fill(10));
      expect(even.map((piece) => piece.at)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      const small = [...seam.sliced([{ bytes: data, at: 0 }], 10, 5, 0, () => 0)];
      expect(small.map((piece) => piece.bytes.length)).toEqual(new Array(20).fill(5));
      const tiny = [...seam.sliced([{ bytes: data, at: 0 }], 1, 5, 0, () => 0)];
      expect(tiny).toHaveLength(100); // never a piece of 0 bytes (or less)
      const joined = Uint8Array.from(small.flatMap((piece) => [...piece.bytes]));
      expect(joined).toEqual(data);
    });

    test("a lane delivers at the due time, not a millisecond before", async () => {
      const { clock, lane, delivered, toxic } = await setup();
      lane.push(bytes(5), [toxic("latency", { latency: 300 })]);
      clock.advance(299);
      expect(delivered).toHaveLength(0);
      expect(lane.heldBytes).toBe(5);
      clock.advance(1);
      expect(delivered.map((piece) => piece.at)).toEqual([300]);
      expect(lane.empty).toBe(true);
    });

    test("a lane keeps order: a piece drawn earlier by jitter waits for the one before it", async () => {
      const seam = await (await setup()).seam;
      const clock = new ManualClock();
      const delivered: string[] = [];
      const lane = new seam.Lane(
        (piece) => {
          delivered.push(`${new TextDecoder().decode(piece)}@${clock.now()}`);
          return true;
        },
        () => {},
        clock,
        scripted(0.99, 0), // the first chunk gets about +jitter, the second -jitter
      );
      const toxics = [seam.makeToxic({ type: "latency", attributes: { latency: 100, jitter: 50 } })];
      lane.push(new TextEncoder().encode("a"), toxics);
      clock.advance(10);
      lane.push(new TextEncoder().encode("b"), toxics);
      clock.advance(1000);
      expect(delivered).toEqual(["a@149", "b@149"]);
    });

    test("a lane waits for a destination that did not take the last piece, and goes on when it drains", async () => {
      const { clock, lane, delivered, toxic, refuse, accept } = await setup();
      lane.push(bytes(30), [toxic("slicer", { average_size: 10, delay: 0 })]);
      refuse();
      clock.advance(100);
      expect(delivered).toHaveLength(1); // the first piece went (partly queued there); the others wait here
      expect(lane.blocked).toBe(true);
      expect(lane.heldBytes).toBe(20);
      accept();
      lane.unblock();
      clock.advance(100);
      expect(delivered.map((piece) => piece.bytes.length)).toEqual([10, 10, 10]);
    });

    test("a lane holds chunks, not pieces: a 1 MiB chunk for a 1-byte slicer is cut one piece at a time", async () => {
      const { seam } = await setup();
      const clock = new ManualClock();
      const random = scripted(0.5);
      let pieces = 0;
      const lane = new seam.Lane(
        () => {
          pieces++;
          return true;
        },
        () => {},
        clock,
        random,
      );
      lane.push(bytes(1024 * 1024), [seam.makeToxic({ type: "slicer", attributes: { average_size: 1, delay: 1000 } })]);
      expect(lane.heldBytes).toBe(1024 * 1024);
      expect(random.calls).toBeLessThanOrEqual(2); // one piece made (and perhaps the next), not a million
      clock.advance(10);
      expect(pieces).toBe(11); // at 0, 1, ..., 10 ms
      expect(random.calls).toBeLessThanOrEqual(13);
    });

    test("no timer is handed more than 2^31-1 ms: delays that add up past it sleep again", async () => {
      const { seam, clock, lane, delivered, toxic } = await setup();
      const max = seam.MAX_ATTRIBUTE;
      expect(max).toBe(2 ** 31 - 1);
      lane.push(bytes(1), [toxic("latency", { latency: max }, "first"), toxic("latency", { latency: max }, "second")]);
      clock.advance(max);
      expect(delivered).toHaveLength(0);
      clock.advance(max);
      expect(delivered.map((piece) => piece.at)).toEqual([2 * max]);
      expect(Math.max(...clock.requested)).toBeLessThanOrEqual(max);
    });

    test("limit_data: counted as bytes come, the rest dropped before it is held", async () => {
      const { clock, lane, delivered, toxic } = await setup();
      const limit = [toxic("limit_data", { bytes: 25 })];
      lane.push(bytes(10), limit);
      lane.push(bytes(10), limit);
      expect(lane.cut).toBe(false);
      lane.push(bytes(10), limit);
      expect(lane.cut).toBe(true);
      expect(lane.heldBytes).toBe(25);
      clock.advance(1);
      expect(delivered.map((piece) => piece.bytes.length)).toEqual([10, 10, 5]);
    });

    test("every timer attribute is range-checked with the reason", async () => {
      const { seam } = await setup();
      const attempt = (type: string, attributes: Record<string, unknown>) => () => seam.makeToxic({ type, attributes });
      if (options.semantics === "toxiproxy") {
        const range = (key: string) => new RegExp(`${key} must be an integer from -2147483647 to 2147483647`);
        expect(attempt("latency", { latency: 2 ** 31 })).toThrow(range("latency"));
        expect(attempt("latency", { latency: -(2 ** 31) })).toThrow(range("latency"));
        expect(attempt("latency", { jitter: -1 })).not.toThrow(); // toxiproxy takes it, and it means none
        expect(attempt("timeout", { timeout: 1e12 })).toThrow(range("timeout"));
        expect(attempt("reset_peer", { timeout: Infinity })).toThrow(/timeout must be an integer/);
        expect(attempt("slicer", { delay: 2 ** 31 })).toThrow(range("delay"));
        expect(attempt("latency", { latency: "100" })).toThrow(/latency must be an integer/);
        expect(attempt("latency", { latency: 1.5 })).toThrow(/latency must be an integer/);
        expect(attempt("bandwidth", { rate: -1 })).toThrow(/rate must be an integer from 0/); // toxiproxy panics
        expect(attempt("latency", { latency: 2 ** 31 - 1 })).not.toThrow();
        return;
      }
      expect(attempt("latency", { latency: 2 ** 31 })).toThrow(/latency must be a number from 0 to 2147483647/);
      expect(attempt("latency", { jitter: -1 })).toThrow(/jitter must be a number from 0 to 2147483647/);
      expect(attempt("timeout", { timeout: 1e12 })).toThrow(/timeout must be a number from 0 to 2147483647/);
      expect(attempt("reset_peer", { timeout: Infinity })).toThrow(/timeout must be a number/);
      expect(attempt("slicer", { delay: 2 ** 31 })).toThrow(/delay must be a number from 0 to 2147483647/);
      expect(attempt("latency", { latency: "100" })).toThrow(/latency must be a number/);
      expect(attempt("latency", { latency: 2 ** 31 - 1 })).not.toThrow();
    });
  });
}
