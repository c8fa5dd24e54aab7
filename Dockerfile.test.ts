// No Docker engine runs on these machines, so the images are checked in two halves: the Dockerfile's own promises
// (targets, pinned bases, a numeric non-root user, stop signal, exposed ports, exec-form health checks and
// entrypoints naming the executables copied from the build stage, a small build context), and each image's command
// run here: the same program (the command of build/commands.ts, bundled as the build makes it, with the launcher
// that answers --healthcheck), the same arguments and environment, with free ports instead of fixed ones; its
// health check run against it; then the image's stop signal and a clean exit.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { build } from "./build/build.ts";
import { COMMANDS, type CommandName, sourceOf } from "./build/commands.ts";
import { decode, TestClient } from "./test/support/net.ts";
import { ROOT, run, runToExit, startStage } from "./test/support/process.ts";

// ---------------------------------------------------------------------------------------------------------------
// Reading the Dockerfile: instructions, global ARGs, and each stage's image configuration (inherited from the stage
// it is built FROM).

interface Instruction {
  keyword: string;
  value: string;
}

function parseDockerfile(text: string): Instruction[] {
  const joined = text.replace(/\\\n(\s*#.*\n)*/g, " "); // continuation lines (comments inside are dropped)
  return joined
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => {
      const [keyword, ...rest] = line.split(/\s+/);
      return { keyword: keyword!.toUpperCase(), value: rest.join(" ") };
    });
}

interface Stage {
  name: string;
  /** FROM, with global ARGs expanded: an image reference or an earlier stage's name. */
  from: string;
  user?: string;
  stopSignal?: string;
  healthcheck?: { options: string; command: string[] };
  entrypoint: string[];
  cmd: string[];
  env: Record<string, string>;
  expose: string[];
  /** COPY --from=STAGE SOURCE DEST, as [stage, source, dest]. */
  copiedFrom: Array<[string, string, string]>;
  run: string[];
}

const execForm = (value: string): string[] => {
  const parsed: unknown = JSON.parse(value); // throws for shell form: every command here must be exec form
  if (!Array.isArray(parsed) || !parsed.every((x) => typeof x === "string")) throw new Error(`not exec form: ${value}`);
  return parsed;
};

function stagesOf(instructions: Instruction[]): { args: Record<string, string>; stages: Stage[] } {
  const args: Record<string, string> = {};
  const stages: Stage[] = [];
  const expand = (text: string): string => text.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a, b) => args[a ?? b] ?? "");
  for (const { keyword, value } of instructions) {
    const stage = stages.at(-1);
    if (keyword === "FROM") {
      const [from, as, name] = value.split(/\s+/);
      expect(as?.toUpperCase()).toBe("AS"); // every stage is named, so targets can be chosen
      const base = stages.find((s) => s.name === expand(from!));
      stages.push({
        name: name!,
        from: expand(from!),
        user: base?.user,
        stopSignal: base?.stopSignal,
        healthcheck: base?.healthcheck,
        entrypoint: base?.entrypoint ?? [],
        cmd: base?.cmd ?? [],
        env: { ...base?.env },
        expose: [...(base?.expose ?? [])],
        copiedFrom: [],
        run: [],
      });
    } else if (stage === undefined) {
      expect(keyword).toBe("ARG"); // only global ARGs before the first FROM
      const [key, val] = value.split("=", 2);
      args[key!] = val ?? "";
    } else if (keyword === "USER") stage.user = value;
    else if (keyword === "STOPSIGNAL") stage.stopSignal = value;
    else if (keyword === "ENTRYPOINT") stage.entrypoint = execForm(value);
    else if (keyword === "CMD") stage.cmd = execForm(value);
    else if (keyword === "RUN") stage.run.push(value);
    else if (keyword === "EXPOSE") stage.expose.push(...value.split(/\s+/));
    else if (keyword === "ENV") for (const [, k, v] of value.matchAll(/(\w+)=(\S+)/g)) stage.env[k!] = v!;
    else if (keyword === "HEALTHCHECK") {
      const at = value.indexOf("CMD ");
      stage.healthcheck = { options: value.slice(0, at).trim(), command: execForm(value.slice(at + 4)) };
    } else if (keyword === "COPY") {
      const from = /--from=(\S+)\s+(\S+)\s+(\S+)/.exec(value);
      if (from) stage.copiedFrom.push([from[1]!, from[2]!, from[3]!]);
    }
  }
  return { args, stages };
}

