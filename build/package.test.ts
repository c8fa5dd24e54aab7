// The npm package, as a user gets it: `npm pack` (the four commands bundled by `bun run build --bundle`, which is
// what prepack runs), then the tarball installed into an empty project with no registry at all (an unreachable
// registry, --offline, an empty cache), and each command run with `bunx`: --help, then one real exchange (echo
// server, proxy in front, load client through both, socket counter).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { unusedPort } from "../test/support/net.ts";
import { descendants, type Running, type RunOptions, runToExit, startStage } from "../test/support/process.ts";
import { build } from "./build.ts";
import { COMMANDS, ROOT } from "./commands.ts";

const WORK = mkdtempSync(join(tmpdir(), "bun-tcp-lab-pack-"));
const SOURCE = join(WORK, "source");
const APP = join(WORK, "app");
const BUN_APP = join(WORK, "bun-app");
const NOWHERE = `http://127.0.0.1:${unusedPort()}/`;
/** npm and bun both pointed at a registry where nothing listens; npm offline too, with a cache of its own. */
const OFFLINE: Record<string, string> = {
  npm_config_registry: NOWHERE,
  npm_config_offline: "true",
  npm_config_cache: join(WORK, "npm-cache"),
  npm_config_audit: "false",
  npm_config_fund: "false",
  npm_config_update_notifier: "false",
  BUN_CONFIG_REGISTRY: NOWHERE,
};
const IN_APP: RunOptions = { executable: true, cwd: APP, env: OFFLINE };

async function sh(command: string[], cwd: string): Promise<string> {
  const result = await runToExit(command[0]!, command.slice(1), {
    executable: true,
    cwd,
    env: OFFLINE,
    timeoutMs: 60_000,
  });
  if (result.code !== 0)
    throw new Error(`${command.join(" ")} exited ${result.code}:\n${result.stdout}${result.stderr}`);
  return result.stdout;
}

let packed: { filename: string; files: Array<{ path: string }> };

beforeAll(async () => {
  // What npm pack reads from the repository (package.json, README, .gitignore, which npm would apply without a
  // `files` list) and the bundles prepack makes, in a folder of their own: the test never writes to the work tree.
  mkdirSync(SOURCE);
  for (const file of ["package.json", "README.md", ".gitignore"]) copyFileSync(join(ROOT, file), join(SOURCE, file));
  await build(undefined, join(SOURCE, "dist", "npm"), false);
  const output = await sh(["npm", "pack", "--ignore-scripts", "--json", "--pack-destination", WORK], SOURCE);
  [packed] = JSON.parse(output);
  mkdirSync(APP);
  writeFileSync(join(APP, "package.json"), JSON.stringify({ name: "app", private: true }));
  await sh(["npm", "install", join(WORK, packed.filename)], APP);
  mkdirSync(BUN_APP);
  writeFileSync(join(BUN_APP, "package.json"), JSON.stringify({ name: "bun-app", private: true }));
  await sh(["bun", "add", "--cache-dir", join(WORK, "bun-cache"), join(WORK, packed.filename)], BUN_APP);
});

afterAll(() => {
  rmSync(WORK, { recursive: true, force: true });
});

/** `bunx NAME ...args` in the app, waiting for its listening line; disposal kills bunx's whole process tree. */
async function serve(name: string, args: string[]): Promise<Running & AsyncDisposable> {
  const server = await startStage("bunx", [name, ...args], IN_APP);
  const dispose = server[Symbol.asyncDispose].bind(server);
  // bunx runs the command as its child: SIGKILL on bunx alone would orphan the server and its workers.
  server[Symbol.asyncDispose] = async () => {
    for (const pid of descendants(server.pid).reverse()) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // exited meanwhile
      }
    }
    await dispose();
  };
  return server;
}

describe("npm pack, then install offline", () => {
  test("the tarball holds the four bundled commands, package.json and README, and declares no dependency", () => {
    const names = COMMANDS.map((c) => c.name);
    expect(packed.files.map((f) => f.path).sort()).toEqual(
      ["README.md", "package.json", ...names.map((name) => `dist/npm/${name}`)].sort(),
    );
    const installed = JSON.parse(readFileSync(join(APP, "node_modules", "bun-tcp-lab", "package.json"), "utf8"));
    expect(installed.dependencies).toBeUndefined();
    expect(installed.scripts.prepack).toBe("bun build/build.ts --bundle"); // what makes dist/npm before packing
    for (const name of names) expect(existsSync(join(APP, "node_modules", ".bin", name))).toBe(true);
  });

  test("the offline setting bites: a tarball that declares a dependency does not install", async () => {
    const withDependency = join(WORK, "with-dependency");
    mkdirSync(withDependency);
    writeFileSync(
      join(withDependency, "package.json"),
      JSON.stringify({ name: "with-dependency", version: "1.0.0", dependencies: { picocolors: "1.1.1" } }),
    );
    const [tarball] = JSON.parse(await sh(["npm", "pack", "--json", "--pack-destination", WORK], withDependency));
    const install = await runToExit("npm", ["install", join(WORK, tarball.filename)], { ...IN_APP, timeoutMs: 60_000 });
    expect(install.code).not.toBe(0);
    expect(install.stderr).toContain("ENOTCACHED");
  });

  test("bun add installs it offline too, and bunx runs it", async () => {
    const help = await runToExit("bunx", ["tcp-sockets", "--help"], { ...IN_APP, cwd: BUN_APP });
    expect(help).toMatchObject({ code: 0, stdout: expect.stringMatching(/^Usage: tcp-sockets \[options\]\n/) });
  });

  test.each(COMMANDS.map((c) => c.name))("bunx %s --help", async (name) => {
    const help = await runToExit("bunx", [name, "--help"], IN_APP);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith(`Usage: ${name} [options]\n`);
  });

  test("one real exchange: load client -> proxy -> echo server, and the socket counter sees the listener", async () => {
    await using echo = await serve("tcp-echo-server", ["--port", "0", "--workers", "1"]);
    await using proxy = await serve("tcp-proxy", ["--port", "0", "--upstream", `127.0.0.1:${echo.port}`]);
    const load = await runToExit("bunx", ["tcp-load", "--port", String(proxy.port), "-c", "2", "-m", "20", "--json"], {
      ...IN_APP,
      timeoutMs: 20_000,
    });
    expect(load.code).toBe(0);
    expect(JSON.parse(load.stdout)).toMatchObject({ messages: 40, errors: { total: 0 } });
    const sockets = await runToExit("bunx", ["tcp-sockets", "--port", String(echo.port), "--json"], IN_APP);
    expect(JSON.parse(sockets.stdout)).toMatchObject({ local: { LISTEN: 1 } });
    expect(await proxy.stop("SIGTERM")).toBe(0);
    expect(await echo.stop("SIGTERM")).toBe(0);
  });
});
