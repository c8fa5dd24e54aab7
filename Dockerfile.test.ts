// No Docker engine runs on these machines, so the image is checked in two halves: the Dockerfile's own
// promises (pinned base, non-root, stop signal, exec-form command naming a copied stage), and the container's
// command line run here, with the image's environment, serving and shutting down on the image's stop signal.
import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { lastStage } from "./bench/lib.ts";
import { decode, TestClient } from "./test/support/net.ts";
import { ROOT, startStage } from "./test/support/process.ts";

interface Instruction {
  keyword: string;
  value: string;
}

function parseDockerfile(text: string): Instruction[] {
  const joined = text.replace(/\\\n/g, " "); // continuation lines
  return joined
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => {
      const [keyword, ...rest] = line.split(/\s+/);
      return { keyword: keyword!.toUpperCase(), value: rest.join(" ") };
    });
}

const instructions = parseDockerfile(await Bun.file(resolve(ROOT, "Dockerfile")).text());
const last = (keyword: string): string | undefined => instructions.filter((i) => i.keyword === keyword).at(-1)?.value;

function imageEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const { value } of instructions.filter((i) => i.keyword === "ENV")) {
    for (const [, key, val] of value.matchAll(/(\w+)=(\S+)/g)) env[key!] = val!;
  }
  return env;
}

const command: string[] = JSON.parse(last("CMD") ?? "[]");

describe("Dockerfile", () => {
  test("pins the official Bun image to the version CI uses", async () => {
    const ciScript = await Bun.file(resolve(ROOT, ".ci/run")).text();
    const ciVersion = ciScript.match(/BUN_VERSION=(\S+)/)?.[1];
    expect(last("FROM")).toBe(`oven/bun:${ciVersion}-slim`);
  });

  test("installs from the frozen lockfile, runs as a non-root user, stops with SIGTERM, exposes 5000", () => {
    expect(instructions.some((i) => i.keyword === "RUN" && i.value.includes("bun install --frozen-lockfile"))).toBe(
      true,
    );
    expect(last("USER")).toBe("bun");
    expect(last("STOPSIGNAL")).toBe("SIGTERM");
    expect(last("EXPOSE")).toBe("5000");
    expect(imageEnv().HOST).toBe("0.0.0.0");
  });

  test("the command is exec form and names the last echo stage, which is copied into the image", () => {
    expect(command[0]).toBe("bun");
    const stage = command[1]!;
    expect(stage).toMatch(/^tcp_echo_server\/\d{3}-[\w-]+\.ts$/);
    expect(stage).toBe(lastStage("tcp_echo_server")); // a new last stage must be the one the image runs
    expect(existsSync(resolve(ROOT, stage))).toBe(true);
    const copied = instructions.filter((i) => i.keyword === "COPY").map((i) => i.value.split(/\s+/)[0]!);
    expect(copied.some((source) => stage.startsWith(source))).toBe(true);
    expect(command.slice(2)).toEqual([]); // configuration comes from ENV, so `docker run -e PORT=...` works
  });

  test("the image's command line, with the image's environment, serves on 0.0.0.0 and stops gracefully", async () => {
    // The one change: PORT=0 instead of 5000, which may be taken on this machine.
    await using server = await startStage(command[1]!, command.slice(2), { env: { ...imageEnv(), PORT: "0" } });
    expect(server.host).toBe("0.0.0.0");
    const client = await TestClient.connect(server.port, "127.0.0.1");
    client.write("from the container\n");
    expect(decode(await client.readAtLeast(19))).toBe("FROM THE CONTAINER\n");
    expect(await server.stop("SIGTERM")).toBe(0);
    await client.readToEnd();
  });
});
