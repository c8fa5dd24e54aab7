import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { decode, TestClient } from "../test/support/net.ts";
import { portIsFree, runToExit, startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/001-simple-one-echo.ts";
const onFreePort = { env: { PORT: "0" } };
const USAGE = "usage: [PORT=5000] bun tcp_echo_server/001-simple-one-echo.ts   (no options; stage 002 adds them)";

describe("001 simple one echo", () => {
  test("replies once with the uppercased first chunk, closes the connection and exits 0", async () => {
    await using server = await startStage(STAGE, [], onFreePort);
    expect(server.host).toBe("127.0.0.1");
    const client = await TestClient.connect(server.port);
    client.write("hello world\n");
    expect(decode(await client.readToEnd())).toBe("HELLO WORLD\n");
    expect(await server.waitExit()).toBe(0);
    expect(server.stdout.text).toContain("Connected by 127.0.0.1");
  });

  test("serves one client only: once it is done nobody else can connect", async () => {
    await using server = await startStage(STAGE, [], onFreePort);
    const first = await TestClient.connect(server.port);
    first.write("one");
    expect(decode(await first.readToEnd())).toBe("ONE");
    expect(await server.waitExit()).toBe(0);
    await expect(TestClient.connect(server.port)).rejects.toThrow();
  });

  // Port 5000 may be taken on a shared machine; the default is only checked when it is free.
  test.skipIf(!portIsFree(5000))("listens on 127.0.0.1:5000 by default", async () => {
    await using server = await startStage(STAGE);
    expect([server.host, server.port]).toEqual(["127.0.0.1", 5000]);
    const client = await TestClient.connect(5000);
    client.write("default port");
    expect(decode(await client.readToEnd())).toBe("DEFAULT PORT");
    expect(await server.waitExit()).toBe(0);
  });

  test("takes no options: -h says so (exit 0), anything else is one line and exit 2", async () => {
    const help = await runToExit(STAGE, ["-h"]);
    expect([help.code, help.stdout]).toEqual([0, `${USAGE}\n`]);
    const option = await runToExit(STAGE, ["--port", "5000"]);
    expect([option.code, option.stderr]).toEqual([2, `error: unexpected argument "--port"; ${USAGE}\n`]);
  });

  test("a bad PORT is one line and exit 2; a port in use is one line and exit 1", async () => {
    for (const port of ["abc", "70000", "-1"]) {
      const bad = await runToExit(STAGE, [], { env: { PORT: port } });
      expect([bad.code, bad.stderr]).toEqual([2, `error: PORT must be an integer from 0 to 65535, got "${port}"\n`]);
    }
    await using first = await startStage(STAGE, [], onFreePort);
    const taken = await runToExit(STAGE, [], { env: { PORT: String(first.port) } });
    expect([taken.code, taken.stdout, taken.stderr]).toEqual([
      1,
      "",
      `error: cannot listen on 127.0.0.1:${first.port}: address already in use\n`,
    ]);
  });

  echoContractTests({ file: STAGE, options: onFreePort });
  // One client, then it exits: whatever that client does, the exit is clean.
  hostileContractTests({ file: STAGE, kind: "echo", options: onFreePort, servesOneClient: true });
});
