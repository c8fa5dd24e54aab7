import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { decode, TestClient } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/002-logging-class-cli.ts";
const LOG_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO |WARN |ERROR) .+$/;

describe("002 logging, a class, a command line", () => {
  test("--port 0 picks a free port and prints one machine-readable listening line", async () => {
    await using server = await startStage(STAGE, ["--port", "0"]);
    expect(server.port).toBeGreaterThan(0);
    expect(server.stdout.text).toBe(`listening on 127.0.0.1:${server.port}\n`);
  });

  test("replies once, closes, exits 0; logs are timestamped and levelled on stderr", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--log-level", "debug"]);
    const client = await TestClient.connect(server.port);
    client.write("hello\n");
    expect(decode(await client.readToEnd())).toBe("HELLO\n");
    expect(await server.waitExit()).toBe(0);
    const lines = (await server.stderr.ended()).trimEnd().split("\n");
    for (const line of lines) expect(line).toMatch(LOG_LINE);
    expect(lines.some((line) => line.includes("DEBUG received 6 bytes"))).toBe(true);
    expect(lines.some((line) => line.includes("INFO  connected by 127.0.0.1"))).toBe(true);
  });

  test("--log-level warn hides info and debug lines", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--log-level", "warn"]);
    const client = await TestClient.connect(server.port);
    client.write("quiet");
    expect(decode(await client.readToEnd())).toBe("QUIET");
    expect(await server.waitExit()).toBe(0);
    expect(await server.stderr.ended()).toBe("");
  });

  test("--host ::1 listens on IPv6 and prints the address in brackets", async () => {
    await using server = await startStage(STAGE, ["--host", "::1", "--port", "0"]);
    expect(server.stdout.text).toBe(`listening on [::1]:${server.port}\n`);
    const client = await TestClient.connect(server.port, "::1");
    client.write("six");
    expect(decode(await client.readToEnd())).toBe("SIX");
  });

  test("-h and --help print usage on stdout and exit 0", async () => {
    for (const flag of ["-h", "--help"]) {
      const { code, stdout, stderr } = await runToExit(STAGE, [flag]);
      expect(code).toBe(0);
      expect(stdout).toStartWith("Usage: bun tcp_echo_server/002-logging-class-cli.ts [options]");
      for (const option of ["--host", "--port", "--log-level", "--help"]) expect(stdout).toContain(option);
      expect(stderr).toBe("");
    }
  });

  const usageErrors: Array<[string[], string]> = [
    [["--bogus"], "error: Unknown option '--bogus' (see --help)\n"],
    [["--port", "abc"], 'error: --port must be an integer from 0 to 65535, got "abc" (see --help)\n'],
    [["--port", "70000"], 'error: --port must be an integer from 0 to 65535, got "70000" (see --help)\n'],
    [["--log-level", "loud"], 'error: --log-level must be one of debug, info, warn, error, got "loud" (see --help)\n'],
    [
      ["--port", "-1"],
      "error: Option '--port' argument is ambiguous. Did you forget to specify the option argument for '--port'? " +
        "To specify an option argument starting with a dash use '--port=-XYZ'. (see --help)\n",
    ],
    [
      ["surplus"],
      "error: Unexpected argument 'surplus'. This command does not take positional arguments (see --help)\n",
    ],
  ];
  for (const [args, message] of usageErrors) {
    test(`usage error ${args.join(" ")}: one line on stderr, exit 2`, async () => {
      const { code, stdout, stderr } = await runToExit(STAGE, args);
      expect({ code, stdout, stderr }).toEqual({ code: 2, stdout: "", stderr: message });
    });
  }

  test("a port already in use: one line, exit 1", async () => {
    await using first = await startStage(STAGE, ["--port", "0"]);
    const { code, stdout, stderr } = await runToExit(STAGE, ["--port", String(first.port)]);
    expect({ code, stdout }).toEqual({ code: 1, stdout: "" });
    expect(stderr).toBe(`error: cannot listen on 127.0.0.1:${first.port}: address already in use\n`);
  });

  echoContractTests({ file: STAGE, args: ["--port", "0"] });
  // One client, then it exits: even one that resets before the accept completes (no address) is a clean exit.
  hostileContractTests({ file: STAGE, kind: "echo", args: ["--port", "0"], servesOneClient: true });
});
