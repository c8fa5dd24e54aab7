// Every proxy stage against a real echo stage (tcp_echo_server/005, in its own process) as the upstream: what each
// stage claims keeps working in the stages after it (test/support/proxy-contract.ts). Heavier or stage-specific
// checks live beside each stage.
import { describe } from "bun:test";
import { proxyContractTests } from "../test/support/proxy-contract.ts";

const ECHO = "tcp_echo_server/005-bounded-concurrency.ts";

/** Proxy stages, and the first stage that handles half-close. */
const STAGES = [
  "tcp_proxy/001-naive-pipe.ts",
  "tcp_proxy/002-queues-and-backpressure.ts",
  "tcp_proxy/003-half-close-and-timeouts.ts",
  "tcp_proxy/004-limits-and-lifecycle.ts",
  "tcp_proxy/005-upstream-pool.ts",
  "tcp_proxy/006-observability-and-edges.ts",
  "tcp_proxy/007-fault-injection.ts",
];
const HALF_CLOSE_FROM = 3;

describe.each(STAGES.map((file, index) => [file, index + 1] as const))("%s", (file, number) => {
  proxyContractTests({
    proxy: { file },
    upstream: { file: ECHO, args: ["--port", "0"] },
    halfClose: number >= HALF_CLOSE_FROM,
    survivesResetStorm: number >= 2,
    dropsEarlyBytes: number === 1,
  });
});
