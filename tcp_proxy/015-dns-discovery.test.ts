// DNS discovery against a DNS server of our own (test/support/dns-server.ts) whose answers change during a test,
// and echo upstreams on several loopback addresses sharing one port (Linux routes all of 127/8 to lo; ::1 for
// AAAA). Waits are on log lines and DNS questions, never on sleeps.
import { afterAll, describe, expect, test } from "bun:test";
import { DnsServer } from "../test/support/dns-server.ts";
import {
  allByteValues,
  decode,
  type EchoUpstream,
  startEchoUpstream,
  TestClient,
  upperAscii,
} from "../test/support/net.ts";
import { API_LINE, type Running, runToExit, startStage } from "../test/support/process.ts";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";

const STAGE = "tcp_proxy/015-dns-discovery.ts";
const NAME = "echo.test";

/** Echo upstreams on one port at each of `hosts` (a name's members all share the port of --upstream NAME:PORT). */
function upstreamsOnOnePort(hosts: string[]): { port: number; at: EchoUpstream[] } & AsyncDisposable {
  for (let attempt = 1; ; attempt++) {
    const at = [startEchoUpstream({ host: hosts[0] })];
    try {
      for (const host of hosts.slice(1)) at.push(startEchoUpstream({ host, port: at[0]!.port }));
      return { port: at[0]!.port, at, [Symbol.asyncDispose]: async () => at.forEach((upstream) => upstream.stop()) };
    } catch (error) {
      at.forEach((upstream) => upstream.stop()); // that port is taken on another address: try another one
      if (attempt === 10) throw error;
    }
  }
}

function startProxy(dns: DnsServer, port: number, args: string[] = []): Promise<Running> {
  return startStage(STAGE, [
    "--port",
    "0",
    "--upstream",
    `${NAME}:${port}`,
    "--resolver",
    dns.address,
    "--resolve-interval",
    "0.2",
    "--health-interval",
    "30", // only the check a new member gets at once: the others would connect to the upstreams meanwhile
    ...args,
  ]);
}

/** `host:port` as the proxy names an upstream, as a pattern. */
function member(host: string, port: number): string {
  const name = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
  return name.replace(/[.[\]]/g, "\\$&");
}

/** One short exchange through the proxy; true when the echo came back. */
async function served(proxy: Running, message = "ping"): Promise<boolean> {
  const client = await TestClient.connect(proxy.port);
  try {
    client.write(message);
    return decode(await client.readAtLeast(message.length, 3000)) === message.toUpperCase();
  } catch {
    return false;
  } finally {
    client.close();
  }
}

/** Proxied connections an upstream got (health checks connect too, but send nothing). */
function traffic(upstream: EchoUpstream): number {
  return upstream.heads.filter((head) => head.length > 0).length;
}

