import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { decode, TestClient } from "../test/support/net.ts";
import { startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/003-loop.ts";

/** The listening socket's kernel buffer sizes as `ss` reports them (skmem rb = SO_RCVBUF, tb = SO_SNDBUF). */
async function ssBufferSizes(port: number): Promise<{ rcvbuf: number; sndbuf: number }> {
  const ss = Bun.spawn(["ss", "-Hltnm", `sport = :${port}`], { stdout: "pipe" });
  const text = await new Response(ss.stdout).text();
  const match = text.match(/skmem:\(r\d+,rb(\d+),t\d+,tb(\d+)/);
  if (!match) throw new Error(`no skmem in ss output: ${text}`);
  return { rcvbuf: Number(match[1]), sndbuf: Number(match[2]) };
}

describe("003 a loop, and the socket options", () => {
  test("answers every message of one client until it closes, then exits 0", async () => {
    await using server = await startStage(STAGE, ["--port", "0"]);
    const client = await TestClient.connect(server.port);
    let expectedLength = 0;
    for (const message of ["first\n", "second message\n", "third: 42\n"]) {
      client.write(message);
      expectedLength += message.length;
      await client.readAtLeast(expectedLength); // one reply per message, before the next is sent
    }
    expect(decode(client.received)).toBe("FIRST\nSECOND MESSAGE\nTHIRD: 42\n");
    expect(client.peerEnded).toBe(false);
    await client.shutdown();
    await client.readToEnd();
    expect(await server.waitExit()).toBe(0);
    expect(server.stderr.text).toContain("client 127.0.0.1 closed its side (FIN)");
  });

  test("logs the listening socket's real options, as the kernel reports them", async () => {
    await using server = await startStage(STAGE, ["--port", "0"]);
    const [, line] = await server.waitForLog(/listening socket options: (.+)/);
    const logged = Object.fromEntries(
      line!
        .split(" ")
        .map((pair) => pair.split("="))
        .map(([k, v]) => [k, Number(v)]),
    );
    expect(Object.keys(logged).sort()).toEqual(
      ["SO_ACCEPTCONN", "SO_KEEPALIVE", "SO_RCVBUF", "SO_REUSEADDR", "SO_REUSEPORT", "SO_SNDBUF", "TCP_NODELAY"].sort(),
    );
    expect(logged.SO_ACCEPTCONN).toBe(1); // it is a listening socket
    expect(logged.SO_REUSEADDR).toBe(1); // Bun sets it on listeners
    expect(logged.SO_REUSEPORT).toBe(0);
    expect(logged.SO_KEEPALIVE).toBe(0);
    // Cross-check the buffer sizes with an independent reader: ss asks the kernel through netlink.
    const { rcvbuf, sndbuf } = await ssBufferSizes(server.port);
    expect(logged.SO_RCVBUF).toBe(rcvbuf);
    expect(logged.SO_SNDBUF).toBe(sndbuf);
  });

  test("logs the client socket's options at debug level: Bun turns TCP_NODELAY on for it", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--log-level", "debug"]);
    const client = await TestClient.connect(server.port);
    const [, line] = await server.waitForLog(/client socket options: (.+)/);
    expect(line).toContain("TCP_NODELAY=1");
    expect(line).toContain("SO_ACCEPTCONN=0");
    client.close();
  });

  test("the nc puzzle: without FIN the server answers and keeps waiting; the FIN is what ends it", async () => {
    // `echo hello | nc host port` (OpenBSD nc without -N) sends the line but never FIN.
    await using server = await startStage(STAGE, ["--port", "0", "--log-level", "debug"]);
    const client = await TestClient.connect(server.port);
    client.write("hello\n");
    expect(decode(await client.readAtLeast(6))).toBe("HELLO\n");
    await server.waitForLog(/replied 6 bytes/);
    // Nothing more happens: the connection stays open and the server keeps waiting for a next message.
    expect(await client.endsWithin(300)).toBe(false);
    expect(server.proc.exitCode).toBeNull();
    expect(server.stderr.text).not.toContain("closed its side");
    // `nc -N` sends FIN at the end of its input: the server sees it, closes and exits.
    await client.shutdown();
    await client.readToEnd();
    await server.waitForLog(/client 127\.0\.0\.1 closed its side \(FIN\)/);
    expect(await server.waitExit()).toBe(0);
  });

  test("the same with the real OpenBSD nc: with -N it ends, without -N both sides wait", async () => {
    await using withN = await startStage(STAGE, ["--port", "0"]);
    const nc = Bun.spawn(["nc", "-N", "127.0.0.1", String(withN.port)], {
      stdin: new Blob(["hello\n"]),
      stdout: "pipe",
    });
    expect(await new Response(nc.stdout).text()).toBe("HELLO\n");
    expect(await nc.exited).toBe(0);
    expect(await withN.waitExit()).toBe(0);

    await using withoutN = await startStage(STAGE, ["--port", "0", "--log-level", "debug"]);
    const stuck = Bun.spawn(["nc", "127.0.0.1", String(withoutN.port)], {
      stdin: new Blob(["hello\n"]),
      stdout: "pipe",
    });
    try {
      await withoutN.waitForLog(/replied 6 bytes/);
      expect(await Promise.race([stuck.exited, Bun.sleep(300).then(() => "still waiting")])).toBe("still waiting");
      expect(withoutN.stderr.text).not.toContain("closed its side");
    } finally {
      stuck.kill(); // Ctrl-C on nc: its socket closes, which the server sees as the FIN it was waiting for
    }
    await withoutN.waitForLog(/closed its side \(FIN\)/);
    expect(await withoutN.waitExit()).toBe(0);
  });

  echoContractTests({ file: STAGE, args: ["--port", "0"] });
  hostileContractTests({ file: STAGE, kind: "echo", args: ["--port", "0"], servesOneClient: true });
});
