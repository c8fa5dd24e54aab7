// The catalogue: discovery of stage files, their headers and --help, the options the menu asks for, and the
// command lines it builds. Real stage files where they exist; temporary trees for stages that do not exist yet.

import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { exchange } from "../test/support/net.ts";
import { ROOT, TempTree, isAlive, waitGone } from "../test/support/process.ts";
import {
  type Catalogue,
  type Stage,
  catalogueListing,
  commandLine,
  demoClient,
  diffCommand,
  loadCatalogue,
  parseHeader,
  parseHelp,
  previousStage,
  servesOneClient,
  splitArguments,
  stageCommand,
  stageHelp,
  stageOptions,
  stagesOf,
  validateValue,
} from "./catalogue.ts";
import { Service, stopChild } from "./children.ts";

const real = loadCatalogue(ROOT);

function stage(catalogue: Catalogue, file: string): Stage {
  const found = catalogue.stages.find((candidate) => candidate.file === file);
  if (!found) throw new Error(`${file} not in the catalogue: ${catalogue.stages.map((s) => s.file).join(", ")}`);
  return found;
}

async function defaultLine(catalogue: Catalogue, file: string, values = {}): Promise<string> {
  const found = stage(catalogue, file);
  return commandLine(stageCommand(found, stageOptions(found, await stageHelp(catalogue, found)), values));
}

const HEADER = (number: string, lesson: string): string => `#!/usr/bin/env bun
/*
 * ${number} - ${lesson}
 *
 * Adds:   one thing
 *         over two lines.
 * Lacks:  another (${number}+1).
 *
 * Try it: bun x.ts --port 5000
 *         echo hi | nc -N 127.0.0.1 5000
 */
`;

describe("discovery", () => {
  test("the real echo stages 001-003 are found, in order, with the lesson of their header", () => {
    const echo = stagesOf(real, "echo");
    expect(echo.slice(0, 3).map((s) => [s.file, s.header.lesson])).toEqual([
      ["tcp_echo_server/001-simple-one-echo.ts", "simple one echo"],
      ["tcp_echo_server/002-logging-class-cli.ts", "logging, a class, a command line"],
      ["tcp_echo_server/003-loop.ts", "a loop, and the socket options"],
    ]);
    // Whatever else exists by now (other stages land over time) is NNN-*.ts, sorted, never a test file.
    for (const found of real.stages) {
      expect(found.file).toMatch(/^(tcp_echo_server|tcp_proxy|test)\/\d{3}-[\w.-]+\.ts$/);
      expect(found.file).not.toMatch(/\.test\.ts$/);
      const firstLine = readFileSync(join(ROOT, found.file), "utf8").split("\n")[2]!;
      expect(firstLine).toBe(` * ${found.label} - ${found.header.lesson}`);
    }
    for (const area of ["echo", "proxy", "client"] as const) {
      const files = stagesOf(real, area).map((s) => s.file);
      expect(files).toEqual([...files].sort());
    }
  });

  test("only NNN-*.ts files of the stage folders are stages; a file added later shows up on the next load", () => {
    using tree = new TempTree({
      "tcp_echo_server/001-first.ts": HEADER("001", "the first"),
      "tcp_echo_server/001-first.test.ts": "// a test, not a stage",
      "tcp_echo_server/notes.ts": "// not numbered",
      "tcp_echo_server/12-short.ts": "// two digits",
      "tcp_echo_server/README.md": "# not a stage",
      "test/support/net.ts": "// a helper",
      "test/001-client.ts": HEADER("001", "a client"),
      "test/003-load.ts": HEADER("003", "load"),
      "bench/001-bench.ts": HEADER("001", "not a stage folder"),
    });
    const before = loadCatalogue(tree.root);
    expect(before.stages.map((s) => s.file)).toEqual([
      "tcp_echo_server/001-first.ts",
      "test/001-client.ts",
      "test/003-load.ts",
    ]);
    expect(stagesOf(before, "proxy")).toEqual([]); // tcp_proxy/ does not even exist: no error

    tree.write("tcp_echo_server/002-second.ts", HEADER("002", "the second"));
    tree.write("tcp_proxy/001-forward.ts", HEADER("001", "forwarding"));
    const after = loadCatalogue(tree.root);
    expect(after.stages.map((s) => `${s.file}: ${s.header.lesson}`)).toEqual([
      "tcp_echo_server/001-first.ts: the first",
      "tcp_echo_server/002-second.ts: the second",
      "tcp_proxy/001-forward.ts: forwarding",
      "test/001-client.ts: a client",
      "test/003-load.ts: load",
    ]);
    expect(previousStage(after, stage(after, "tcp_echo_server/002-second.ts"))?.file).toBe(
      "tcp_echo_server/001-first.ts",
    );
    expect(previousStage(after, stage(after, "tcp_echo_server/001-first.ts"))).toBeUndefined();
    // Gaps are fine: the previous stage is the highest one below.
    expect(previousStage(after, stage(after, "test/003-load.ts"))?.file).toBe("test/001-client.ts");
  });

  test("the guided demo's client is the highest test/NNN-client*.ts, not any client stage", () => {
    using tree = new TempTree({
      "test/001-client.ts": HEADER("001", "all at once"),
      "test/002-client-ramp.ts": HEADER("002", "ramping up"),
      "test/003-load.ts": HEADER("003", "load"),
    });
    expect(demoClient(loadCatalogue(tree.root))?.file).toBe("test/002-client-ramp.ts");
    using empty = new TempTree({ "test/003-load.ts": HEADER("003", "load") });
    expect(demoClient(loadCatalogue(empty.root))).toBeUndefined();
  });
});

