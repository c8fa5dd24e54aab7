// toxiproxy's own API on a stage that answers as toxiproxy (013 on): toxiproxy-node-client driving it unchanged
// (version, proxies, toxics, populate, reset), the raw HTTP answers byte for byte where clients read them, --config
// and the per-proxy and per-toxic /metrics. 013 registers it with 010's toxics ("lab"), 014 with toxiproxy's: the
// tests that read a toxic's body as toxiproxy does (keys in any case, a stream echoed as given) need the latter.

import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ICreateToxicBody, Toxiproxy } from "toxiproxy-node-client";
import { startEchoUpstream, TestClient } from "./net.ts";
import { API_LINE, runToExit, startStage } from "./process.ts";
import { echoes, startApiServer } from "./proxy-api-contract.ts";
import { call } from "./toxic-api-contract.ts";
import { roundTrip } from "./toxic-contract.ts";

export interface ToxiproxyApiStage {
  file: string;
  /** Whose toxics the stage has: 010's ("lab", 013) or toxiproxy's (014 on). */
  toxics: "lab" | "toxiproxy";
}

/** The stage with only its API, as toxiproxy-server runs, echo upstreams, and a toxiproxy-node-client on it. */
export async function startToxiproxyServer(file: string, args: string[] = []) {
  const setup = await startApiServer(file, args);
  return { ...setup, client: new Toxiproxy(setup.api) };
}

export const portOf = (listen: string): number => Number(listen.split(":").at(-1));

/** A toxic body as the client's types want it, from what a user writes. */
export const toxic = <T>(body: Partial<ICreateToxicBody<T>>) => body as ICreateToxicBody<T>;

