import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { hardenedEchoTests } from "../test/support/echo-hardened.ts";
import { connectMany, decode, TestClient } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/008-limits-not-a-waiting-room.ts";
const PREVIOUS = "tcp_echo_server/007-half-close.ts";

describe("008 limits instead of a waiting room", () => {
  test("the log states the limits in force; -h lists --max-per-ip; a bad value is a usage error", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--max-per-ip", "3", "--max-buffer", "1m"]);
    expect(server.stdout.text).toBe(`listening on 127.0.0.1:${server.port}\n`);
    await server.waitForLog(/INFO  \[server \| active 0\/10000\] listening on/);
    expect(server.stderr.text).toContain(
      `listening on 127.0.0.1:${server.port} (at most 10000 clients at once, 3 per address, ` +
        "1 MiB reply queue per client, idle timeout 60 s)",
    );
    const help = await runToExit(STAGE, ["-h"]);
    expect([help.code, help.stdout]).toEqual([0, expect.stringContaining("--max-per-ip N")]);
    expect(await runToExit(STAGE, ["--max-per-ip", "some"])).toEqual({
      code: 2,
      stdout: "",
      stderr: 'error: --max-per-ip must be an integer (0 = no limit), got "some" (see --help)\n',
    });
  });

  echoContractTests({ file: STAGE, args: ["--port", "0"] });

  hostileContractTests({ file: STAGE, kind: "echo", args: ["--port", "0"] });

  // The lesson: one client over --max-clients. 007 holds it in a waiting room: connected, its bytes unanswered,
  // for as long as the client ahead of it stays. 008 closes it at once and says which limit.
  describe("a second client with --max-clients 1", () => {
    test("007 (previous stage) keeps it connected and unanswered", async () => {
      await using server = await startStage(PREVIOUS, ["--port", "0", "--max-clients", "1"]);
      const first = await TestClient.connect(server.port);
      await server.waitForLog(/serving/);
      const second = await TestClient.connect(server.port);
      second.write("anyone there?");
      await server.waitForLog(/all 1 slots taken, waiting/);
      expect(await second.endsWithin(500)).toBe(false);
      expect(second.receivedLength).toBe(0);
      first.close();
      second.close();
    });

    test("008 refuses it at once, naming the limit", async () => {
      await using server = await startStage(STAGE, ["--port", "0", "--max-clients", "1"]);
      const first = await TestClient.connect(server.port);
      await server.waitForLog(/serving/);
      const second = await TestClient.connect(server.port);
      second.write("anyone there?");
      expect((await second.readToEnd(2000)).length).toBe(0);
      await server.waitForLog(/\[conn 2 \| active 1\/1\] refused 127\.0\.0\.1: 1 clients connected, the limit/);
      first.write("still served");
      expect(decode(await first.readAtLeast(12))).toBe("STILL SERVED");
    });
  });

  test("SIGTERM closes every client at once and says how many (replies still queued are dropped: 009)", async () => {
    await using server = await startStage(STAGE, ["--port", "0"]);
    const clients = await connectMany(server.port, 5, { greeting: "hi" });
    expect(await server.stop("SIGTERM")).toBe(0);
    expect(server.stderr.text).toContain("SIGTERM received: shutting down");
    expect(server.stderr.text).toContain("[server | active 0/10000] closed 5 client(s); bye");
    await Promise.all(clients.map((client) => client.readToEnd()));
  });

  hardenedEchoTests({ file: STAGE, features: { halfClose: true, limits: true, drain: false } });
});