describe("headers", () => {
  test("sections of a real header: Adds, Lacks (up to the blank line), Try it", () => {
    const loop = stage(real, "tcp_echo_server/003-loop.ts").header;
    expect(loop.adds.split("\n")[0]).toBe(
      "the server answers one client for as many messages as it sends, until the client closes its side",
    );
    expect(loop.lacks).toBe(
      "a second client: the server exits once the first one is done (004 serves many in turn); concurrency\n" +
        "(005); SIGINT handling (004); partial writes are not handled (006).",
    );
    expect(loop.tryIt.split("\n")).toEqual([
      "bun tcp_echo_server/003-loop.ts --port 5000 --log-level debug",
      "nc 127.0.0.1 5000           (type lines: each comes back uppercased; Ctrl-C to leave)",
      "it serves one client, then exits; started again: printf 'one\\ntwo\\n' | nc -N 127.0.0.1 5000",
    ]);
    expect(loop.text).toContain("The original's puzzle"); // the whole comment is kept for "About a stage"
  });

  test("a file without the header (still being written) gets a lesson made from its name", () => {
    expect(parseHeader("console.log(1);\n", "004-sequential-clients.ts").lesson).toBe("sequential clients");
    expect(parseHeader(HEADER("004", "x"), "004-y.ts")).toMatchObject({
      lesson: "x",
      adds: "one thing\nover two lines.",
      lacks: "another (004+1).",
      tryIt: "bun x.ts --port 5000\necho hi | nc -N 127.0.0.1 5000",
    });
  });
});

