#!/usr/bin/env bun
/*
 * The chaos run: the project used on itself, with faults on purpose, to show that what arrives is still right.
 *
 *   load generator (test/003) --> last proxy stage, with toxics --> last echo stage, 2 workers, killed now and then
 *
 * The proxy adds latency with jitter toward the client, slices the client's bytes into small delayed pieces toward
 * the server and caps the bandwidth toward the client; every few seconds one echo worker is killed with SIGKILL
 * (its supervisor replaces it). Load runs in rounds of fresh connections (a connection whose worker died is over).
 * It passes when:
 *   - every reply that arrived was exact (the load generator checks each byte: no mismatch),
 *   - every error is one a killed worker explains (the connection reset or closed), none timed out or unclassified,
 *   - a last round after the kills stop has no error at all (everything recovered),
 *   - nothing leaks: the proxy's open files come back to where they started, the echo server is back to its
 *     supervisor and 2 workers, and the proxy's memory stayed under a bound.
 *
 * Usage: bun test/chaos.ts [--duration 30s] [--connections 40] [--kill-every 4s] [--json]
 *        bun run soak                          (the same, for 10 minutes; --duration to choose)
 * The test (test/chaos.test.ts) runs it for about 30 s.
 */

import { readdirSync } from "node:fs";
import { parseArgs } from "node:util";
import { lastStage } from "../lib/stages.ts";
import { descendants, memoryKiB, run, startStage } from "./support/process.ts";

const LOAD = "test/003-load-generator.ts";
const WORKERS = 2;
const ROUND_SECONDS = 3;
/** Errors a killed worker explains: its connections were reset or closed under the client. */
const EXPLAINED = new Set(["reset", "closed"]);
/** The proxy's memory may grow this much over its idle size (lanes are bounded at 1 MiB each, 40 connections). */
const MEMORY_BOUND_MIB = 160;

const TOXICS = [
  "latency:downstream:latency=20,jitter=10",
  "slicer:upstream:average_size=24,size_variation=16,delay=200",
  "bandwidth:downstream:rate=1024",
];

interface Options {
  durationSeconds: number;
  connections: number;
  killEverySeconds: number;
  json: boolean;
}

interface LoadResult {
  messages: number;
  errors: Record<string, number>;
}

interface Report {
  echo: string;
  proxy: string;
  toxics: string[];
  durationSeconds: number;
  rounds: number;
  messages: number;
  workerKills: number;
  errors: Record<string, number>;
  finalRound: LoadResult;
  proxyOpenFiles: { before: number; after: number };
  proxyRssMiB: { idle: number; peak: number };
  echoProcesses: number;
  violations: string[];
}

class UsageError extends Error {}

function parseSeconds(text: string, flag: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text);
  if (!match) throw new UsageError(`${flag} must be a duration like 30, 30s, 500ms or 10m, got "${text}"`);
  const unit = match[2] ?? "s";
  return Number(match[1]) * (unit === "ms" ? 0.001 : unit === "m" ? 60 : 1);
}

function parseOptions(argv: string[]): Options | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        duration: { type: "string", default: "30s" },
        connections: { type: "string", default: "40" },
        "kill-every": { type: "string", default: "4s" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
    }));
  } catch (error) {
    throw new UsageError((error as Error).message.replace(/\s*\n\s*/g, " "));
  }
  if (values.help) return "help";
  const connections = Number(values.connections);
  if (!/^\d+$/.test(values.connections) || connections < 1 || connections > 1000) {
    throw new UsageError(`--connections must be an integer from 1 to 1000, got "${values.connections}"`);
  }
  const durationSeconds = parseSeconds(values.duration, "--duration");
  if (durationSeconds < ROUND_SECONDS * 2) throw new UsageError(`--duration must be at least ${ROUND_SECONDS * 2}s`);
  const killEverySeconds = parseSeconds(values["kill-every"], "--kill-every");
  if (killEverySeconds < 0.5) throw new UsageError("--kill-every must be at least 0.5s");
  return { durationSeconds, connections, killEverySeconds, json: values.json };
}

const openFiles = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;

async function loadRound(port: number, connections: number): Promise<LoadResult> {
  const args = ["-c", String(connections), "-d", `${ROUND_SECONDS}s`, "--timeout", "5s", "--port", String(port)];
  await using load = run(LOAD, [...args, "--json"]);
  await load.waitExit((ROUND_SECONDS + 15) * 1000);
  const text = await load.stdout.ended();
  try {
    return JSON.parse(text) as LoadResult;
  } catch {
    throw new Error(`the load generator printed no JSON:\n${text}\n${load.stderr.text}`);
  }
}

