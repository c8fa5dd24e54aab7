import { toxicArithmeticTests } from "../test/support/toxic-arithmetic.ts";
import { toxicContractTests } from "../test/support/toxic-contract.ts";

const STAGE = "tcp_proxy/007-fault-injection.ts";

toxicArithmeticTests(STAGE, () => import("./007-fault-injection.ts"), { bytesPerKB: 1024 });
toxicContractTests({ file: STAGE });
