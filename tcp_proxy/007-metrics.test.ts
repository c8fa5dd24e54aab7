import { describe, expect, test } from "bun:test";
import { startEchoUpstream, TestClient } from "../test/support/net.ts";
import { runToExit, type Running, startStage } from "../test/support/process.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";

const STAGE = "tcp_proxy/007-metrics.ts";

/** The URL the proxy says it serves its metrics at. */
async function metricsUrl(proxy: Running): Promise<string> {
  const [, url] = await proxy.waitForLog(/metrics on (http:\/\/\S+)/);
  return url!;
}

describe("007 metrics", () => {
  test("Prometheus text on --metrics-port: connections, bytes, durations, upstreams, refusals", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      upstream.address,
      "--metrics-port",
      "0",
      "--max-clients",
      "1",
    ]);
    const url = await metricsUrl(proxy);
    const client = await TestClient.connect(proxy.port);
    client.write("hello");
    await client.readAtLeast(5);
    const refused = await TestClient.connect(proxy.port); // over --max-clients
    expect(await refused.endsWithin(1000)).toBe(true);
    let text = await (await fetch(url)).text();
    expect(text).toContain("proxy_connections_active 1\n");
    await client.shutdown();
    await client.readToEnd();
    await proxy.waitForLog(/closed_by=client reason="fin"/);
    const response = await fetch(url);
    expect(response.headers.get("content-type")).toStartWith("text/plain; version=0.0.4");
    text = await response.text();
    for (const line of [
      "# TYPE proxy_connections_accepted_total counter",
      "proxy_connections_accepted_total 2",
      'proxy_connections_refused_total{reason="max-clients"} 1',
      "proxy_connections_active 0",
      'proxy_bytes_total{direction="up"} 5',
      'proxy_bytes_total{direction="down"} 5',
      "# TYPE proxy_connection_duration_seconds histogram",
      'proxy_connection_duration_seconds_bucket{le="+Inf"} 2',
      "proxy_connection_duration_seconds_count 2",
      `proxy_upstream_up{upstream="${upstream.address}"} 1`,
      `proxy_upstream_connections_active{upstream="${upstream.address}"} 0`,
      `proxy_upstream_connects_total{upstream="${upstream.address}"} 1`,
      `proxy_upstream_connect_failures_total{upstream="${upstream.address}"} 0`,
    ]) {
      expect(text).toContain(`${line}\n`);
    }
    expect((await fetch(url.replace("/metrics", "/other"))).status).toBe(404);
  });

  test("an upstream that refuses: its failed connects counted, and it shows as down", async () => {
    await using good = startEchoUpstream();
    await using bad = startEchoUpstream();
    bad.stop(); // its port now refuses
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      bad.address,
      "--upstream",
      good.address,
      "--health-interval",
      "0",
      "--metrics-port",
      "0",
    ]);
    const url = await metricsUrl(proxy);
    const client = await TestClient.connect(proxy.port); // roundrobin tries the refusing one first, then retries
    client.write("hi");
    await client.readAtLeast(2);
    client.close();
    const text = await (await fetch(url)).text();
    for (const line of [
      `proxy_upstream_connect_failures_total{upstream="${bad.address}"} 1`,
      `proxy_upstream_connects_total{upstream="${bad.address}"} 0`,
      `proxy_upstream_up{upstream="${bad.address}"} 0`, // skipped for --fail-timeout
      `proxy_upstream_connects_total{upstream="${good.address}"} 1`,
      `proxy_upstream_up{upstream="${good.address}"} 1`,
    ]) {
      expect(text).toContain(`${line}\n`);
    }
  });

  test("--metrics-host chooses the endpoint's address (127.0.0.1 by default, whatever --host is)", async () => {
    await using upstream = startEchoUpstream();
    await using byDefault = await startStage(STAGE, [
      "--host",
      "::1",
      "--port",
      "0",
      "--upstream",
      upstream.address,
      "--metrics-port",
      "0",
    ]);
    expect(await metricsUrl(byDefault)).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    await using chosen = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      upstream.address,
      "--metrics-port",
      "0",
      "--metrics-host",
      "::1",
    ]);
    const url = await metricsUrl(chosen);
    expect(url).toMatch(/^http:\/\/\[::1\]:\d+\/metrics$/);
    expect(await (await fetch(url)).text()).toContain("proxy_connections_accepted_total 0\n");
  });

  test.each([
    [["--metrics-port", "http"], /--metrics-port must be an integer from 0 to 65535/],
    [["--metrics-port", "70000"], /--metrics-port must be an integer from 0 to 65535/],
  ])("usage error %p: one line, exit 2", async (args, message) => {
    const { code, stderr } = await runToExit(STAGE, args);
    expect(code).toBe(2);
    expect(stderr).toMatch(message);
    expect(stderr).toMatch(/^error: .* \(see --help\)\n$/);
  });
});

hostileContractTests({ file: STAGE, kind: "proxy", args: ["--port", "0"] });