describe("015 members follow the DNS answers", () => {
  test("every A and AAAA record becomes a member, and they share the load", async () => {
    const hosts = ["127.0.0.2", "127.0.0.3", "::1"];
    await using dns = await DnsServer.start();
    await using upstreams = upstreamsOnOnePort(hosts);
    dns.set(NAME, { addresses: hosts, ttl: 30 });
    await using proxy = await startProxy(dns, upstreams.port);
    for (const host of hosts) await proxy.waitForLog(new RegExp(`upstream ${member(host, upstreams.port)} is UP`));
    expect(proxy.stderr.text).toContain(`forwarding to ${NAME}:${upstreams.port} (DNS)`);
    expect(proxy.stderr.text).toContain(`dns ${NAME}: 127.0.0.2 127.0.0.3 ::1 (ttl 30s)`);
    for (let i = 0; i < 6; i++) expect(await served(proxy)).toBe(true);
    expect(upstreams.at.map(traffic)).toEqual([2, 2, 2]);
  });

  test("a record removed gets no new connection; one open through it works to its last byte", async () => {
    await using dns = await DnsServer.start();
    await using upstreams = upstreamsOnOnePort(["127.0.0.2", "127.0.0.3"]);
    dns.set(NAME, { addresses: ["127.0.0.2", "127.0.0.3"] });
    await using proxy = await startProxy(dns, upstreams.port);
    await proxy.waitForLog(new RegExp(`upstream ${member("127.0.0.3", upstreams.port)} is UP`));
    const open = await TestClient.connect(proxy.port);
    open.write("first|");
    await open.readAtLeast(6);
    const [gone, staying] = traffic(upstreams.at[0]!) === 1 ? upstreams.at : [upstreams.at[1]!, upstreams.at[0]!];

    dns.set(NAME, { addresses: [staying!.host] });
    const leaves = `upstream ${member(gone!.host, upstreams.port)} leaves \\(gone from DNS\\), 1 open connections`;
    await proxy.waitForLog(new RegExp(leaves));
    for (let i = 0; i < 4; i++) expect(await served(proxy)).toBe(true);
    expect([traffic(gone!), traffic(staying!)]).toEqual([1, 4]);
    expect(proxy.stderr.text).not.toContain("WARN  dns"); // no AAAA record is an answer, not a failure

    expect(gone!.active).toBe(1); // drained, not cut: the open connection carries on
    open.write(allByteValues());
    await open.shutdown();
    const expected = new Uint8Array([
      ...upperAscii(new TextEncoder().encode("first|")),
      ...upperAscii(allByteValues()),
    ]);
    expect(await open.readToEnd(3000)).toEqual(expected);
    await proxy.waitForLog(
      new RegExp(`-> ${member(gone!.host, upstreams.port)} tries=1 .* bytes_up=288 bytes_down=288 closed_by=client`),
    );
  });

  test("a record added joins only once its health check passes; a closed port never gets traffic", async () => {
    await using dns = await DnsServer.start();
    await using upstreams = upstreamsOnOnePort(["127.0.0.2"]);
    const port = upstreams.port;
    dns.set(NAME, { addresses: ["127.0.0.2"] });
    await using proxy = await startProxy(dns, port, ["--health-interval", "0.2", "--rise", "2"]);
    await proxy.waitForLog(new RegExp(`upstream ${member("127.0.0.2", port)} is UP`));

    dns.set(NAME, { addresses: ["127.0.0.2", "127.0.0.3"] }); // nothing listens on 127.0.0.3 yet
    await proxy.waitForLog(new RegExp(`upstream ${member("127.0.0.3", port)} joins \\(from DNS\\), DOWN until`));
    await proxy.waitForLog(new RegExp(`upstream ${member("127.0.0.3", port)} stays DOWN \\(first check: connection`));
    for (let i = 0; i < 6; i++) expect(await served(proxy)).toBe(true);
    expect(traffic(upstreams.at[0]!)).toBe(6);
    expect(proxy.stderr.text).not.toMatch(
      new RegExp(`-> ${member("127.0.0.3", port)}|upstream ${member("127.0.0.3", port)} failed`),
    );

    await using late = startEchoUpstream({ host: "127.0.0.3", port }); // now it listens: 2 good checks bring it UP
    const up = await proxy.waitForLog(new RegExp(`upstream ${member("127.0.0.3", port)} is UP`));
    for (let i = 0; i < 4; i++) expect(await served(proxy)).toBe(true);
    expect(traffic(late)).toBe(2);
    const firstServed = proxy.stderr.text.search(new RegExp(`-> ${member("127.0.0.3", port)}`));
    expect(firstServed).toBeGreaterThan(up.index!);
  });

  test("the name is asked again every --resolve-interval", async () => {
    await using dns = await DnsServer.start();
    await using upstreams = upstreamsOnOnePort(["127.0.0.2"]);
    dns.set(NAME, { addresses: ["127.0.0.2"] });
    await using _proxy = await startProxy(dns, upstreams.port, ["--resolve-interval", "0.5"]);
    await dns.waitForQuestion(10, 10_000, NAME); // five rounds, A and AAAA each
    const rounds = dns.questions.filter((question) => question.type === "A").map((question) => question.at);
    const gaps = rounds.slice(1).map((at, i) => at - rounds[i]!);
    for (const gap of gaps) {
      expect(gap).toBeGreaterThanOrEqual(495);
      expect(gap).toBeLessThan(500 + 1500); // a loaded machine is late, never early
    }
  });

  test("localhost is never asked of DNS: the system resolves it, as before", async () => {
    await using dns = await DnsServer.start();
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      `localhost:${upstream.port}`,
      "--resolver",
      dns.address,
    ]);
    expect(await served(proxy)).toBe(true);
    expect(dns.questions).toHaveLength(0);
  });
});

