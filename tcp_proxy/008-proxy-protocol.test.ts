import { describe, expect, test } from "bun:test";
import { concatBytes, decode, encode, startEchoUpstream, TestClient } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";

const STAGE = "tcp_proxy/008-proxy-protocol.ts";

// The examples of HAProxy's proxy-protocol.txt (sections 2.1 and 2.2).
const SPEC_V1_TCP4 = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
const SPEC_V1_TCP4_LONGEST = "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"; // 56 bytes
const FFFF = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
const SPEC_V1_TCP6_LONGEST = `PROXY TCP6 ${FFFF} ${FFFF} 65535 65535\r\n`; // 104 bytes
const SPEC_V1_UNKNOWN = "PROXY UNKNOWN\r\n";
const SPEC_V1_UNKNOWN_LONGEST = `PROXY UNKNOWN ${FFFF} ${FFFF} 65535 65535\r\n`; // 107 bytes, the most a receiver reads
const SPEC_REQUEST = "GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
const V2_SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
/** The v2 form of SPEC_V1_TCP4: signature, v2 + PROXY, TCP over IPv4, 12 address bytes, then the addresses. */
const SPEC_V2_TCP4 = new Uint8Array([
  ...V2_SIGNATURE,
  0x21,
  0x11,
  0x00,
  0x0c,
  192,
  168,
  0,
  1,
  192,
  168,
  0,
  11,
  0xdc,
  0x04 /* 56324 */,
  0x01,
  0xbb /* 443 */,
]);

/**
 * Sends `pieces` through the proxy, one TCP segment each; returns what the upstream's connection began with, the
 * client's port and the proxy's log once the connection is over.
 */
async function throughProxy(args: string[], pieces: (string | Uint8Array)[], expectUpstreamBytes: number) {
  await using upstream = startEchoUpstream();
  await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address, ...args]);
  const client = await TestClient.connect(proxy.port);
  const localPort = client.localPort;
  try {
    for (const piece of pieces) {
      client.write(piece);
      await client.flushed();
      await Bun.sleep(20); // separate TCP segments: the header must be reassembled across reads
    }
    await upstream.until(() => (upstream.heads[0]?.length ?? 0) >= expectUpstreamBytes, 3000, "the upstream's bytes");
  } finally {
    client.close();
  }
  await proxy.waitForLog(/closed_by=/);
  return { head: upstream.heads[0]!, localPort, log: proxy.stderr.text };
}

describe("008 PROXY protocol, byte-exact against the specification's examples", () => {
  test("--accept-proxy --send-proxy: the spec's v1 line and request arrive unchanged", async () => {
    const { head, log } = await throughProxy(["--accept-proxy", "--send-proxy"], [SPEC_V1_TCP4 + SPEC_REQUEST], 85);
    expect(decode(head)).toBe(SPEC_V1_TCP4 + SPEC_REQUEST);
    expect(log).toMatch(/source=192\.168\.0\.1:56324 -> /);
  });

  test("v1 in, v2 out: the binary header for the same connection", async () => {
    const { head } = await throughProxy(["--accept-proxy", "--send-proxy-v2"], [SPEC_V1_TCP4, "hello"], 33);
    expect(head).toEqual(concatBytes([SPEC_V2_TCP4, encode("hello")]));
  });

  test("v2 in (split across reads), v1 out", async () => {
    const { head } = await throughProxy(
      ["--accept-proxy", "--send-proxy"],
      [
        SPEC_V2_TCP4.subarray(0, 7),
        SPEC_V2_TCP4.subarray(7, 15),
        concatBytes([SPEC_V2_TCP4.subarray(15), encode("hi")]),
      ],
      SPEC_V1_TCP4.length + 2,
    );
    expect(decode(head)).toBe(`${SPEC_V1_TCP4}hi`);
  });

  test.each([SPEC_V1_TCP4_LONGEST, SPEC_V1_TCP6_LONGEST])("the longest v1 lines pass through: %j", async (line) => {
    const { head } = await throughProxy(["--accept-proxy", "--send-proxy"], [`${line}x`], line.length + 1);
    expect(decode(head)).toBe(`${line}x`);
  });

  test.each([SPEC_V1_UNKNOWN, SPEC_V1_UNKNOWN_LONGEST])(
    "UNKNOWN is accepted and the real endpoints are sent on",
    async (line) => {
      const { head, localPort } = await throughProxy(["--accept-proxy", "--send-proxy"], [`${line}x`], 10);
      expect(decode(head)).toMatch(new RegExp(`^PROXY TCP4 127\\.0\\.0\\.1 127\\.0\\.0\\.1 ${localPort} \\d+\\r\\nx$`));
    },
  );

  test("--send-proxy and --send-proxy-v2 from a direct client: its real address, before its early bytes", async () => {
    let result = await throughProxy(["--send-proxy"], ["early"], 5);
    const [, proxyPort] = decode(result.head).match(/^PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ (\d+)\r\nearly$/)!;
    expect(decode(result.head)).toBe(`PROXY TCP4 127.0.0.1 127.0.0.1 ${result.localPort} ${proxyPort}\r\nearly`);

    result = await throughProxy(["--send-proxy-v2"], ["early"], 28 + 5);
    const port = (high: number, low: number) => (high << 8) | low;
    expect(result.head.subarray(0, 16)).toEqual(new Uint8Array([...V2_SIGNATURE, 0x21, 0x11, 0x00, 0x0c]));
    expect([...result.head.subarray(16, 24)]).toEqual([127, 0, 0, 1, 127, 0, 0, 1]);
    expect(port(result.head[24]!, result.head[25]!)).toBe(result.localPort);
    expect(decode(result.head.subarray(28))).toBe("early");
  });
});

