import { describe, expect, test } from "bun:test";
import { decode, startEchoUpstream, TestClient } from "../test/support/net.ts";
import { startStage } from "../test/support/process.ts";
import { toxicArithmeticTests } from "../test/support/toxic-arithmetic.ts";
import { roundTrip, toxicContractTests } from "../test/support/toxic-contract.ts";

const STAGE = "tcp_proxy/011-fault-injection-api.ts";

// What 010 (toxics from --toxic) promises still holds here, with the API in place.
toxicArithmeticTests(STAGE, () => import("./011-fault-injection-api.ts"), { bytesPerKB: 1024 });
toxicContractTests({ file: STAGE, args: ["--api-port", "0"] });

async function startProxy(args: string[] = []) {
  const upstream = startEchoUpstream();
  const proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address, "--api-port", "0", ...args]);
  const api = (await proxy.waitForLog(/API on (http:\/\/\S+)/))[1]!;
  return {
    upstream,
    proxy,
    api,
    toxics: `${api}/toxics`,
    async [Symbol.asyncDispose]() {
      await proxy[Symbol.asyncDispose]();
      upstream.stop();
    },
  };
}

const send = (url: string, method: string, body?: unknown, headers: Record<string, string> = {}) =>
  fetch(url, { method, headers, body: typeof body === "string" ? body : JSON.stringify(body) });

/** Status and JSON body (or text, when it is not JSON). */
async function call(url: string, method = "GET", body?: unknown, headers?: Record<string, string>) {
  const response = await send(url, method, body, headers);
  const text = await response.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: response.status, json, text, type: response.headers.get("content-type") ?? "" };
}

describe("011 toxics changed while the proxy runs", () => {
  test("add, list, change and remove a toxic: an open connection feels each change at once", async () => {
    await using setup = await startProxy();
    const client = await TestClient.connect(setup.proxy.port);
    try {
      expect(await roundTrip(client)).toBeLessThan(1000);
      const added = await call(setup.toxics, "POST", { type: "latency", attributes: { latency: 1500 } });
      expect(added).toMatchObject({ status: 200 }); // as toxiproxy: 200, not 201
      expect(added.json).toEqual({
        name: "latency_downstream", // the default name: TYPE_STREAM, stream downstream by default
        type: "latency",
        stream: "downstream",
        toxicity: 1,
        attributes: { latency: 1500, jitter: 0 },
      });
      expect(await roundTrip(client)).toBeGreaterThanOrEqual(1499);
      expect((await call(setup.toxics)).json).toEqual([added.json]);
      expect((await call(`${setup.toxics}/latency_downstream`)).json).toEqual(added.json);

      const changed = await call(`${setup.toxics}/latency_downstream`, "PATCH", { attributes: { latency: 700 } });
      expect(changed.status).toBe(200);
      expect(changed.json).toMatchObject({ attributes: { latency: 700, jitter: 0 }, toxicity: 1 });
      const after = await roundTrip(client);
      expect(after).toBeGreaterThanOrEqual(699);
      expect(after).toBeLessThan(1499);

      expect((await call(`${setup.toxics}/latency_downstream`, "DELETE")).status).toBe(204);
      expect(await roundTrip(client)).toBeLessThan(700);
      expect((await call(setup.toxics)).json).toEqual([]);
    } finally {
      client.close();
    }
  });

  test("POST on a toxic changes it too (toxiproxy's older clients), keeping what the body leaves out", async () => {
    await using setup = await startProxy(["--toxic", "latency:upstream:latency=5,jitter=2,toxicity=0.5"]);
    const changed = await call(`${setup.toxics}/latency_upstream`, "POST", { attributes: { jitter: 1 } });
    expect(changed.json).toEqual({
      name: "latency_upstream",
      type: "latency",
      stream: "upstream",
      toxicity: 0.5,
      attributes: { latency: 5, jitter: 1 },
    });
    expect((await call(`${setup.toxics}/latency_upstream`, "PATCH", { toxicity: 1 })).json).toMatchObject({
      toxicity: 1,
      attributes: { latency: 5, jitter: 1 },
    });
  });

  test("a stall added and removed live: the data waits, then flows", async () => {
    await using setup = await startProxy();
    const client = await TestClient.connect(setup.proxy.port);
    try {
      await roundTrip(client);
      expect((await call(setup.toxics, "POST", { type: "timeout", stream: "upstream" })).status).toBe(200);
      client.write("held");
      await expect(client.readAtLeast(8, 300)).rejects.toThrow(/timed out/);
      expect((await call(`${setup.toxics}/timeout_upstream`, "DELETE")).status).toBe(204);
      expect(decode(await client.readAtLeast(8, 2000))).toBe("PINGHELD");
    } finally {
      client.close();
    }
  });

  test("a reset_peer removed before its time never fires", async () => {
    await using setup = await startProxy();
    const client = await TestClient.connect(setup.proxy.port);
    try {
      await roundTrip(client);
      await call(setup.toxics, "POST", { type: "reset_peer", attributes: { timeout: 400 } });
      expect((await call(`${setup.toxics}/reset_peer_downstream`, "DELETE")).status).toBe(204);
      expect(await client.endsWithin(800)).toBe(false); // twice its timeout: no event says "did not happen"
      await roundTrip(client); // and the connection still works
    } finally {
      client.close();
    }
  });

  test("POST /reset removes every toxic, for open connections too", async () => {
    await using setup = await startProxy([
      ...["--toxic", "latency:downstream:latency=1500"],
      ...["--toxic", "latency:upstream:latency=1500"],
    ]);
    const client = await TestClient.connect(setup.proxy.port);
    try {
      expect((await call(`${setup.api}/reset`, "POST")).status).toBe(204);
      expect((await call(setup.toxics)).json).toEqual([]);
      expect(await roundTrip(client)).toBeLessThan(1500);
    } finally {
      client.close();
    }
  });
});

