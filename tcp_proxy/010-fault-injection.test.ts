import { afterAll } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { startEchoUpstream } from "../test/support/net.ts";
import { toxicArithmeticTests } from "../test/support/toxic-arithmetic.ts";
import { toxicContractTests } from "../test/support/toxic-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";

const STAGE = "tcp_proxy/010-fault-injection.ts";

// A proxy in front of an echo upstream is an echo server to its clients: the echo stages' contract holds.
const echoUpstream = startEchoUpstream();
afterAll(() => echoUpstream.stop());
echoContractTests({ file: STAGE, args: ["--port", "0", "--upstream", echoUpstream.address] });

toxicArithmeticTests(STAGE, () => import("./010-fault-injection.ts"), { bytesPerKB: 1024 });
toxicContractTests({ file: STAGE });
hostileContractTests({ file: STAGE, kind: "proxy", args: ["--port", "0"], acceptProxy: true });