async function chaos(options: Options): Promise<Report> {
  const echoFile = lastStage("tcp_echo_server");
  const proxyFile = lastStage("tcp_proxy");
  const quiet = ["--port", "0", "--log-level", "error"];
  await using echo = await startStage(echoFile, [...quiet, "--workers", String(WORKERS)]);
  const toxicFlags = TOXICS.flatMap((toxic) => ["--toxic", toxic]);
  await using proxy = await startStage(proxyFile, [...quiet, "--upstream", `127.0.0.1:${echo.port}`, ...toxicFlags]);

  const violations: string[] = [];
  const filesBefore = openFiles(proxy.pid);
  const idleRss = memoryKiB(proxy.pid).rss;
  let peakRss = idleRss;
  const sampler = setInterval(() => {
    peakRss = Math.max(peakRss, memoryKiB(proxy.pid).rss);
  }, 200);

  // One worker killed every --kill-every seconds, chosen at random among the supervisor's children.
  let workerKills = 0;
  const killer = setInterval(() => {
    const workers = descendants(echo.pid);
    const victim = workers[Math.floor(Math.random() * workers.length)];
    if (victim === undefined) return;
    try {
      process.kill(victim, "SIGKILL");
      workerKills++;
    } catch {
      // it exited meanwhile
    }
  }, options.killEverySeconds * 1000);

  const errors: Record<string, number> = {};
  let messages = 0;
  let rounds = 0;
  const deadline = performance.now() + (options.durationSeconds - ROUND_SECONDS) * 1000;
  try {
    while (performance.now() < deadline) {
      const result = await loadRound(proxy.port, options.connections);
      rounds++;
      messages += result.messages;
      for (const [name, count] of Object.entries(result.errors)) {
        if (name !== "total" && count > 0) errors[name] = (errors[name] ?? 0) + count;
      }
      if (result.messages === 0) violations.push(`round ${rounds}: no message got through`);
    }
  } finally {
    clearInterval(killer);
  }

  // The kills are over: once the supervisor is back to its workers, a round must be clean.
  const back = performance.now() + 10_000;
  while (descendants(echo.pid).length < WORKERS && performance.now() < back) await Bun.sleep(50);
  const finalRound = await loadRound(proxy.port, options.connections);
  clearInterval(sampler);

  // Every client is gone: the proxy's descriptors come back to where they started (it closes both sides).
  const settle = performance.now() + 5000;
  let filesAfter = openFiles(proxy.pid);
  while (filesAfter > filesBefore && performance.now() < settle) {
    await Bun.sleep(50);
    filesAfter = openFiles(proxy.pid);
  }

  for (const [name, count] of Object.entries(errors)) {
    if (!EXPLAINED.has(name)) violations.push(`${count} error(s) of class ${name}: no killed worker explains them`);
  }
  const finalErrors = Object.entries(finalRound.errors).filter(([name, count]) => name !== "total" && count > 0);
  if (finalErrors.length > 0) violations.push(`the round after the kills had errors: ${JSON.stringify(finalErrors)}`);
  if (finalRound.messages === 0) violations.push("the round after the kills got no message through");
  if (filesAfter > filesBefore) violations.push(`the proxy holds ${filesAfter} open files, ${filesBefore} before`);
  if ((peakRss - idleRss) / 1024 > MEMORY_BOUND_MIB) {
    violations.push(`the proxy grew by ${((peakRss - idleRss) / 1024).toFixed(0)} MiB (bound ${MEMORY_BOUND_MIB})`);
  }
  const echoProcesses = 1 + descendants(echo.pid).length;
  if (echoProcesses !== 1 + WORKERS) violations.push(`the echo server runs ${echoProcesses} processes`);
  if (proxy.proc.exitCode !== null || echo.proc.exitCode !== null) violations.push("a server exited");
  if (workerKills === 0) violations.push("no worker was killed: the run was too short for --kill-every");

  return {
    echo: echoFile,
    proxy: proxyFile,
    toxics: TOXICS,
    durationSeconds: options.durationSeconds,
    rounds,
    messages,
    workerKills,
    errors,
    finalRound: { messages: finalRound.messages, errors: finalRound.errors },
    proxyOpenFiles: { before: filesBefore, after: filesAfter },
    proxyRssMiB: { idle: Math.round(idleRss / 1024), peak: Math.round(peakRss / 1024) },
    echoProcesses,
    violations,
  };
}

function textReport(report: Report): string {
  const errorText = Object.entries(report.errors)
    .map(([name, count]) => `${count} ${name}`)
    .join(", ");
  return [
    `chaos: ${report.proxy} (${report.toxics.join("; ")}) in front of ${report.echo} (${WORKERS} workers)`,
    `  ${report.rounds} rounds, ${report.messages} messages, every reply checked byte for byte`,
    `  ${report.workerKills} worker(s) killed; errors: ${errorText || "none"}`,
    `  round after the kills: ${report.finalRound.messages} messages, no error expected`,
    `  proxy open files ${report.proxyOpenFiles.before} -> ${report.proxyOpenFiles.after}, ` +
      `memory ${report.proxyRssMiB.idle} MiB idle, ${report.proxyRssMiB.peak} MiB peak`,
    report.violations.length === 0 ? "  PASS" : `  FAIL:\n${report.violations.map((v) => `    - ${v}`).join("\n")}`,
  ].join("\n");
}

async function main(): Promise<void> {
  let options: Options | "help";
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`error: ${error.message} (see --help)\n`);
    process.exit(2);
  }
  if (options === "help") {
    const header = (await Bun.file(import.meta.path).text()).split("*/")[0]!;
    process.stdout.write(`${header.replace(/^#!.*\n\/\*\n/, "").replace(/^ \* ?/gm, "")}\n`);
    return;
  }
  const report = await chaos(options);
  if (options.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else process.stdout.write(`${textReport(report)}\n`);
  process.exit(report.violations.length === 0 ? 0 : 1);
}

await main();
