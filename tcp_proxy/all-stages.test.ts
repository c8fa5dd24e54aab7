// Every proxy stage against a real echo stage (tcp_echo_server/005, in its own process) as the upstream: what each
// stage claims keeps working in the stages after it (test/support/proxy-contract.ts). Heavier or stage-specific
// checks live beside each stage.
import { describe, expect, test } from "bun:test";
import { peerStopsTaking, TestClient } from "../test/support/net.ts";
import { startStage } from "../test/support/process.ts";
import { stageFiles } from "../lib/stages.ts";
import { proxyContractTests } from "../test/support/proxy-contract.ts";

const ECHO = "tcp_echo_server/005-bounded-concurrency.ts";

/** The first stage that survives clients resetting before the accept completes (002's lesson). */
const SURVIVES_RESET_STORM_FROM = 2;
/** The first stage that keeps what a client sends before its upstream connection is open (003's queues). */
const KEEPS_EARLY_BYTES_FROM = 3;
/** The first stage that passes a FIN on instead of closing both sides (004). */
const HALF_CLOSE_FROM = 4;

/** The proxy stages, found as the menu and the benchmarks find them: every tcp_proxy/NNN-*.ts, in order. */
const STAGES = stageFiles("tcp_proxy").map((name) => [`tcp_proxy/${name}`, Number(name.slice(0, 3))] as const);

test("the stages are found, numbered 001 on without a gap", () => {
  expect(STAGES.length).toBeGreaterThanOrEqual(10);
  expect(STAGES.map(([, number]) => number)).toEqual(STAGES.map((_, index) => index + 1));
});

describe.each(STAGES)("%s", (file, number) => {
  proxyContractTests({
    proxy: { file },
    upstream: { file: ECHO, args: ["--port", "0"] },
    halfClose: number >= HALF_CLOSE_FROM,
    survivesResetStorm: number >= SURVIVES_RESET_STORM_FROM,
    dropsEarlyBytes: number < KEEPS_EARLY_BYTES_FROM,
  });

  // A client that floods, stops reading and leaves, in front of an upstream that stops reading too: what the proxy
  // still holds for the upstream cannot wait forever. (Before 004 there is no timeout to bound it.)
  if (number >= HALF_CLOSE_FROM)
    test("an upstream that takes nothing more cannot hold a connection whose client has gone", async () => {
      let upstreamOpen = 0;
      const deaf = Bun.listen({
        hostname: "127.0.0.1",
        port: 0,
        socket: {
          open(socket) {
            upstreamOpen++;
            socket.pause(); // never reads: the proxy's bytes pile up in the kernel, then in the proxy
          },
          close() {
            upstreamOpen--;
          },
          data() {},
        },
      });
      try {
        const args = ["--port", "0", "--upstream", `127.0.0.1:${deaf.port}`, "--idle-timeout", "1"];
        await using proxy = await startStage(file, args);
        const client = await TestClient.connect(proxy.port);
        client.write(new Uint8Array(32 * 1024 * 1024));
        await peerStopsTaking(client);
        client.reset();
        await proxy.waitForLog(/upstream did not take the last \d+ bytes in time: cut/, 10_000);
        for (let i = 0; upstreamOpen > 0; i++) {
          expect(i).toBeLessThan(100);
          await Bun.sleep(50); // the upstream's close is the end of it; no event reaches the test sooner
        }
      } finally {
        deaf.stop(true);
      }
    });
});