describe("--help", () => {
  test("the real 002 --help is run and read: flags, placeholders, defaults, what it does", async () => {
    const help = await stageHelp(real, stage(real, "tcp_echo_server/002-logging-class-cli.ts"));
    expect(help?.flags.map((flag) => [flag.names.join(","), flag.value, flag.default])).toEqual([
      ["--host", "HOST", "127.0.0.1"],
      ["--port", "PORT", "5000"],
      ["--log-level", "LEVEL", "info"],
      ["-h,--help", undefined, undefined],
    ]);
    expect(help?.summary).toContain("one client");
  });

  test("001 takes no flags: its help lists none, and PORT (default 5000) is its one setting", async () => {
    const simple = stage(real, "tcp_echo_server/001-simple-one-echo.ts");
    expect(simple.takesHelp).toBe(true);
    expect((await stageHelp(real, simple))?.flags).toEqual([]);
    expect(simple.envDefaults.get("PORT")).toBe("5000"); // read from `process.env.PORT || 5000`
  });

  test("a stage that mentions --help but starts listening instead is killed, and has no help", async () => {
    using tree = new TempTree();
    const pidFile = join(tree.root, "pid");
    tree.write(
      "tcp_echo_server/001-deaf.ts",
      `${HEADER("001", "deaf")}
// Mentions --help in a comment only, and listens whatever its arguments.
const listener = Bun.listen({ hostname: "127.0.0.1", port: Number(process.env.PORT), socket: { data() {} } });
await Bun.write(${JSON.stringify(pidFile)}, String(process.pid));
console.log("listening on 127.0.0.1:" + listener.port);
setInterval(() => {}, 60_000);
`,
    );
    const catalogue = loadCatalogue(tree.root);
    expect(await stageHelp(catalogue, stage(catalogue, "tcp_echo_server/001-deaf.ts"))).toBeUndefined();
    await waitGone([Number(readFileSync(pidFile, "utf8"))], 2000);
  });

  test("options spelled in other ways: short and long names, HOST:PORT, a description on the next line", () => {
    const help = parseHelp(`Usage: x [options]

Does things.

Options:
  -n, --connections N     how many connections (default 100)
  -c N                    at the same time (default: 10)
  --upstream HOST:PORT    where to forward (default 127.0.0.1:5000)
  --idle-timeout SECONDS
                          close after this long (default 30)
  --verbose               say more
  -h, --help              show this help
`);
    expect(help.summary).toBe("Does things.");
    expect(help.flags.map((flag) => [flag.names, flag.value, flag.default])).toEqual([
      [["-n", "--connections"], "N", "100"],
      [["-c"], "N", "10"],
      [["--upstream"], "HOST:PORT", "127.0.0.1:5000"],
      [["--idle-timeout"], "SECONDS", "30"],
      [["--verbose"], undefined, undefined],
      [["-h", "--help"], undefined, undefined],
    ]);
  });
});