describe("015 when DNS fails", () => {
  test("SERVFAIL, REFUSED, timeouts: the last good set stays, logged each round; truncated goes over TCP", async () => {
    await using dns = await DnsServer.start();
    await using upstreams = upstreamsOnOnePort(["127.0.0.2", "127.0.0.3"]);
    const port = upstreams.port;
    dns.set(NAME, { addresses: ["127.0.0.2", "127.0.0.3"] });
    await using proxy = await startProxy(dns, port, ["--hold-nx", "0"]); // failures are not NXDOMAIN: no hold needed
    await proxy.waitForLog(new RegExp(`upstream ${member("127.0.0.3", port)} is UP`));
    const failures = [
      ["servfail", "A ESERVFAIL, AAAA ESERVFAIL"],
      ["refused", "A EREFUSED, AAAA EREFUSED"],
      ["timeout", "A ETIMEOUT, AAAA ETIMEOUT"], // 3 tries of 1 s each
    ] as const;
    for (const [answer, logged] of failures) {
      const from = proxy.stderr.text.length;
      dns.set(NAME, answer);
      await proxy.waitForLog(new RegExp(`WARN  dns ${NAME}: ${logged}; the last good set stays`), 10_000, from);
      const before = upstreams.at.map(traffic);
      for (let i = 0; i < 2; i++) expect(await served(proxy)).toBe(true);
      expect(upstreams.at.map(traffic)).toEqual(before.map((count) => count + 1)); // both members still serve
    }
    expect(proxy.stderr.text).not.toContain("leaves");

    // An answer too big for UDP comes back truncated; c-ares asks again over TCP, and its answer counts.
    dns.set(NAME, { addresses: ["127.0.0.3"], truncated: true });
    await proxy.waitForLog(new RegExp(`upstream ${member("127.0.0.2", port)} leaves`), 10_000);
    expect(dns.questions.some((question) => question.transport === "tcp")).toBe(true);
  });

  test("a failing AAAA question keeps the IPv6 members while the A answers still move the IPv4 ones", async () => {
    await using dns = await DnsServer.start();
    await using upstreams = upstreamsOnOnePort(["127.0.0.2", "127.0.0.3", "::1"]);
    const port = upstreams.port;
    dns.set(NAME, { addresses: ["127.0.0.2", "::1"] });
    await using proxy = await startProxy(dns, port, ["--hold-nx", "0"]);
    await proxy.waitForLog(new RegExp(`upstream ${member("::1", port)} is UP`));
    const from = proxy.stderr.text.length;
    dns.set(NAME, "servfail", "AAAA"); // as behind the middleboxes that drop AAAA questions
    await proxy.waitForLog(new RegExp(`dns ${NAME}: AAAA ESERVFAIL; the last good set stays`), 5000, from);
    dns.set(NAME, { addresses: ["127.0.0.3"] }, "A");
    await proxy.waitForLog(new RegExp(`upstream ${member("127.0.0.3", port)} is UP`), 5000, from);
    expect(proxy.stderr.text.slice(from)).toMatch(new RegExp(`upstream ${member("127.0.0.2", port)} leaves`));
    expect(proxy.stderr.text).not.toMatch(new RegExp(`upstream ${member("::1", port)} leaves`));
    for (let i = 0; i < 4; i++) expect(await served(proxy)).toBe(true);
    expect(upstreams.at.map(traffic)).toEqual([0, 2, 2]);
  });

  test("NXDOMAIN is not believed for --hold-nx, then the members leave; they come back with the records", async () => {
    await using dns = await DnsServer.start();
    await using upstreams = upstreamsOnOnePort(["127.0.0.2"]);
    const port = upstreams.port;
    dns.set(NAME, { addresses: ["127.0.0.2"] });
    await using proxy = await startProxy(dns, port, ["--hold-nx", "1"]);
    await proxy.waitForLog(new RegExp(`upstream ${member("127.0.0.2", port)} is UP`));

    const from = proxy.stderr.text.length;
    const started = performance.now();
    dns.set(NAME, "nxdomain");
    const held = `dns ${NAME}: A ENOTFOUND, AAAA ENOTFOUND; the last good set stays for up to 1s more \\(--hold-nx\\)`;
    await proxy.waitForLog(new RegExp(held), 5000, from);
    expect(await served(proxy)).toBe(true);
    await proxy.waitForLog(new RegExp(`upstream ${member("127.0.0.2", port)} leaves`), 5000, from);
    const elapsed = performance.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(1000 - 200 - 50); // held 1 s after the last good answer, one round before
    expect(elapsed).toBeLessThan(1000 + 3000);
    expect(proxy.stderr.text.slice(from)).toContain(`dns ${NAME}: A ENOTFOUND, AAAA ENOTFOUND; no members`);
    const refused = await TestClient.connect(proxy.port);
    expect(await refused.endsWithin(2000)).toBe(true); // no member: closed at once, not left waiting
    await proxy.waitForLog(/closing: no upstream available/);

    dns.set(NAME, { addresses: ["127.0.0.2"] });
    await proxy.waitForLog(new RegExp(`upstream ${member("127.0.0.2", port)} is UP`), 5000, from);
    expect(await served(proxy)).toBe(true);
  });
});