describe("008 --accept-proxy rejects what is not a valid header", () => {
  test.each([
    ["no header at all", SPEC_REQUEST, "no PROXY header"],
    ["a v1 line missing a port", "PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n", "malformed v1 line"],
    ["a TCP4 line with an IPv6 address", `PROXY TCP4 ::1 192.168.0.11 56324 443\r\n`, "bad v1 address"],
    ["an address out of range", "PROXY TCP4 192.168.0.256 192.168.0.11 56324 443\r\n", "bad v1 address"],
    ["a port out of range", "PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n", "bad v1 port"],
    ["108 bytes without CRLF", `PROXY UNKNOWN ${"f".repeat(100)}`, "v1 line longer than 107 bytes"],
    [
      "a v2 header of version 1",
      new Uint8Array([...V2_SIGNATURE, 0x11, 0x11, 0, 12, ...new Array(12).fill(0)]),
      "v2 version 1",
    ],
    [
      "a v2 header too short for IPv4",
      new Uint8Array([...V2_SIGNATURE, 0x21, 0x11, 0, 4, 1, 2, 3, 4]),
      "v2 address block too short",
    ],
  ])("%s: closed before any upstream connection", async (_, header, reason) => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address, "--accept-proxy"]);
    const client = await TestClient.connect(proxy.port);
    client.write(header);
    expect(await client.endsWithin(1000)).toBe(true);
    expect(client.receivedLength).toBe(0);
    await proxy.waitForLog(new RegExp(`closed_by=proxy reason="bad PROXY header: ${reason}"`));
    expect(upstream.accepted).toBe(0);
  });

  test("a bad header is counted as a refusal (proxy-header) in the metrics", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      upstream.address,
      "--accept-proxy",
      "--metrics-port",
      "0",
    ]);
    const [, url] = await proxy.waitForLog(/metrics on (http:\/\/\S+)/);
    const client = await TestClient.connect(proxy.port);
    client.write(SPEC_REQUEST);
    expect(await client.endsWithin(1000)).toBe(true);
    await proxy.waitForLog(/closed_by=proxy reason="bad PROXY header: no PROXY header"/);
    expect(await (await fetch(url!)).text()).toContain('proxy_connections_refused_total{reason="proxy-header"} 1\n');
  });

  test("a header that never comes: closed after --connect-timeout", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      upstream.address,
      "--accept-proxy",
      "--connect-timeout",
      "0.2",
    ]);
    const client = await TestClient.connect(proxy.port);
    client.write("PROXY TCP4 192.168.0.1"); // and then nothing
    expect(await client.endsWithin(2000)).toBe(true);
    await proxy.waitForLog(/reason="bad PROXY header: none within 0\.2s"/);
  });
});

describe("008 command line", () => {
  test("--help lists the three flags", async () => {
    const { code, stdout } = await runToExit(STAGE, ["--help"]);
    expect(code).toBe(0);
    for (const flag of ["--send-proxy ", "--send-proxy-v2 ", "--accept-proxy "]) expect(stdout).toContain(flag);
  });

  test("--send-proxy and --send-proxy-v2 together: a usage error, exit 2", async () => {
    const { code, stderr } = await runToExit(STAGE, ["--send-proxy", "--send-proxy-v2"]);
    expect(code).toBe(2);
    expect(stderr).toBe("error: --send-proxy and --send-proxy-v2 exclude each other: pick one version (see --help)\n");
  });
});

hostileContractTests({ file: STAGE, kind: "proxy", args: ["--port", "0"], acceptProxy: true });
