// The behaviour every echo stage promises, registered as tests by each stage's own test file:
// binary bytes come back with only a-z changed and the same length, and a client that sends then half-closes
// (FIN) still gets its whole reply.

import { expect, test } from "bun:test";
import { startStage, type RunOptions } from "./process.ts";
import { allByteValues, TestClient, upperAscii } from "./net.ts";

export interface StageLaunch {
  file: string;
  args?: string[];
  options?: RunOptions;
}

export function echoContractTests({ file, args = [], options = {} }: StageLaunch): void {
  test("binary-safe: bytes 0-255 come back with only a-z uppercased, same length", async () => {
    await using server = await startStage(file, args, options);
    const request = allByteValues();
    const client = await TestClient.connect(server.port);
    client.write(request);
    const reply = await client.readAtLeast(request.length);
    expect(reply.length).toBe(request.length);
    expect(reply).toEqual(upperAscii(request));
    client.close();
  });

  test("a client that sends and then half-closes still gets its reply", async () => {
    await using server = await startStage(file, args, options);
    const client = await TestClient.connect(server.port);
    client.write("hello, half-close\n");
    await client.shutdown();
    const reply = await client.readToEnd();
    expect(new TextDecoder().decode(reply)).toBe("HELLO, HALF-CLOSE\n");
  });
}