const { stages } = stagesOf(parseDockerfile(await Bun.file(resolve(ROOT, "Dockerfile")).text()));
const stage = (name: string): Stage => {
  const found = stages.find((s) => s.name === name);
  if (!found) throw new Error(`no stage ${name} in the Dockerfile`);
  return found;
};

/** The command of build/commands.ts an image runs, from the executable its ENTRYPOINT names. */
function commandOf(target: Stage): CommandName {
  const executable = target.entrypoint[0]!;
  const copied = target.copiedFrom.find(([, , dest]) => dest === executable);
  expect(copied).toBeDefined(); // the entrypoint is a file this stage copied in
  const [from, source] = copied!;
  expect(from).toBe("build");
  const name = source.match(/^\/src\/dist\/([\w-]+)$/)?.[1] ?? source;
  expect(COMMANDS.map((c) => c.name as string)).toContain(name);
  return name as CommandName;
}

// ---------------------------------------------------------------------------------------------------------------
// The static half.

describe("Dockerfile", () => {
  test("targets: build, then the proxy, then the echo server last (what `docker build .` builds)", () => {
    expect(stages.map((s) => s.name)).toEqual(["build", "runtime", "proxy", "echo"]);
  });

  test("the build stage uses the Bun CI uses, installs from the lockfile and builds what the images copy", async () => {
    const ciScript = await Bun.file(resolve(ROOT, ".ci/run")).text();
    const ciVersion = ciScript.match(/BUN_VERSION=(\S+)/)?.[1];
    const builder = stage("build");
    expect(builder.from).toBe(`oven/bun:${ciVersion}-slim`);
    expect(builder.run[0]).toBe("bun install --frozen-lockfile");
    const built = builder.run
      .at(-1)!
      .match(/^bun run build((?: [\w-]+)+)$/)?.[1]
      ?.trim()
      .split(" ");
    const copied = stages.flatMap((s) => s.copiedFrom.map(([, source]) => source.split("/").at(-1)!));
    expect(built?.sort()).toEqual(copied.sort());
  });

  test("the runtime base is pinned by tag and digest, runs as a numeric non-root user, stops with SIGTERM", () => {
    const runtime = stage("runtime");
    expect(runtime.from).toMatch(/^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$/);
    expect(runtime.from).not.toContain(":latest");
    for (const name of ["proxy", "echo"]) {
      const target = stage(name);
      expect(target.from).toBe("runtime");
      expect(target.user).toMatch(/^[1-9]\d*:[1-9]\d*$/); // numeric, not 0
      expect(target.stopSignal).toBe("SIGTERM");
    }
  });

  test("each image's entrypoint and health check are exec form, naming the executable it copies", () => {
    for (const name of ["proxy", "echo"]) {
      const target = stage(name);
      commandOf(target);
      expect(target.healthcheck?.command[0]).toBe(target.entrypoint[0]);
      expect(target.healthcheck?.command[1]).toBe("--healthcheck");
      expect(target.healthcheck?.options).toMatch(/--timeout=\d+s/);
    }
    expect(commandOf(stage("echo"))).toBe("tcp-echo-server");
    expect(commandOf(stage("proxy"))).toBe("tcp-proxy");
  });

  test("the echo image: configured from ENV on 0.0.0.0, exposes its PORT, no arguments", () => {
    const echo = stage("echo");
    expect(echo.env).toMatchObject({ HOST: "0.0.0.0", PORT: "5000" });
    expect(echo.expose).toEqual([echo.env.PORT!]);
    expect(echo.cmd).toEqual([]); // configuration comes from ENV, so `docker run -e PORT=...` works
    expect(echo.healthcheck?.command).toEqual([echo.entrypoint[0]!, "--healthcheck"]); // HOST and PORT from ENV
  });

  test("the proxy image: its API on 0.0.0.0 at the exposed port, which its health check asks", () => {
    const proxy = stage("proxy");
    const flag = (name: string): string | undefined => proxy.cmd[proxy.cmd.indexOf(name) + 1];
    expect(flag("--api-host")).toBe("0.0.0.0");
    expect(proxy.expose).toEqual([flag("--api-port")!]);
    expect(proxy.healthcheck?.command[2]).toBe(`http://127.0.0.1:${flag("--api-port")}/version`);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// The build context, as .dockerignore leaves it: moby's rules (the last matching pattern wins, a pattern that matches
// a directory matches all under it, `!` re-includes), with Bun.Glob for a single pattern.

function inContext(path: string, patterns: string[]): boolean {
  let included = true;
  for (const pattern of patterns) {
    const negated = pattern.startsWith("!");
    const glob = new Bun.Glob(negated ? pattern.slice(1) : pattern);
    const parts = path.split("/");
    const matches = parts.some((_, i) => glob.match(parts.slice(0, i + 1).join("/")));
    if (matches) included = negated;
  }
  return included;
}

/** Every file on disk under the root, relative, not descending into .git. */
function filesOnDisk(dir = ROOT): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.name === ".git") return [relative(ROOT, path)];
    return entry.isDirectory() ? filesOnDisk(path) : [relative(ROOT, path)];
  });
}