describe("015 usage", () => {
  test.each([
    [["--resolver", "dns.example:53"], /--resolver must be an IP address and a port, got "dns.example:53"/],
    [["--resolver", "127.0.0.1"], /--resolver must look like HOST:PORT/],
    [["--resolver", "[::1]:70000"], /--resolver needs a port from 1 to 65535/],
    [["--resolve-interval", "soon"], /--resolve-interval must be a number of seconds/],
    [["--hold-nx", "1h"], /--hold-nx must be a number of seconds/],
  ])("%p: one line, exit 2", async (args, message) => {
    const { code, stdout, stderr } = await runToExit(STAGE, args);
    expect(code).toBe(2);
    expect(stdout).toBe("");
    expect(stderr).toMatch(message);
    expect(stderr.trimEnd().split("\n")).toHaveLength(1);
  });
});

describe("015 proxies made through the API follow DNS too", () => {
  test("upstream NAME:PORT: its members serve, the API shows the name; disabled, it stops asking", async () => {
    await using dns = await DnsServer.start();
    await using upstreams = upstreamsOnOnePort(["127.0.0.2", "127.0.0.3"]);
    dns.set(NAME, { addresses: ["127.0.0.2", "127.0.0.3"] });
    const args = ["--api-port", "0", "--resolver", dns.address, "--resolve-interval", "0.2"];
    await using api = await startStage(STAGE, [...args, "--health-interval", "30"], { line: API_LINE });
    const url = `http://127.0.0.1:${api.port}`;
    const upstream = `${NAME}:${upstreams.port}`;
    const created = await fetch(`${url}/proxies`, {
      method: "POST",
      body: JSON.stringify({ name: "named", listen: "127.0.0.1:0", upstream }),
    });
    expect(created.status).toBe(201);
    const proxy = (await created.json()) as { listen: string; upstream: string };
    expect(proxy.upstream).toBe(upstream); // the name as given, not its members
    await api.waitForLog(new RegExp(`upstream ${member("127.0.0.3", upstreams.port)} is UP`));
    const port = Number(proxy.listen.split(":").at(-1));
    for (let i = 0; i < 4; i++) {
      const client = await TestClient.connect(port);
      client.write("ping");
      expect(decode(await client.readAtLeast(4, 3000))).toBe("PING");
      client.close();
    }
    expect(upstreams.at.map(traffic)).toEqual([2, 2]);

    const disabled = await fetch(`${url}/proxies/named`, { method: "POST", body: '{"enabled":false}' });
    expect(disabled.status).toBe(200);
    const asked = dns.questions.length;
    await dns.waitForQuestion(asked + 4, 1500).then(
      () => expect.unreachable("a disabled proxy still asks DNS"),
      () => {},
    );
    expect(dns.questions.length).toBeLessThanOrEqual(asked + 2); // at most the round that was in flight
  });
});

describe("015 the contracts of every proxy stage", () => {
  const echo = startEchoUpstream();
  afterAll(() => echo.stop());
  echoContractTests({ file: STAGE, args: ["--port", "0", "--upstream", echo.address] });
  hostileContractTests({ file: STAGE, kind: "proxy", args: ["--port", "0"], acceptProxy: true });
});