export function toxiproxyApiTests({ file, toxics }: ToxiproxyApiStage): void {
  const STAGE = file;
  const label = file.replace(/^.*\//, "").slice(0, 3);
  const startServer = (args: string[] = []) => startToxiproxyServer(STAGE, args);

  describe(`${label} conformance: toxiproxy-node-client 4.1.0 drives it unchanged`, () => {
    test("version, create, list, get, update, remove a proxy", async () => {
      await using setup = await startServer();
      const { client, upstreams } = setup;
      expect(await client.getVersion()).toBe('{"version": "2.12.0"}\n');
      const proxy = await client.createProxy({ name: "echo", listen: "localhost:0", upstream: upstreams[0].address });
      expect(proxy).toMatchObject({ name: "echo", upstream: upstreams[0].address, enabled: true });
      expect(proxy.listen).toMatch(/^localhost:\d+$/);
      expect(await echoes(portOf(proxy.listen))).toBe(true);
      expect(Object.keys(await client.getAll())).toEqual(["echo"]);
      expect((await client.get("echo")).toJson()).toEqual(proxy.toJson());

      const down = await proxy.update({ enabled: false, listen: proxy.listen, upstream: proxy.upstream });
      expect(down.enabled).toBe(false);
      await expect(TestClient.connect(portOf(proxy.listen))).rejects.toThrow();
      const up = await down.update({ enabled: true, listen: proxy.listen, upstream: upstreams[1].address });
      expect(up).toMatchObject({ enabled: true, listen: proxy.listen, upstream: upstreams[1].address });
      const before = upstreams[1].accepted;
      expect(await echoes(portOf(up.listen))).toBe(true);
      expect(upstreams[1].accepted).toBe(before + 1);
      // the client's own test: an upstream that does not resolve is stored, as toxiproxy stores it
      expect((await up.update({ enabled: true, listen: up.listen, upstream: "somehost:12345" })).upstream).toBe(
        "somehost:12345",
      );

      await up.remove();
      expect(await client.getAll()).toEqual({});
      await expect(client.get("echo")).rejects.toThrow("Request failed with status code 404");
    });

    test("a duplicate proxy or toxic is an error with status 409, as the client's tests expect", async () => {
      await using setup = await startServer();
      const body = { name: "echo", listen: "127.0.0.1:0", upstream: setup.upstreams[0].address };
      const proxy = await setup.client.createProxy(body);
      await expect(setup.client.createProxy(body)).rejects.toThrow("Request failed with status code 409");
      await proxy.addToxic(toxic({ type: "latency", attributes: { latency: 1, jitter: 0 } }));
      await expect(proxy.addToxic(toxic({ type: "latency", attributes: {} }))).rejects.toThrow("status code 409");
    });

    test("add, read, update and remove a toxic; its effect on real traffic follows", async () => {
      await using setup = await startServer();
      const proxy = await setup.client.createProxy({
        name: "echo",
        listen: "127.0.0.1:0",
        upstream: setup.upstreams[0].address,
      });
      const added = await proxy.addToxic(toxic({ type: "latency", attributes: { latency: 800, jitter: 0 } }));
      expect(added).toMatchObject({ name: "latency_downstream", stream: "downstream", toxicity: 1 });
      expect(added.attributes).toEqual({ latency: 800, jitter: 0 });
      expect((await proxy.getToxic("latency_downstream")).toJson()).toEqual(added.toJson());
      const tcp = await TestClient.connect(portOf(proxy.listen));
      try {
        expect(await roundTrip(tcp)).toBeGreaterThanOrEqual(799);
        const changed = await added.update(toxic({ attributes: { latency: 300, jitter: 0 } }));
        expect(changed.attributes).toEqual({ latency: 300, jitter: 0 });
        const after = await roundTrip(tcp);
        expect(after).toBeGreaterThanOrEqual(299);
        expect(after).toBeLessThan(799);
        await changed.remove();
        await expect(proxy.getToxic("latency_downstream")).rejects.toThrow("status code 404");
        expect(await roundTrip(tcp)).toBeLessThan(300);
      } finally {
        tcp.close();
      }
    });

    test("populate creates (and keeps) proxies; reset enables them all and removes every toxic", async () => {
      await using setup = await startServer();
      const list = [
        { name: "one", listen: "127.0.0.1:0", upstream: setup.upstreams[0].address },
        { name: "two", listen: "127.0.0.1:0", upstream: setup.upstreams[1].address, enabled: false },
      ];
      const made = await setup.client.populate(list);
      expect(Object.keys(made)).toEqual(["one", "two"]);
      expect(made.two!.enabled).toBe(false);
      await made.one!.addToxic(toxic({ type: "timeout", attributes: { timeout: 0 } }));
      // an empty list gives {} (toxiproxy answers {"proxies": null}, on which this client throws)
      expect(await setup.client.populate([])).toEqual({});
      await setup.client.reset();
      const all = await setup.client.getAll();
      expect(all.two!.enabled).toBe(true);
      expect((await call(`${setup.api}/proxies/one/toxics`)).json).toEqual([]);
      expect(await echoes(portOf(all.two!.listen))).toBe(true);
    });
  });

  describe(`${label} raw HTTP: toxiproxy's responses, byte for byte where clients read them`, () => {
    test("GET /version: exactly toxiproxy's body and content type", async () => {
      await using setup = await startServer();
      const response = await fetch(`${setup.api}/version`);
      expect(response.headers.get("content-type")).toBe("application/json;charset=utf-8");
      expect(await response.text()).toBe('{"version": "2.12.0"}\n');
      expect(await runToExit(STAGE, ["--version"])).toMatchObject({
        code: 0,
        stdout: expect.stringMatching(/2\.12\.0/),
      });
    });

    test("create 201, toxic 200, lists, errors: toxiproxy's shapes and key order", async () => {
      await using setup = await startServer();
      const upstream = setup.upstreams[0].address;
      const created = await call(
        `${setup.api}/proxies`,
        "POST",
        `{"name":"redis","listen":"127.0.0.1:0","upstream":"${upstream}"}`,
      );
      expect(created.status).toBe(201);
      const listen = (created.json as { listen: string }).listen;
      expect(created.text).toBe(
        `{"name":"redis","listen":"${listen}","upstream":"${upstream}","enabled":true,"toxics":[]}`,
      );
      const again = await call(
        `${setup.api}/proxies`,
        "POST",
        `{"name":"redis","listen":"127.0.0.1:0","upstream":"x:1"}`,
      );
      expect(again).toMatchObject({ status: 409, text: '{"error":"proxy already exists","status":409}\n' });
      const latency = await call(
        `${setup.api}/proxies/redis/toxics`,
        "POST",
        '{"type":"latency","attributes":{"latency":100}}',
      );
      const toxicText =
        '{"attributes":{"latency":100,"jitter":0},"name":"latency_downstream",' +
        '"type":"latency","stream":"downstream","toxicity":1}';
      expect(latency).toMatchObject({ status: 200, text: toxicText });
      const all = await call(`${setup.api}/proxies`);
      const redis = `{"name":"redis","listen":"${listen}","upstream":"${upstream}","enabled":true`;
      expect(all.text).toBe(`{"redis":${redis},"toxics":[${toxicText}]}}`);
      const disabled = await call(`${setup.api}/proxies/redis`, "PATCH", '{"enabled":false}');
      expect(disabled.json).toMatchObject({ enabled: false, listen });
      const removed = await call(`${setup.api}/proxies/redis/toxics/latency_downstream`, "DELETE");
      expect(removed).toMatchObject({ status: 204, text: "" });
      expect(await call(`${setup.api}/reset`, "POST", "anything at all")).toMatchObject({ status: 204, text: "" });
      expect(await call(`${setup.api}/proxies/nope`)).toMatchObject({
        status: 404,
        text: '{"error":"proxy not found","status":404}\n',
      });
      const browser = await call(`${setup.api}/proxies`, "GET", undefined, { "user-agent": "Mozilla/5.0" });
      expect(browser).toMatchObject({ status: 403, text: "User agent not allowed\n" });
      expect(await call(`${setup.api}/proxies/`)).toMatchObject({ status: 404, text: "404 page not found\n" });
      expect(await call(`${setup.api}/proxies`, "PUT")).toMatchObject({ status: 405, text: "" });
    });

    test("JSON read as Go reads it: keys in any case, unknown keys ignored, null as not given", async () => {
      await using setup = await startServer();
      const made = await call(`${setup.api}/proxies`, "POST", {
        NAME: "p",
        Upstream: setup.upstreams[0].address,
        x: 1,
      });
      expect(made).toMatchObject({ status: 201, json: { name: "p", upstream: setup.upstreams[0].address } });
      const patched = await call(`${setup.api}/proxies/p`, "PATCH", { Enabled: false, listen: null, extra: [1] });
      expect(patched.json).toMatchObject({ enabled: false, listen: (made.json as { listen: string }).listen });
      expect(await call(`${setup.api}/proxies/p`, "PATCH", "null")).toMatchObject({ status: 200 }); // nothing given
    });

    test.if(toxics === "toxiproxy")("a toxic's body too: keys in any case, its stream echoed as given", async () => {
      await using setup = await startServer();
      await call(`${setup.api}/proxies`, "POST", { name: "p", upstream: setup.upstreams[0].address });
      const added = await call(`${setup.api}/proxies/p/toxics`, "POST", {
        Type: "bandwidth",
        Stream: "UPSTREAM",
        Attributes: { RATE: 5, bogus: 1 },
        name: null,
      });
      expect(added.json).toEqual({
        attributes: { rate: 5 },
        name: "bandwidth_UPSTREAM", // the default name with the stream as given, as toxiproxy makes it
        type: "bandwidth",
        stream: "UPSTREAM",
        toxicity: 1,
      });
      const kept = await call(`${setup.api}/proxies/p/toxics/bandwidth_UPSTREAM`, "PATCH", {
        toxicity: null,
        attributes: null,
        name: "renamed",
        type: "latency",
      });
      expect(kept.json).toEqual(added.json); // nothing given, nothing changed; name and type cannot change
    });

    test("a change is checked whole: a bad attribute changes nothing (toxiproxy applies those before it)", async () => {
      await using setup = await startServer([
        "--port",
        "0",
        "--upstream",
        "127.0.0.1:1",
        "--toxic",
        "latency:downstream:latency=5",
      ]);
      const path = `${setup.api}/proxies/default/toxics/latency_downstream`;
      const refused = await call(path, "POST", { attributes: { latency: 7, jitter: "x" } });
      expect(refused.status).toBe(400);
      expect((await call(path)).json).toMatchObject({ attributes: { latency: 5, jitter: 0 } });
    });

    test("populate: create, keep the same, replace the changed; errors name the item; toxics too", async () => {
      await using setup = await startServer();
      const [a, b] = setup.upstreams;
      const populate = (list: unknown) => call(`${setup.api}/populate`, "POST", list);
      const first = await populate([{ name: "kept", listen: "127.0.0.1:0", upstream: a.address }]);
      expect(first.status).toBe(201);
      const kept = (first.json as { proxies: { listen: string }[] }).proxies[0]!;
      await call(`${setup.api}/proxies/kept/toxics`, "POST", { type: "latency", attributes: { latency: 1 } });
      const second = await populate([
        { name: "kept", listen: "127.0.0.1:0", upstream: a.address }, // port 0 again: the same proxy, kept
        { name: "new", upstream: b.address, toxics: [{ type: "latency", attributes: { latency: 600 } }] },
      ]);
      expect(second.status).toBe(201);
      const [same, made] = (second.json as { proxies: { listen: string; toxics: unknown[] }[] }).proxies;
      expect(same).toMatchObject({ listen: kept.listen, toxics: [{ name: "latency_downstream" }] });
      expect(made!.toxics).toHaveLength(1); // in force before its first connection
      const tcp = await TestClient.connect(portOf(made!.listen));
      try {
        expect(await roundTrip(tcp)).toBeGreaterThanOrEqual(599);
      } finally {
        tcp.close();
      }
      const replaced = await populate([{ name: "kept", listen: "127.0.0.1:0", upstream: b.address }]);
      expect((replaced.json as { proxies: { toxics: unknown[] }[] }).proxies[0]!.toxics).toEqual([]); // replaced
      const bad = await populate([{ name: "ok", upstream: a.address }, { name: "x" }]);
      expect(bad).toMatchObject({
        status: 400,
        json: { error: "missing required field: upstream at proxy 2", status: 400, proxies: [] },
      });
      expect((await call(`${setup.api}/proxies`)).json).not.toHaveProperty("ok"); // checked before any was made
      const busy = await populate([
        { name: "fine", upstream: a.address },
        { name: "clash", listen: made!.listen, upstream: a.address },
      ]);
      expect(busy.status).toBe(409);
      expect(busy.json).toMatchObject({ error: `listen tcp ${made!.listen}: bind: address already in use` });
      expect((busy.json as { proxies: { name: string }[] }).proxies.map((proxy) => proxy.name)).toEqual(["fine"]);
    });

    test("/reset does not stop at a proxy that cannot listen: the others are reset, then the error", async () => {
      await using setup = await startServer();
      const make = (name: string) =>
        call(`${setup.api}/proxies`, "POST", { name, listen: "127.0.0.1:0", upstream: setup.upstreams[0].address });
      const [a, b] = [await make("a"), await make("b")];
      const listenOf = (answer: { json: unknown }) => (answer.json as { listen: string }).listen;
      for (const name of ["a", "b"]) {
        await call(`${setup.api}/proxies/${name}/toxics`, "POST", { type: "latency", attributes: { latency: 9 } });
        await call(`${setup.api}/proxies/${name}`, "PATCH", { enabled: false });
      }
      const squatter = Bun.listen({ hostname: "127.0.0.1", port: portOf(listenOf(a)), socket: { data() {} } });
      try {
        const reset = await call(`${setup.api}/reset`, "POST");
        expect(reset.status).toBe(409);
        const all = (await call(`${setup.api}/proxies`)).json as Record<string, { enabled: boolean; toxics: [] }>;
        expect(all.a).toMatchObject({ enabled: false, toxics: [] });
        expect(all.b).toMatchObject({ enabled: true, toxics: [] });
        expect(await echoes(portOf(listenOf(b)))).toBe(true);
      } finally {
        squatter.stop(true);
      }
    });
  });

  describe(`${label} start-up and metrics`, () => {
    test("--config FILE: toxiproxy's JSON list (toxics too) at start; a bad file is one line and exit 2", async () => {
      const dir = mkdtempSync(join(tmpdir(), "bun-tcp-lab-config-"));
      const upstream = startEchoUpstream();
      try {
        const file = join(dir, "proxies.json");
        const list = [
          { name: "web", listen: "127.0.0.1:0", upstream: upstream.address, enabled: true },
          { name: "slow", upstream: upstream.address, toxics: [{ type: "latency", attributes: { latency: 500 } }] },
        ];
        writeFileSync(file, JSON.stringify(list));
        await using server = await startStage(STAGE, ["--api-port", "0", "--config", file], { line: API_LINE });
        const all = (await call(`http://127.0.0.1:${server.port}/proxies`)).json as Record<string, { listen: string }>;
        expect(Object.keys(all)).toEqual(["slow", "web"]);
        expect(await echoes(portOf(all.web!.listen))).toBe(true);
        const slow = await TestClient.connect(portOf(all.slow!.listen));
        expect(await roundTrip(slow)).toBeGreaterThanOrEqual(499);
        slow.close();

        writeFileSync(file, "[{");
        const broken = await runToExit(STAGE, ["--api-port", "0", "--config", file]);
        expect(broken.code).toBe(2);
        expect(broken.stderr.trim().split("\n")).toEqual([expect.stringMatching(/^error: --config .*proxies\.json: /)]);
        writeFileSync(file, JSON.stringify([{ name: "x" }]));
        expect((await runToExit(STAGE, ["--config", file])).stderr).toMatch(
          /missing required field: upstream at proxy 1/,
        );
        expect((await runToExit(STAGE, ["--config", join(dir, "none.json")])).stderr).toMatch(/no such file/);
      } finally {
        upstream.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    });

    test("/metrics: toxiproxy's byte counters move while the connection is open; per proxy and per toxic", async () => {
      await using setup = await startServer();
      const proxy = await setup.client.createProxy({
        name: "m",
        listen: "127.0.0.1:0",
        upstream: setup.upstreams[0].address,
      });
      await proxy.addToxic(toxic({ type: "limit_data", stream: "upstream", attributes: { bytes: 1000 } }));
      const tcp = await TestClient.connect(portOf(proxy.listen));
      await roundTrip(tcp, "x".repeat(10));
      const labels = `proxy="m",listener="${proxy.listen}",upstream="${setup.upstreams[0].address}"`;
      let text = await (await fetch(`${setup.api}/metrics`)).text();
      expect(text).toContain(`toxiproxy_proxy_received_bytes_total{direction="upstream",${labels}} 10`);
      expect(text).toContain(`toxiproxy_proxy_sent_bytes_total{direction="downstream",${labels}} 10`);
      expect(text).toContain('toxiproxy_proxy_connections_active{proxy="m"} 1');
      const toxicLabels = 'proxy="m",toxic="limit_data_upstream",type="limit_data",stream="upstream"';
      expect(text).toContain(`toxiproxy_toxic_connections_total{${toxicLabels}} 1`);
      tcp.write("y".repeat(2000));
      expect(await tcp.endsWithin(3000)).toBe(true);
      text = await (await fetch(`${setup.api}/metrics`)).text();
      expect(text).toContain(`toxiproxy_toxic_ended_connections_total{${toxicLabels}} 1`);
      await proxy.remove();
      expect(await (await fetch(`${setup.api}/metrics`)).text()).not.toContain('proxy="m"'); // gone with the proxy
    });
  });
}
