// The toxic routes of a proxy stage's HTTP API, registered by every stage that has them: 011 serves one proxy's
// toxics at /toxics, 012 and later at /proxies/NAME/toxics. toxiproxy's JSON shapes and status codes, a change
// that reaches open connections at once, and every refused request answered {"error": ..., "status": ...} with
// nothing changed, never a 5xx, never a page with source; a browser refused with 403 as toxiproxy does.

import { describe, expect, test } from "bun:test";
import { decode, startEchoUpstream, TestClient } from "./net.ts";
import { startStage } from "./process.ts";
import { roundTrip } from "./toxic-contract.ts";

export interface ToxicApiStage {
  file: string;
  /** Where the command line's proxy's toxics are, below the API's root: "/toxics" or "/proxies/NAME/toxics". */
  toxicsPath: string;
  /**
   * "toxiproxy-api" (013): unknown routes and methods answer as toxiproxy's router; the toxics are still 010's.
   * "toxiproxy" (014 on): that, and a timeout toxic drops data and closes its connections when removed;
   * attributes are read as toxiproxy reads them (negative and defaulted ones accepted).
   */
  semantics?: "lab" | "toxiproxy-api" | "toxiproxy";
}

export interface Answer {
  status: number;
  json: unknown;
  text: string;
  type: string;
}

/** Sends a request (a body that is not a string goes as JSON) and returns status, JSON (if it is), text, type. */
export async function call(url: string, method = "GET", body?: unknown, headers: Record<string, string> = {}) {
  const payload = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
  const response = await fetch(url, { method, headers, body: payload });
  const text = await response.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: response.status, json, text, type: response.headers.get("content-type") ?? "" } as Answer;
}

/** Starts the stage with an in-process echo upstream, --api-port 0 and `args`; gives the API's root URL. */
export async function startWithApi(file: string, args: string[] = []) {
  const upstream = startEchoUpstream();
  const proxy = await startStage(file, ["--port", "0", "--upstream", upstream.address, "--api-port", "0", ...args]);
  const api = (await proxy.waitForLog(/API on (http:\/\/\S+)/))[1]!;
  return {
    upstream,
    proxy,
    api,
    async [Symbol.asyncDispose]() {
      await proxy[Symbol.asyncDispose]();
      upstream.stop();
    },
  };
}

