import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { hardenedEchoTests } from "../test/support/echo-hardened.ts";
import { decode, exchange } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/014-ready-for-containers.ts";
// Explicit, so a HOST or WORKERS variable in the test's own environment cannot change what is tested. A short
// drain: disposal SIGKILLs the supervisor, and its orphaned workers drain their clients before they exit.
const BASE = ["--host", "127.0.0.1", "--port", "0", "--drain-timeout", "2"];

describe("014 ready for containers", () => {
  test("-h lists every option with its environment variable; bad flags and variables are usage errors", async () => {
    const help = await runToExit(STAGE, ["-h"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith(`Usage: bun ${STAGE} [options]`);
    const variables = [
      "HOST",
      "PORT",
      "WORKERS",
      "MAX_CLIENTS",
      "MAX_PER_IP",
      "MAX_BUFFER",
      "IDLE_TIMEOUT",
      "DRAIN_TIMEOUT",
      "METRICS_PORT",
      "METRICS_HOST",
      "LOG_LEVEL",
      "LOG_FORMAT",
    ];
    for (const variable of variables) {
      const option = `--${variable.toLowerCase().replaceAll("_", "-")}`;
      // The option, then its variable at the end of its line (or of the line after, for a long option).
      expect(help.stdout).toMatch(new RegExp(`\\n  ${option} [^\\[]*\\[${variable}\\]`));
    }
    expect(await runToExit(STAGE, ["--workers", "0"])).toEqual({
      code: 2,
      stdout: "",
      stderr: 'error: --workers must be an integer from 1 to 1024, got "0" (see --help)\n',
    });
    expect(await runToExit(STAGE, ["--log-format", "xml"])).toEqual({
      code: 2,
      stdout: "",
      stderr: 'error: --log-format must be one of text, json, got "xml" (see --help)\n',
    });
    expect(await runToExit(STAGE, [], { env: { PORT: "http" } })).toEqual({
      code: 2,
      stdout: "",
      stderr: 'error: PORT must be an integer from 0 to 65535, got "http" (see --help)\n',
    });
  });

  test("configuration from environment variables; a command-line option wins over its variable", async () => {
    const env = { HOST: "127.0.0.1", PORT: "0", WORKERS: "3", MAX_PER_IP: "4", LOG_FORMAT: "json", IDLE_TIMEOUT: "30" };
    await using server = await startStage(STAGE, ["--workers", "1"], { env });
    expect(server.stdout.text).toBe(`listening on 127.0.0.1:${server.port}\n`);
    const lines = server.stderr.text
      .trimEnd()
      .split("\n")
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines[0]).toMatchObject({
      level: "info",
      worker: null,
      msg: expect.stringContaining("starting 1 worker(s)"),
    });
    const listening = lines.find((line) => String(line.msg).startsWith("listening on"));
    expect(listening).toMatchObject({ worker: 0, active: 0, limit: 10000 });
    expect(String(listening?.msg)).toContain("4 per address, 256 KiB reply queue per client, idle timeout 30 s");
  });

  test("an empty variable counts as unset: the defaults, text logs", async () => {
    const env = { LOG_FORMAT: "", LOG_LEVEL: "", MAX_CLIENTS: "", MAX_BUFFER: "" };
    await using server = await startStage(STAGE, [...BASE, "--workers", "1"], { env });
    await server.waitForLog(/^\S+Z INFO  \[worker 0 \| active 0\/10000\] listening on 127\.0\.0\.1:\d+ /m);
    expect(server.stderr.text).not.toContain("{");
  });

  test("--log-format json: every line is one JSON object with time, level, pid, worker, conn and msg", async () => {
    await using server = await startStage(STAGE, [...BASE, "--workers", "1", "--log-format", "json"]);
    expect(decode(await exchange(server.port, "json please", { halfClose: true }))).toBe("JSON PLEASE");
    await server.waitForLog(/"msg":"done: received 11 bytes, sent 11"/);
    const lines = server.stderr.text
      .trimEnd()
      .split("\n")
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    for (const line of lines) {
      expect(Object.keys(line).slice(0, 4)).toEqual(["time", "level", "pid", "worker"]);
      expect(new Date(String(line.time)).toISOString()).toBe(String(line.time));
      expect(typeof line.msg).toBe("string");
    }
    expect(lines.find((line) => line.msg === "done: received 11 bytes, sent 11")).toMatchObject({
      worker: 0,
      conn: 1,
      level: "info",
    });
  });

  echoContractTests({ file: STAGE, args: [...BASE, "--workers", "2"] });

  hostileContractTests({ file: STAGE, kind: "echo", args: [...BASE, "--workers", "2"] });

  hardenedEchoTests({
    file: STAGE,
    args: [...BASE.slice(0, 2), ...BASE.slice(4), "--workers", "2", "--max-clients", "12000"],
    exactLimitArgs: ["--workers", "1"],
  });
});
