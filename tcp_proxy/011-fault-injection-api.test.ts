import { afterAll, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { startEchoUpstream } from "../test/support/net.ts";
import { runToExit } from "../test/support/process.ts";
import { toxicArithmeticTests } from "../test/support/toxic-arithmetic.ts";
import { call, startWithApi, toxicApiTests } from "../test/support/toxic-api-contract.ts";
import { toxicContractTests } from "../test/support/toxic-contract.ts";

const STAGE = "tcp_proxy/011-fault-injection-api.ts";

// A proxy in front of an echo upstream is an echo server to its clients: the echo stages' contract holds.
const echoUpstream = startEchoUpstream();
afterAll(() => echoUpstream.stop());
echoContractTests({ file: STAGE, args: ["--port", "0", "--upstream", echoUpstream.address] });

// What 010 (toxics from --toxic) promises still holds here, with the API in place; then the API's own routes.
toxicArithmeticTests(STAGE, () => import("./011-fault-injection-api.ts"), { bytesPerKB: 1024 });
toxicContractTests({ file: STAGE, args: ["--api-port", "0"] });
toxicApiTests({ file: STAGE, toxicsPath: "/toxics" });

test("011 has one proxy: /proxies is not a route yet (012)", async () => {
  await using setup = await startWithApi(STAGE);
  expect(await call(`${setup.api}/proxies`)).toMatchObject({ status: 404, json: { status: 404 } });
});

test("the API's port in use: one line, exit 1 (Bun.serve with development: false would have shared it)", async () => {
  await using first = await startWithApi(STAGE);
  const port = new URL(first.api).port;
  const { code, stderr } = await runToExit(STAGE, ["--port", "0", "--api-port", port]);
  expect(code).toBe(1);
  expect(stderr.trim()).toBe(`error: cannot listen for the API on 127.0.0.1:${port}: address already in use`);
});

hostileContractTests({ file: STAGE, kind: "proxy", args: ["--port", "0"], acceptProxy: true });
