import { proxyApiTests } from "../test/support/proxy-api-contract.ts";
import { toxicArithmeticTests } from "../test/support/toxic-arithmetic.ts";
import { toxicApiTests } from "../test/support/toxic-api-contract.ts";
import { toxicContractTests } from "../test/support/toxic-contract.ts";

const STAGE = "tcp_proxy/012-proxies-at-run-time.ts";

// 011's promises hold, the command line's proxy ("default") now one of many: its toxics at /proxies/default/toxics.
toxicArithmeticTests(STAGE, () => import("./012-proxies-at-run-time.ts"), { bytesPerKB: 1024 });
toxicContractTests({ file: STAGE, args: ["--api-port", "0"] });
toxicApiTests({ file: STAGE, toxicsPath: "/proxies/default/toxics" });
proxyApiTests({ file: STAGE });
