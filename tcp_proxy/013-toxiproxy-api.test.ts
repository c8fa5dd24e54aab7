import { afterAll } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { startEchoUpstream } from "../test/support/net.ts";
import { proxyApiTests } from "../test/support/proxy-api-contract.ts";
import { toxicArithmeticTests } from "../test/support/toxic-arithmetic.ts";
import { toxicApiTests } from "../test/support/toxic-api-contract.ts";
import { toxicContractTests } from "../test/support/toxic-contract.ts";
import { toxiproxyApiTests } from "../test/support/toxiproxy-api-contract.ts";

const STAGE = "tcp_proxy/013-toxiproxy-api.ts";

// A proxy in front of an echo upstream is an echo server to its clients: the echo stages' contract holds.
const echoUpstream = startEchoUpstream();
afterAll(() => echoUpstream.stop());
echoContractTests({ file: STAGE, args: ["--port", "0", "--upstream", echoUpstream.address] });

// 010's toxics, unchanged (014 gives them toxiproxy's semantics); toxiproxy's routes, error texts and router.
toxicArithmeticTests(STAGE, () => import("./013-toxiproxy-api.ts"), { bytesPerKB: 1024 });
toxicContractTests({ file: STAGE, args: ["--api-port", "0"] });
toxicApiTests({ file: STAGE, toxicsPath: "/proxies/default/toxics", semantics: "toxiproxy-api" });
proxyApiTests({ file: STAGE, semantics: "toxiproxy" });
toxiproxyApiTests({ file: STAGE, toxics: "lab" });

hostileContractTests({ file: STAGE, kind: "proxy", args: ["--port", "0"], acceptProxy: true });