describe("what the menu asks for, and the command lines it builds", () => {
  test("real echo stages: 001 through PORT, 002 and 003 through --port and --log-level", async () => {
    const simple = stage(real, "tcp_echo_server/001-simple-one-echo.ts");
    const simpleOptions = stageOptions(simple, undefined);
    expect(simpleOptions.known.map((o) => [o.rule.id, o.name, o.env, o.default])).toEqual([
      ["port", "PORT", true, "5000"],
    ]);

    const loop = stage(real, "tcp_echo_server/003-loop.ts");
    const loopOptions = stageOptions(loop, await stageHelp(real, loop));
    expect(loopOptions.known.filter((o) => o.rule.ask).map((o) => [o.name, o.default, o.question])).toEqual([
      ["--port", "5000", "Port to listen on, 0 for a free one"],
      ["--log-level", "info", "Log level"],
    ]);
    expect(loopOptions.known.find((o) => o.name === "--log-level")?.choices).toEqual([
      "debug",
      "info",
      "warn",
      "error",
    ]);
    expect(loopOptions.unknown).toEqual([]);

    expect(await defaultLine(real, "tcp_echo_server/001-simple-one-echo.ts")).toBe(
      "PORT=5000 bun tcp_echo_server/001-simple-one-echo.ts",
    );
    expect(await defaultLine(real, "tcp_echo_server/001-simple-one-echo.ts", { port: "0" })).toBe(
      "PORT=0 bun tcp_echo_server/001-simple-one-echo.ts",
    );
    expect(await defaultLine(real, "tcp_echo_server/002-logging-class-cli.ts")).toBe(
      "bun tcp_echo_server/002-logging-class-cli.ts --port 5000",
    );
    // A value left at the stage's default is not spelled out, unless it is one a newcomer changes (the port).
    expect(await defaultLine(real, "tcp_echo_server/003-loop.ts", { port: "5000", logLevel: "info" })).toBe(
      "bun tcp_echo_server/003-loop.ts --port 5000",
    );
    expect(await defaultLine(real, "tcp_echo_server/003-loop.ts", { port: "0", logLevel: "debug" })).toBe(
      "bun tcp_echo_server/003-loop.ts --port 0 --log-level debug",
    );
  });

  test("the command lines built for the real stages run: each one listens and echoes", async () => {
    for (const file of ["tcp_echo_server/001-simple-one-echo.ts", "tcp_echo_server/003-loop.ts"]) {
      const found = stage(real, file);
      const command = stageCommand(found, stageOptions(found, await stageHelp(real, found)), { port: "0" });
      const server = new Service("echo", command, ROOT, () => {}, { NO_COLOR: "1" });
      try {
        const { port } = await server.waitForListening(new AbortController().signal);
        expect(new TextDecoder().decode(await exchange(port, "hello menu\n", { halfClose: true }))).toBe(
          "HELLO MENU\n",
        );
      } finally {
        await stopChild(server.child, "SIGKILL", 1000);
      }
      expect(isAlive(server.pid)).toBe(false);
    }
  });

  test("a new proxy stage: --port and --upstream asked from its --help, other options offered to type", async () => {
    using tree = new TempTree({ "tcp_proxy/001-fake.ts": { from: "menu/fixtures/fake-proxy.ts" } });
    const catalogue = loadCatalogue(tree.root);
    const proxy = stage(catalogue, "tcp_proxy/001-fake.ts");
    const options = stageOptions(proxy, await stageHelp(catalogue, proxy));
    expect(options.known.filter((o) => o.rule.ask).map((o) => [o.name, o.default])).toEqual([
      ["--port", "6000"],
      ["--upstream", "127.0.0.1:5000"],
    ]);
    expect(options.unknown.map((flag) => [flag.names, flag.value, flag.default])).toEqual([
      [["--idle-timeout"], "SECONDS", "30"],
    ]);
    expect(commandLine(stageCommand(proxy, options))).toBe(
      "bun tcp_proxy/001-fake.ts --port 6000 --upstream 127.0.0.1:5000",
    );
    const typed = splitArguments(`--idle-timeout 5 --name "two words"`);
    expect(commandLine(stageCommand(proxy, options, { port: "0", upstream: "[::1]:5000" }, typed))).toBe(
      "bun tcp_proxy/001-fake.ts --port 0 --upstream '[::1]:5000' --idle-timeout 5 --name 'two words'",
    );
  });

  test("a new client stage: -n asked; the demo's --host and --port set without asking", async () => {
    using tree = new TempTree({ "test/001-client-fake.ts": { from: "menu/fixtures/fake-client.ts" } });
    const catalogue = loadCatalogue(tree.root);
    const client = stage(catalogue, "test/001-client-fake.ts");
    const options = stageOptions(client, await stageHelp(catalogue, client));
    expect(options.known.filter((o) => o.rule.ask).map((o) => [o.name, o.default])).toEqual([
      ["--port", "5000"],
      ["-n", "10"],
    ]);
    expect(commandLine(stageCommand(client, options))).toBe("bun test/001-client-fake.ts --port 5000 -n 10");
    expect(commandLine(stageCommand(client, options, { host: "::1", port: "4000", connections: "3" }))).toBe(
      "bun test/001-client-fake.ts --port 4000 -n 3 --host ::1",
    );
  });

  test("what a person types is checked before it is used", () => {
    expect(validateValue("port", "0")).toBeUndefined();
    expect(validateValue("port", "65535")).toBeUndefined();
    expect(validateValue("port", "65536")).toBeString();
    expect(validateValue("port", "50a")).toBeString();
    expect(validateValue("hostPort", "127.0.0.1:5000")).toBeUndefined();
    expect(validateValue("hostPort", "[::1]:5000")).toBeUndefined();
    expect(validateValue("hostPort", "127.0.0.1")).toBeString();
    expect(validateValue("hostPort", "127.0.0.1:0")).toBeString();
    expect(validateValue("count", "1")).toBeUndefined();
    expect(validateValue("count", "0")).toBeString();
  });

  test("the one-client stages 001-003 are recognised, so the demo sends them one connection", async () => {
    for (const file of [
      "tcp_echo_server/001-simple-one-echo.ts",
      "tcp_echo_server/002-logging-class-cli.ts",
      "tcp_echo_server/003-loop.ts",
    ]) {
      const found = stage(real, file);
      expect(servesOneClient(found, await stageHelp(real, found))).toBe(true);
    }
  });

  test("what changed: git diff between a stage and the one before it shows the lesson", async () => {
    const loop = stage(real, "tcp_echo_server/003-loop.ts");
    const command = diffCommand(previousStage(real, loop)!, loop, false);
    expect(commandLine(command)).toBe(
      "git diff --no-index tcp_echo_server/002-logging-class-cli.ts tcp_echo_server/003-loop.ts",
    );
    const git = Bun.spawn(command.argv, {
      cwd: ROOT,
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, GIT_PAGER: "cat" },
    });
    const diff = await new Response(git.stdout).text();
    expect(await git.exited).toBe(1); // git diff --no-index: 1 means "they differ"
    expect(diff).toContain("- * 002 - logging, a class, a command line");
    expect(diff).toContain("+ * 003 - a loop, and the socket options");
    expect(diff).not.toContain("\x1b["); // no colour asked, none given
  });
});

