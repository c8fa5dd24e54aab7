// The proxies of a control-plane stage (012 on), created, changed and removed at run time through toxiproxy's
// /proxies routes: shapes, status codes and error bodies, a refused request changing nothing, enable and disable
// on the same address, a new upstream or listen address, delete, reset, a drain of every proxy, and the usage and
// start-up errors. 013 on register them with toxiproxy's error texts.

import { describe, expect, test } from "bun:test";
import { decode, type EchoUpstream, startEchoUpstream, TestClient } from "./net.ts";
import { API_LINE, LISTENING_LINE, runToExit, startStage } from "./process.ts";
import { call } from "./toxic-api-contract.ts";
import { roundTrip } from "./toxic-contract.ts";

export interface ProxyApiStage {
  file: string;
  /** "toxiproxy" (013 on): toxiproxy's error texts, and its router's 404 and 405 for unknown routes and methods. */
  semantics?: "lab" | "toxiproxy";
}

/** A stage with only its API (no proxy yet), as toxiproxy-server runs, and two echo upstreams to point proxies at. */
export async function startApiServer(file: string, args: string[] = []) {
  const upstreams: [EchoUpstream, EchoUpstream] = [startEchoUpstream(), startEchoUpstream()];
  const server = await startStage(file, ["--api-port", "0", ...args], { line: API_LINE });
  return {
    server,
    api: `http://127.0.0.1:${server.port}`,
    upstreams,
    async [Symbol.asyncDispose]() {
      await server[Symbol.asyncDispose]();
      for (const upstream of upstreams) upstream.stop();
    },
  };
}

/** Whether one round trip through `port` comes back uppercased. */
export async function echoes(port: number, text = "ping"): Promise<boolean> {
  const client = await TestClient.connect(port);
  try {
    client.write(text);
    return decode(await client.readAtLeast(text.length, 3000)) === text.toUpperCase();
  } finally {
    client.close();
  }
}