describe("011 control API answers every request as an API", () => {
  test.each([
    ["POST", "/toxics", "{not json", 400, /^bad request body/],
    ["POST", "/toxics", "[1, 2]", 400, /^bad request body/],
    ["POST", "/toxics", { type: "gremlins" }, 400, /type must be one of latency/],
    ["POST", "/toxics", { type: "latency", stream: "sideways" }, 400, /stream must be upstream or downstream/],
    ["POST", "/toxics", { type: "latency", attributes: { latency: -5 } }, 400, /latency must be a number from 0/],
    ["POST", "/toxics", { type: "latency", attributes: { latency: 2 ** 31 } }, 400, /from 0 to 2147483647/],
    ["POST", "/toxics", { type: "timeout", attributes: { timeout: 1e12 } }, 400, /from 0 to 2147483647/],
    ["POST", "/toxics", { type: "reset_peer", attributes: { timeout: 2 ** 31 } }, 400, /from 0 to 2147483647/],
    ["POST", "/toxics", { type: "latency", attributes: { jitter: 2 ** 40 } }, 400, /jitter must be a number/],
    ["POST", "/toxics", { type: "latency", attributes: { delay: 5 } }, 400, /latency has no attribute delay/],
    ["POST", "/toxics", { type: "bandwidth" }, 400, /bandwidth needs rate/],
    ["POST", "/toxics", { type: "latency", toxicity: 2 }, 400, /toxicity must be a number from 0 to 1/],
    ["POST", "/toxics", { type: "latency" }, 409, /^toxic already exists$/],
    ["PATCH", "/toxics/latency_downstream", { attributes: "fast" }, 400, /attributes must be an object/],
    ["PATCH", "/toxics/latency_downstream", { attributes: { latency: "5" } }, 400, /latency must be a number/],
    ["GET", "/toxics/nothing", undefined, 404, /^toxic not found$/],
    ["DELETE", "/toxics/nothing", undefined, 404, /^toxic not found$/],
    ["PATCH", "/toxics/nothing", {}, 404, /^toxic not found$/],
    ["GET", "/toxics/%ZZ", undefined, 400, /bad percent-encoding/],
    ["GET", "/toxics/%", undefined, 400, /bad percent-encoding/],
    ["GET", "/toxics/latency_downstream%C0", undefined, 400, /bad percent-encoding/],
    ["GET", "/toxics/a/b", undefined, 404, /no route/],
    ["GET", "/proxies", undefined, 404, /no route/],
    ["PUT", "/toxics", "{}", 405, /PUT not allowed/],
    ["GET", "/reset", undefined, 405, /GET not allowed/],
    ["PUT", "/toxics/latency_downstream", "{}", 405, /PUT not allowed/],
  ])("%s %s %j: %d, {error, status}, nothing changed", async (method, path, body, status, reason) => {
    await using setup = await startProxy(["--toxic", "latency:downstream:latency=1"]);
    const before = (await call(setup.toxics)).json;
    const answer = await call(`${setup.api}${path}`, method, body);
    expect(answer.status).toBe(status);
    expect(answer.type).toMatch(/^application\/json/);
    expect(answer.json).toMatchObject({ status });
    expect((answer.json as { error: string }).error).toMatch(reason);
    expect(answer.text).not.toMatch(/<html|\.ts\b|at fetch/i); // never Bun's error page or a stack
    expect((await call(setup.toxics)).json).toEqual(before);
  });

  test("a browser is refused as toxiproxy refuses it: 403, User agent not allowed", async () => {
    await using setup = await startProxy();
    const browser = { "user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0" };
    const answer = await call(setup.toxics, "POST", { type: "latency", attributes: { latency: 100 } }, browser);
    expect(answer).toMatchObject({ status: 403, text: "User agent not allowed\n" });
    expect(answer.type).toMatch(/^text\/plain/);
    expect((await call(setup.toxics)).json).toEqual([]); // nothing was added
    expect((await call(setup.toxics, "GET", undefined, { "user-agent": "curl/8.5.0" })).status).toBe(200);
  });
});