describe("the catalogue as text", () => {
  test("every stage with its command line, the demo by hand, a diff; none yet where a folder is empty", async () => {
    using tree = new TempTree({
      "tcp_echo_server/001-simple-one-echo.ts": { from: "tcp_echo_server/001-simple-one-echo.ts" },
      "tcp_echo_server/003-loop.ts": { from: "tcp_echo_server/003-loop.ts" },
      "test/001-client-fake.ts": { from: "menu/fixtures/fake-client.ts" },
    });
    const text = await catalogueListing(loadCatalogue(tree.root));
    expect(text).toContain(
      "Echo server  (tcp_echo_server/)\n  001  simple one echo\n" +
        "       PORT=5000 bun tcp_echo_server/001-simple-one-echo.ts\n",
    );
    expect(text).toContain(
      "  003  a loop, and the socket options\n       bun tcp_echo_server/003-loop.ts --port 5000\n",
    );
    expect(text).toContain("Proxy  (tcp_proxy/)\n  none yet\n");
    expect(text).toContain(
      "  001  a fake client, for the menu's tests\n       bun test/001-client-fake.ts --port 5000 -n 10\n",
    );
    // The demo by hand: 003 serves one client, so its client gets -n 1.
    expect(text).toContain(
      "  bun tcp_echo_server/003-loop.ts --port 5000\n  bun test/001-client-fake.ts --port 5000 -n 1\n",
    );
    expect(text).toContain("git diff --no-index tcp_echo_server/001-simple-one-echo.ts tcp_echo_server/003-loop.ts");
  });

  test("without a client stage, the demo by hand is nc", async () => {
    using tree = new TempTree({
      "tcp_echo_server/002-logging-class-cli.ts": { from: "tcp_echo_server/002-logging-class-cli.ts" },
    });
    const text = await catalogueListing(loadCatalogue(tree.root));
    expect(text).toContain('echo "hello from the menu" | nc -N 127.0.0.1 5000');
    expect(text).not.toContain("What changed"); // a single stage has nothing to compare with
  });
});