export function proxyApiTests({ file, semantics = "lab" }: ProxyApiStage): void {
  const STAGE = file;
  const lab = semantics === "lab";
  const label = file.replace(/^.*\//, "").slice(0, 3);
  /** The stage with only its API (no proxy yet), echo upstreams, and a way to make a proxy through the API. */
  async function startApi(args: string[] = []) {
    const setup = await startApiServer(STAGE, args);
    return {
      ...setup,
      /** POST /proxies, expecting 201; returns the proxy's JSON and its port. */
      async create(name: string, upstream: EchoUpstream, more: Record<string, unknown> = {}) {
        const answer = await call(`${setup.api}/proxies`, "POST", { name, upstream: upstream.address, ...more });
        expect(answer.status).toBe(201);
        const proxy = answer.json as { listen: string; enabled: boolean };
        return { ...proxy, port: Number(proxy.listen.split(":").at(-1)) };
      },
    };
  }

  const refused = (port: number) => expect(TestClient.connect(port)).rejects.toThrow();

  describe(`${label} proxies created, changed and removed at run time`, () => {
    test("--api-port 0 alone: the API and no proxy; its real port on an `api on HOST:PORT` line", async () => {
      await using setup = await startApi();
      expect(setup.server.stdout.text).not.toMatch(LISTENING_LINE);
      expect(await call(`${setup.api}/proxies`)).toMatchObject({ status: 200, json: {} });
    });

    test("create a proxy on port 0: 201, the real port reported, bytes flow; list and get show it", async () => {
      await using setup = await startApi();
      const [upstream] = setup.upstreams;
      const created = await setup.create("echo", upstream!, { listen: "127.0.0.1:0" });
      expect(created).toMatchObject({ name: "echo", upstream: upstream!.address, enabled: true, toxics: [] });
      expect(created.listen).toMatch(/^127\.0\.0\.1:\d+$/);
      expect(created.port).toBeGreaterThan(0);
      expect(await echoes(created.port)).toBe(true);
      const { port: _, ...json } = created;
      expect((await call(`${setup.api}/proxies`)).json).toEqual({ echo: json });
      expect((await call(`${setup.api}/proxies/echo`)).json).toEqual(json);
    });

    test("listen defaults to 127.0.0.1:0; enabled false creates a proxy that does not listen yet", async () => {
      await using setup = await startApi();
      const idle = await setup.create("idle", setup.upstreams[0]!, { enabled: false });
      expect(idle).toMatchObject({ enabled: false, listen: "127.0.0.1:0" });
      const started = await call(`${setup.api}/proxies/idle`, "PATCH", { enabled: true });
      expect(started.json).toMatchObject({ enabled: true });
      expect(await echoes(Number((started.json as { listen: string }).listen.split(":")[1]))).toBe(true);
    });

    test("two proxies, each with its own toxics", async () => {
      await using setup = await startApi();
      const slow = await setup.create("slow", setup.upstreams[0]!);
      const fast = await setup.create("fast", setup.upstreams[1]!);
      const toxic = { type: "latency", attributes: { latency: 1000 } };
      expect((await call(`${setup.api}/proxies/slow/toxics`, "POST", toxic)).status).toBe(200);
      const [slowClient, fastClient] = await Promise.all([
        TestClient.connect(slow.port),
        TestClient.connect(fast.port),
      ]);
      try {
        expect(await roundTrip(slowClient)).toBeGreaterThanOrEqual(999);
        expect(await roundTrip(fastClient)).toBeLessThan(999);
        expect((await call(`${setup.api}/proxies/fast/toxics`)).json).toEqual([]);
      } finally {
        slowClient.close();
        fastClient.close();
      }
    });

    test("enabled false takes a proxy down, connections closed; true brings it back on the same address", async () => {
      await using setup = await startApi();
      const proxy = await setup.create("echo", setup.upstreams[0]!);
      const client = await TestClient.connect(proxy.port);
      await roundTrip(client);
      const down = await call(`${setup.api}/proxies/echo`, "PATCH", { enabled: false });
      expect(down.json).toMatchObject({ enabled: false, listen: proxy.listen });
      expect(await client.endsWithin(3000)).toBe(true);
      await refused(proxy.port);
      await setup.server.waitForLog(/closed_by=proxy reason="proxy disabled"/);
      const up = await call(`${setup.api}/proxies/echo`, "POST", { enabled: true }); // POST, as older clients do
      expect(up.json).toMatchObject({ enabled: true, listen: proxy.listen });
      expect(await echoes(proxy.port)).toBe(true);
    });

    test("a new upstream or listen address restarts the proxy there", async () => {
      await using setup = await startApi();
      const [first, second] = setup.upstreams as [EchoUpstream, EchoUpstream];
      const proxy = await setup.create("echo", first);
      expect(await echoes(proxy.port)).toBe(true);
      const moved = await call(`${setup.api}/proxies/echo`, "PATCH", { upstream: second.address });
      expect(moved.json).toMatchObject({ upstream: second.address, enabled: true });
      const before = second.accepted;
      expect(await echoes(proxy.port)).toBe(true);
      expect(second.accepted).toBe(before + 1);
      const relisten = await call(`${setup.api}/proxies/echo`, "PATCH", { listen: "127.0.0.1:0" });
      const port = Number((relisten.json as { listen: string }).listen.split(":")[1]);
      expect(port).not.toBe(proxy.port);
      await refused(proxy.port);
      expect(await echoes(port)).toBe(true);
    });

    test("DELETE removes a proxy: 204, its connections closed, its port free, its name free again", async () => {
      await using setup = await startApi();
      const proxy = await setup.create("echo", setup.upstreams[0]!);
      const client = await TestClient.connect(proxy.port);
      await roundTrip(client);
      expect((await call(`${setup.api}/proxies/echo`, "DELETE")).status).toBe(204);
      expect(await client.endsWithin(3000)).toBe(true);
      await refused(proxy.port);
      expect((await call(`${setup.api}/proxies`)).json).toEqual({});
      await setup.create("echo", setup.upstreams[0]!, { listen: proxy.listen }); // the same name and port again
      expect(await echoes(proxy.port)).toBe(true);
    });

    test("POST /reset enables every proxy again and removes every toxic", async () => {
      await using setup = await startApi();
      const proxy = await setup.create("echo", setup.upstreams[0]!);
      await call(`${setup.api}/proxies/echo/toxics`, "POST", { type: "latency", attributes: { latency: 2000 } });
      await call(`${setup.api}/proxies/echo`, "PATCH", { enabled: false });
      expect((await call(`${setup.api}/reset`, "POST")).status).toBe(204);
      expect((await call(`${setup.api}/proxies/echo`)).json).toMatchObject({ enabled: true, toxics: [] });
      const client = await TestClient.connect(proxy.port);
      try {
        expect(await roundTrip(client)).toBeLessThan(2000);
      } finally {
        client.close();
      }
    });

    const refusals: [string, string, unknown, number, RegExp][] = [
      ["POST", "/proxies", {}, 400, /^missing required field: name$/],
      ["POST", "/proxies", { name: "x" }, 400, /^missing required field: upstream$/],
      ["POST", "/proxies", { name: "x", upstream: "nowhere" }, 400, /upstream must look like HOST:PORT/],
      ["POST", "/proxies", { name: "x", upstream: "127.0.0.1:1", listen: "here" }, 400, /listen must look like/],
      ["POST", "/proxies", { name: "x", upstream: "127.0.0.1:1", enabled: "yes" }, 400, /enabled must be/],
      ["POST", "/proxies", { name: "taken", upstream: "127.0.0.1:1" }, 409, /^proxy already exists$/],
      ["POST", "/proxies", "[]", 400, /^bad request body/],
      ["GET", "/proxies/nope", undefined, 404, /^proxy not found$/],
      ["PATCH", "/proxies/nope", {}, 404, /^proxy not found$/],
      ["DELETE", "/proxies/nope", undefined, 404, /^proxy not found$/],
      ["GET", "/proxies/nope/toxics", undefined, 404, /^proxy not found$/],
      ["PATCH", "/proxies/taken", { listen: 5 }, 400, /listen must be a string/],
      ["PATCH", "/proxies/taken", { enabled: 1 }, 400, /enabled must be/],
      ["GET", "/proxies/%ZZ", undefined, 400, /bad percent-encoding/],
    ];
    if (lab) {
      refusals.push(
        ["GET", "/proxies/taken/other", undefined, 404, /no route/],
        ["GET", "/toxics", undefined, 404, /no route/],
        ["PUT", "/proxies", "{}", 405, /PUT not allowed/],
        ["DELETE", "/proxies", undefined, 405, /DELETE not allowed/],
        ["PUT", "/proxies/taken", "{}", 405, /PUT not allowed/],
      );
    }
    test.each(refusals)("%s %s %j: %d with the reason, nothing changed", async (method, path, body, status, reason) => {
      await using setup = await startApi();
      await setup.create("taken", setup.upstreams[0]!);
      const before = (await call(`${setup.api}/proxies`)).json;
      const answer = await call(`${setup.api}${path}`, method, body);
      expect(answer).toMatchObject({ status, json: { status } });
      expect((answer.json as { error: string }).error).toMatch(reason);
      expect((await call(`${setup.api}/proxies`)).json).toEqual(before);
    });

    test("a listen port in use is a 409 with the reason, and no proxy is created", async () => {
      await using setup = await startApi();
      const taken = await setup.create("first", setup.upstreams[0]!);
      const answer = await call(`${setup.api}/proxies`, "POST", {
        name: "second",
        upstream: setup.upstreams[0]!.address,
        listen: taken.listen,
      });
      expect(answer).toMatchObject({ status: 409, json: { status: 409 } });
      const busy = lab ? `cannot listen on ${taken.listen}:` : `listen tcp ${taken.listen}: bind:`;
      expect((answer.json as { error: string }).error).toBe(`${busy} address already in use`);
      expect(Object.keys((await call(`${setup.api}/proxies`)).json as object)).toEqual(["first"]);
    });

    test("SIGTERM drains every proxy: both stop accepting, their open connections finish, then exit 0", async () => {
      const upstream = startEchoUpstream();
      try {
        await using server = await startStage(STAGE, [
          "--port",
          "0",
          "--upstream",
          upstream.address,
          "--api-port",
          "0",
        ]);
        const api = (await server.waitForLog(/API on (http:\/\/\S+)/))[1]!;
        const other = await call(`${api}/proxies`, "POST", { name: "other", upstream: upstream.address });
        const otherPort = Number((other.json as { listen: string }).listen.split(":")[1]);
        const clients = await Promise.all([TestClient.connect(server.port), TestClient.connect(otherPort)]);
        for (const client of clients) await roundTrip(client);
        server.proc.kill("SIGTERM");
        await server.waitForLog(/SIGTERM: no longer accepting, waiting up to 10s for 2 connections/);
        await refused(server.port);
        await refused(otherPort);
        for (const client of clients) await roundTrip(client); // still served
        for (const client of clients) client.close();
        expect(await server.waitExit(5000)).toBe(0);
        await server.waitForLog(/all connections finished, exiting/);
      } finally {
        upstream.stop();
      }
    });

    test.each([
      [["--api-port", "0", "--toxic", "latency:downstream"], /--toxic is for the command line's proxy/],
      [["--name", ""], /--name must not be empty/],
      [["--api-port", "99999"], /--api-port must be an integer from 0 to 65535/],
    ])("usage error %p: one line, exit 2", async (args, message) => {
      const { code, stderr } = await runToExit(STAGE, args);
      expect(code).toBe(2);
      expect(stderr).toMatch(message);
      expect(stderr.trim().split("\n")).toHaveLength(1);
    });

    test("the API's port in use: one line, exit 1", async () => {
      await using first = await startStage(STAGE, ["--api-port", "0"], { line: API_LINE });
      const { code, stderr } = await runToExit(STAGE, ["--api-port", String(first.port)]);
      expect(code).toBe(1);
      expect(stderr.trim()).toBe(`error: cannot listen for the API on 127.0.0.1:${first.port}: address already in use`);
    });
  });
}