/** The files `file` imports, transitively (relative imports only; packages come from bun install). */
function importClosure(file: string, seen = new Set<string>()): Set<string> {
  if (seen.has(file)) return seen;
  seen.add(file);
  const transpiler = new Bun.Transpiler({ loader: "ts" });
  const source = readFileSync(file, "utf8").replace(/^#!.*/, ""); // the transpiler rejects a shebang line
  for (const { path } of transpiler.scanImports(source)) {
    if (path.startsWith(".")) importClosure(resolve(file, "..", path), seen);
  }
  return seen;
}

describe(".dockerignore", () => {
  const patterns = readFileSync(resolve(ROOT, ".dockerignore"), "utf8")
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
  const context = filesOnDisk().filter((path) => inContext(path, patterns));

  test("the context has every file the image build reads", () => {
    const needed = new Set(["package.json", "bun.lock", "bunfig.toml"]);
    const entries = [resolve(ROOT, "build/build.ts"), ...COMMANDS.map((c) => sourceOf(c.name))];
    for (const entry of entries) for (const file of importClosure(entry)) needed.add(relative(ROOT, file));
    expect([...needed].filter((file) => !context.includes(file))).toEqual([]);
  });

  test("and nothing else of weight: no tests, docs, node_modules, dist or .git; under 2 MB", () => {
    expect(context.filter((path) => /\.test\.ts$|^(docs|node_modules|dist|menu|deploy)\/|^\.git$/.test(path))).toEqual(
      [],
    );
    const bytes = context.reduce((sum, path) => sum + statSync(resolve(ROOT, path)).size, 0);
    expect(bytes).toBeLessThan(2 * 2 ** 20);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// The host half: each image's command, bundled as the build makes it.

const BUNDLES = mkdtempSync(join(tmpdir(), "bun-tcp-lab-image-"));
beforeAll(async () => {
  await build(["tcp-echo-server", "tcp-proxy"], BUNDLES, false);
});
afterAll(() => {
  rmSync(BUNDLES, { recursive: true, force: true });
});
/** The image's executable, here: the bundled command of the same name. */
const here = (target: Stage): string => join(BUNDLES, commandOf(target));

describe("the images' commands, run here", () => {
  test("echo: serves on 0.0.0.0 with the image's environment, is healthy, stops cleanly on SIGTERM", async () => {
    const echo = stage("echo");
    // The one change: PORT=0 instead of 5000, which may be taken on this machine.
    await using server = await startStage(here(echo), echo.cmd, { env: { ...echo.env, PORT: "0" } });
    expect(server.host).toBe("0.0.0.0");
    const [program, ...healthArgs] = echo.healthcheck!.command;
    const env = { ...echo.env, PORT: String(server.port) }; // what the container's PORT would say
    const health = await runToExit(join(BUNDLES, program!.split("/").at(-1)!), healthArgs, { env });
    expect(health).toMatchObject({ code: 0, stdout: expect.stringMatching(/^healthy: 127\.0\.0\.1:\d+ echoed/) });
    const client = await TestClient.connect(server.port, "127.0.0.1");
    client.write("from the container\n");
    expect(decode(await client.readAtLeast(19))).toBe("FROM THE CONTAINER\n");
    expect(await server.stop(echo.stopSignal as NodeJS.Signals)).toBe(0);
    await client.readToEnd();
  });

  test("proxy: the API answers on 0.0.0.0, the health check passes, SIGTERM stops it cleanly", async () => {
    const proxy = stage("proxy");
    const help = (await runToExit(here(proxy), ["--help"])).stdout;
    if (!help.includes("--api-port")) {
      // Only until the last proxy stage has an API at all; the toxiproxy-compatible one does.
      console.warn(`skipped: ${sourceOf("tcp-proxy")} has no --api-port, so the proxy image has nothing to serve`);
      return;
    }
    // Free ports for every port the command names; and a proxy stage that also listens on a --port by default
    // (before the toxiproxy-compatible one, which starts with the API alone) gets --port 0 too.
    const args = proxy.cmd.map((arg, i) => (/^--([\w-]+-)?port$/.test(proxy.cmd[i - 1] ?? "") ? "0" : arg));
    if (/^\s*--port PORT.*\(default [1-9]\d*\)/m.test(help) && !args.includes("--port")) args.push("--port", "0");
    await using server = run(here(proxy), args);
    // The API's address from the log: the line that names it (toxiproxy-style stages print it machine-readably).
    const apiLine = /API[^\n]*?\b(0\.0\.0\.0|127\.0\.0\.1|\[::\]):(\d+)/i;
    const [, apiHost, apiPort] = await Promise.any([
      server.stdout.waitFor(apiLine, 10_000),
      server.stderr.waitFor(apiLine, 10_000),
    ]);
    expect(apiHost).toBe("0.0.0.0");
    const [program, ...healthArgs] = proxy.healthcheck!.command;
    const url = healthArgs.at(-1)!.replace(`:${proxy.expose[0]}/`, `:${apiPort}/`);
    const health = await runToExit(join(BUNDLES, program!.split("/").at(-1)!), [...healthArgs.slice(0, -1), url]);
    expect(health).toMatchObject({ code: 0, stdout: expect.stringMatching(/^healthy: http:/) });
    expect(await server.stop(proxy.stopSignal as NodeJS.Signals)).toBe(0);
  });

  test("echo: HOST=0.0.0.0 does not publish the metrics; loopback unless METRICS_HOST says so", async () => {
    const echo = stage("echo");
    const env = { ...echo.env, PORT: "0", METRICS_PORT: "0", WORKERS: "1" };
    await using server = await startStage(here(echo), echo.cmd, { env });
    await server.waitForLog(/metrics on http:\/\/127\.0\.0\.1:\d+\/metrics/);
    await using published = await startStage(here(echo), echo.cmd, { env: { ...env, METRICS_HOST: "0.0.0.0" } });
    await published.waitForLog(/metrics on http:\/\/0\.0\.0\.0:\d+\/metrics/);
  });
});