export function toxicApiTests({ file, toxicsPath, semantics = "lab" }: ToxicApiStage): void {
  const lab = semantics !== "toxiproxy"; // 010's toxics
  const labRoutes = semantics === "lab";
  const label = file.replace(/^.*\//, "").slice(0, 3);
  const start = async (args: string[] = []) => {
    const setup = await startWithApi(file, args);
    return Object.assign(setup, { toxics: `${setup.api}${toxicsPath}` });
  };

  describe(`${label} toxics changed while the proxy runs`, () => {
    test("add, list, change and remove a toxic: an open connection feels each change at once", async () => {
      await using setup = await start();
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
      await using setup = await start(["--toxic", "latency:upstream:latency=5,jitter=2,toxicity=0.5"]);
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

    test.if(lab)("a stall added and removed live: the data waits, then flows", async () => {
      await using setup = await start();
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

    test.if(!lab)("a timeout added live drops the data; removed, it closes the connection (as toxiproxy)", async () => {
      await using setup = await start();
      const client = await TestClient.connect(setup.proxy.port);
      try {
        await roundTrip(client);
        expect((await call(setup.toxics, "POST", { type: "timeout", stream: "upstream" })).status).toBe(200);
        client.write("lost");
        await expect(client.readAtLeast(8, 300)).rejects.toThrow(/timed out/);
        expect((await call(`${setup.toxics}/timeout_upstream`, "DELETE")).status).toBe(204);
        expect(await client.endsWithin(2000)).toBe(true); // bytes were dropped: the stream cannot go on
        expect(client.receivedLength).toBe(4);
      } finally {
        client.close();
      }
    });

    test("a reset_peer removed before its time never fires", async () => {
      await using setup = await start();
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
      await using setup = await start([
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

  describe(`${label} toxic routes answer every request as an API`, () => {
    const refusals: [string, string, unknown, number, RegExp][] = [
      ["POST", "", "{not json", 400, /^bad request body/],
      ["POST", "", "[1, 2]", 400, /^bad request body/],
      ["POST", "", { type: "gremlins" }, 400, /invalid toxic type|type must be one of latency/],
      ["POST", "", { type: "latency", stream: "sideways" }, 400, /stream (was invalid|must be upstream)/],
      ["POST", "", { type: "latency", attributes: { latency: 2 ** 31 } }, 400, /to 2147483647/],
      ["POST", "", { type: "timeout", attributes: { timeout: 1e12 } }, 400, /to 2147483647/],
      ["POST", "", { type: "reset_peer", attributes: { timeout: 2 ** 31 } }, 400, /to 2147483647/],
      ["POST", "", { type: "latency", attributes: { jitter: 2 ** 40 } }, 400, /jitter must be an? (number|integer)/],
      ["POST", "", { type: "latency" }, 409, /^toxic already exists$/],
      ["PATCH", "/latency_downstream", { attributes: "fast" }, 400, /attributes must be an object/],
      ["PATCH", "/latency_downstream", { attributes: { latency: "5" } }, 400, /latency must be an? (number|int)/],
      ["GET", "/nothing", undefined, 404, /^toxic not found$/],
      ["DELETE", "/nothing", undefined, 404, /^toxic not found$/],
      ["PATCH", "/nothing", {}, 404, /^toxic not found$/],
      ["GET", "/%ZZ", undefined, 400, /bad percent-encoding/],
      ["GET", "/%", undefined, 400, /bad percent-encoding/],
      ["GET", "/latency_downstream%C0", undefined, 400, /bad percent-encoding/],
    ];
    if (lab) {
      refusals.push(
        ["POST", "", { type: "latency", attributes: { latency: -5 } }, 400, /latency must be a number from 0/],
        ["POST", "", { type: "latency", attributes: { delay: 5 } }, 400, /latency has no attribute delay/],
        ["POST", "", { type: "bandwidth" }, 400, /bandwidth needs rate/],
        ["POST", "", { type: "latency", toxicity: 2 }, 400, /toxicity must be a number from 0 to 1/],
      );
    } else {
      refusals.push(
        ["POST", "", { type: "bandwidth", attributes: { rate: -1 } }, 400, /rate must be an integer from 0/],
        ["POST", "", { type: "latency", attributes: { latency: 1.5 } }, 400, /latency must be an integer/],
        ["POST", "", { type: "down" }, 400, /^invalid toxic type$/],
        ["POST", "", { type: "latency", stream: "" }, 400, /^stream was invalid/],
        ["POST", "", { type: "latency", toxicity: "all" }, 400, /toxicity must be a number/],
        ["PATCH", "/latency_downstream", { attributes: { latency: 7, jitter: "x" } }, 400, /jitter must be/],
      );
    }
    if (labRoutes) {
      refusals.push(
        ["GET", "/a/b", undefined, 404, /no route/],
        ["PUT", "", "{}", 405, /PUT not allowed/],
        ["PUT", "/latency_downstream", "{}", 405, /PUT not allowed/],
      );
    }
    test.each(refusals)(
      "%s TOXICS%s %j: %d, {error, status}, nothing changed",
      async (method, path, body, status, reason) => {
        await using setup = await start(["--toxic", "latency:downstream:latency=1"]);
        const before = (await call(setup.toxics)).json;
        const answer = await call(`${setup.toxics}${path}`, method, body);
        expect(answer.status).toBe(status);
        expect(answer.type).toMatch(/^application\/json/);
        expect(answer.json).toMatchObject({ status });
        expect((answer.json as { error: string }).error).toMatch(reason);
        expect(answer.text).not.toMatch(/<html|\.ts\b|at fetch/i); // never Bun's error page or a stack
        expect((await call(setup.toxics)).json).toEqual(before);
      },
    );

    test.if(labRoutes)("GET /reset is a 405 in JSON", async () => {
      await using setup = await start();
      expect(await call(`${setup.api}/reset`)).toMatchObject({ status: 405, json: { status: 405 } });
    });

    test.if(!labRoutes)(
      "unknown routes and methods answer as toxiproxy's router: 404 page not found, an empty 405",
      async () => {
        await using setup = await start();
        const notFound = { status: 404, text: "404 page not found\n" };
        expect(await call(`${setup.toxics}/a/b`)).toMatchObject(notFound);
        expect(await call(`${setup.toxics}/`)).toMatchObject(notFound);
        expect(await call(`${setup.api}/toxics`)).toMatchObject(notFound);
        for (const [method, path] of [
          ["PUT", setup.toxics],
          ["PUT", `${setup.toxics}/x`],
          ["GET", `${setup.api}/reset`],
        ]) {
          expect(await call(path!, method)).toMatchObject({ status: 405, text: "" });
        }
      },
    );

    test.if(!lab)("accepted as toxiproxy accepts them: negative and defaulted attributes, any toxicity", async () => {
      await using setup = await start();
      const toxic = { type: "latency", name: "odd", toxicity: 7, attributes: { latency: -5, bogus: 1 } };
      expect((await call(setup.toxics, "POST", toxic)).json).toEqual({
        attributes: { latency: -5, jitter: 0 }, // unknown attributes dropped, the rest defaulted to 0
        name: "odd",
        type: "latency",
        stream: "downstream",
        toxicity: 7,
      });
      const answer = await call(setup.toxics, "POST", { type: "bandwidth" });
      expect(answer.json).toMatchObject({ name: "bandwidth_downstream", attributes: { rate: 0 } });
    });

    test("a browser is refused as toxiproxy refuses it: 403, User agent not allowed", async () => {
      await using setup = await start();
      const browser = { "user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0" };
      const answer = await call(setup.toxics, "POST", { type: "latency", attributes: { latency: 100 } }, browser);
      expect(answer).toMatchObject({ status: 403, text: "User agent not allowed\n" });
      expect(answer.type).toMatch(/^text\/plain/);
      expect((await call(setup.toxics)).json).toEqual([]); // nothing was added
      expect((await call(setup.toxics, "GET", undefined, { "user-agent": "curl/8.5.0" })).status).toBe(200);
    });
  });
}
