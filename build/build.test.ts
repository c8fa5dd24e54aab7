// The executables `bun run build` makes, built here by the build's own code into a temporary folder, so that a bug
// that only shows once compiled (a path under /$bunfs, a worker respawned with a script path) fails the tests: each
// answers --help under its own name, and the contracts the stages promise hold for the compiled echo server and
// proxy. The bundled commands of the npm package are tested by package.test.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { echoContractTests, type StageLaunch } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { startEchoUpstream, unusedPort } from "../test/support/net.ts";
import { proxyContractTests } from "../test/support/proxy-contract.ts";
import { descendants, runToExit, startStage } from "../test/support/process.ts";
import { build } from "./build.ts";
import { COMMANDS, type CommandName, ROOT } from "./commands.ts";

const BIN = mkdtempSync(join(tmpdir(), "bun-tcp-lab-bin-"));
const bin = (name: CommandName): string => join(BIN, name);

beforeAll(async () => {
  await build(undefined, BIN, true); // all four, a few seconds each on a busy machine
});
afterAll(() => {
  rmSync(BIN, { recursive: true, force: true });
});

const executable = { executable: true } as const;
/** Two workers: the supervisor respawns the executable itself, the path a compiled stage gets wrong first. */
const ECHO: StageLaunch = {
  file: bin("tcp-echo-server"),
  args: ["--host", "127.0.0.1", "--port", "0", "--drain-timeout", "2", "--workers", "2"],
  options: executable,
};

// The rule that makes the usage line right both ways, identical in every stage (a stage copied from an older one
// before this rule, or written without it, would say "bun ../../$bunfs/root/NAME" once built).
const THIS_COMMAND = `const THIS_COMMAND = import.meta.path.endsWith(".ts")
  ? \`bun \${relative(process.cwd(), import.meta.path)}\`
  : basename(import.meta.path);`;

describe("every stage", () => {
  const stages = ["tcp_echo_server", "tcp_proxy", "test"].flatMap((folder) =>
    readdirSync(join(ROOT, folder))
      .filter((name) => /^\d{3}-.*\.ts$/.test(name) && !name.includes(".test."))
      .map((name) => join(folder, name)),
  );
  test.each(stages)("%s derives its usage line's command with the shared rule", (stage) => {
    const source = readFileSync(join(ROOT, stage), "utf8");
    expect(source).toContain(THIS_COMMAND);
    expect(source).not.toContain("THIS_FILE");
    expect(source).not.toMatch(/Usage: bun /);
  });
});

describe("every executable", () => {
  test.each(COMMANDS.map((c) => c.name))("%s --help names the executable, not /$bunfs/...", async (name) => {
    const help = await runToExit(bin(name), ["--help"], executable);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith(`Usage: ${name} [options]\n`);
    expect(help.stdout + help.stderr).not.toContain("$bunfs");
  });
});

describe("compiled tcp-echo-server", () => {
  echoContractTests(ECHO);
  hostileContractTests({ ...ECHO, kind: "echo" });

  test("the supervisor's workers are the executable itself, started without a script path", async () => {
    await using server = await startStage(ECHO.file, ECHO.args, ECHO.options);
    const workers = descendants(server.pid);
    expect(workers.length).toBe(2);
    for (const pid of workers) expect(readlinkSync(`/proc/${pid}/exe`)).toBe(ECHO.file);
    expect(await server.stop("SIGTERM")).toBe(0);
  });

  test("--healthcheck does one verified exchange, with HOST and PORT from the environment by default", async () => {
    await using server = await startStage(ECHO.file, ECHO.args, ECHO.options);
    const explicit = await runToExit(ECHO.file, ["--healthcheck", `127.0.0.1:${server.port}`], executable);
    expect(explicit).toMatchObject({ code: 0, stdout: expect.stringMatching(/^healthy: 127\.0\.0\.1:\d+ echoed/) });
    const env = { HOST: "0.0.0.0", PORT: String(server.port) };
    expect((await runToExit(ECHO.file, ["--healthcheck"], { ...executable, env })).code).toBe(0);
    const down = await runToExit(ECHO.file, ["--healthcheck", `127.0.0.1:${unusedPort()}`], executable);
    expect(down).toMatchObject({ code: 1, stdout: "", stderr: expect.stringMatching(/^unhealthy: .*ECONNREFUSED\n$/) });
  });
});

describe("compiled tcp-proxy", () => {
  proxyContractTests({
    proxy: { file: bin("tcp-proxy"), options: executable },
    upstream: ECHO,
    halfClose: true,
    survivesResetStorm: true,
  });
  hostileContractTests({
    file: bin("tcp-proxy"),
    kind: "proxy",
    args: ["--port", "0"],
    options: executable,
    acceptProxy: true,
  });

  test("--healthcheck http://... counts any answer below 500", async () => {
    using api = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("{}") });
    const check = await runToExit(bin("tcp-proxy"), ["--healthcheck", `${api.url}version`], executable);
    expect(check).toMatchObject({ code: 0, stdout: expect.stringMatching(/answered 200/) });
  });
});

describe("compiled clients", () => {
  test("tcp-load measures a real exchange and tcp-sockets counts its listener", async () => {
    await using upstream = startEchoUpstream();
    const load = await runToExit(
      bin("tcp-load"),
      ["--port", String(upstream.port), "-c", "2", "-m", "20", "--json"],
      executable,
    );
    expect(load.code).toBe(0);
    expect(JSON.parse(load.stdout)).toMatchObject({ messages: 40, errors: { total: 0 } });
    const sockets = await runToExit(bin("tcp-sockets"), ["--port", String(upstream.port), "--json"], executable);
    expect(sockets.code).toBe(0);
    expect(JSON.parse(sockets.stdout)).toMatchObject({ local: { LISTEN: 1 } });
  });

  test("tcp-load at a fixed rate with 2 worker processes: the workers are the executable itself", async () => {
    await using upstream = startEchoUpstream();
    const args = ["--port", String(upstream.port), "--rate", "400", "-c", "4", "-d", "1", "--workers", "2", "--json"];
    const load = await runToExit(bin("tcp-load"), args, executable);
    expect(load.code).toBe(0);
    const report = JSON.parse(load.stdout) as { requestedRate: number; messages: number; errors: { total: number } };
    expect(report).toMatchObject({ requestedRate: 400, errors: { total: 0 } });
    expect(report.messages).toBeGreaterThan(300);
  });
});
