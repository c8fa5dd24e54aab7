// Helpers for the echo stages that run worker processes under a supervisor (011 on): which worker has which pid,
// and a strict reading of their Prometheus metrics (012 on).

import { expect } from "bun:test";
import type { Running } from "./process.ts";

/** Worker index -> pid, from the supervisor's "worker N started (pid P)" lines (the latest one per index). */
export function workerPids(server: Running): Map<number, number> {
  const pids = new Map<number, number>();
  for (const [, index, pid] of server.stderr.text.matchAll(/worker (\d+) started \(pid (\d+)\)/g))
    pids.set(Number(index), Number(pid));
  return pids;
}

/**
 * Parses Prometheus text exposition format 0.0.4 strictly enough to catch a malformed endpoint: every line is a
 * HELP, a TYPE or a sample; every sample belongs to a family whose TYPE came first; a family's samples are together.
 * Returns each sample's value under `name{labels}` exactly as written.
 */
export function parsePrometheus(text: string): Map<string, number> {
  const NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*";
  const LABEL = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\.)*"`; // name="value", backslash escapes allowed
  const LABELS = `\\{(?:${LABEL}(?:,${LABEL})*)?\\}`;
  const sample = new RegExp(`^(${NAME})(${LABELS})? (-?[0-9.eE+-]+|NaN|[+-]Inf)$`);
  const types = new Map<string, string>();
  const finished = new Set<string>();
  const samples = new Map<string, number>();
  let current = "";
  expect(text.endsWith("\n")).toBe(true);
  for (const line of text.slice(0, -1).split("\n")) {
    const help = new RegExp(`^# HELP (${NAME}) .+$`).exec(line);
    const type = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`).exec(line);
    const match = sample.exec(line);
    if (help) continue;
    if (type) {
      expect(types.has(type[1]!)).toBe(false); // one TYPE per family
      if (current !== "") finished.add(current);
      current = type[1]!;
      types.set(current, type[2]!);
      if (type[2] === "counter") expect(current).toEndWith("_total");
      continue;
    }
    if (!match) throw new Error(`not Prometheus text: ${JSON.stringify(line)}`);
    expect(match[1]).toBe(current); // the sample follows its own TYPE line, with its family's other samples
    expect(finished.has(match[1]!)).toBe(false);
    samples.set(`${match[1]}${match[2] ?? ""}`, Number(match[3]));
  }
  return samples;
}

export async function scrape(url: string): Promise<Map<string, number>> {
  const response = await fetch(url);
  expect(response.status).toBe(200);
  expect(response.headers.get("content-type")).toStartWith("text/plain; version=0.0.4");
  return parsePrometheus(await response.text());
}
