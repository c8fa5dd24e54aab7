// The one listening line, and stage discovery, as every tool (tests, benchmarks, menu) sees them.

import { expect, test } from "bun:test";
import { TempTree } from "../test/support/process.ts";
import { formatAddress, isStageFileName, lastStage, parseListeningLine, ROOT, stageFiles } from "./stages.ts";

test("the listening line: IPv4, IPv6 in brackets, a host name; only a whole line counts", () => {
  expect(parseListeningLine("listening on 127.0.0.1:5000\n")).toEqual({ host: "127.0.0.1", port: 5000 });
  expect(parseListeningLine("log line\nlistening on [::1]:6000\n")).toEqual({ host: "::1", port: 6000 });
  expect(parseListeningLine("listening on localhost:1")).toEqual({ host: "localhost", port: 1 });
  expect(parseListeningLine("INFO  listening on 127.0.0.1:5000 (one client)\n")).toBeUndefined(); // a log line
  expect(parseListeningLine("listening on 127.0.0.1\n")).toBeUndefined();
  for (const address of [
    { host: "127.0.0.1", port: 5000 },
    { host: "::1", port: 6000 },
  ]) {
    expect(parseListeningLine(`listening on ${formatAddress(address)}`)).toEqual(address);
  }
});

test("stage files: NNN-name.ts only, sorted; tests, helpers and other names are not stages", () => {
  expect(["001-a.ts", "010-b.c.ts", "123-x_y.ts"].every(isStageFileName)).toBe(true);
  for (const name of ["001-a.test.ts", "001-a.spec.ts", "001-a.d.ts", "12-a.ts", "001.ts", "notes.ts", "001-a.js"])
    expect(isStageFileName(name)).toBe(false);
  using tree = new TempTree({
    "stages/002-second.ts": "",
    "stages/001-first.ts": "",
    "stages/001-first.test.ts": "",
    "stages/005-fifth.ts": "",
    "stages/README.md": "",
    "stages/003-folder.ts/inside.ts": "", // a folder with a stage's name is not a stage
  });
  expect(stageFiles("stages", tree.root)).toEqual(["001-first.ts", "002-second.ts", "005-fifth.ts"]);
  expect(stageFiles("missing", tree.root)).toEqual([]);
  expect(lastStage("stages", 1, tree.root)).toBe("stages/005-fifth.ts");
  expect(() => lastStage("stages", 6, tree.root)).toThrow("no stage numbered 6 or above in stages/");
});

test("the real tree: the latest echo stage is the highest-numbered file of tcp_echo_server/", () => {
  const echo = stageFiles("tcp_echo_server");
  expect(echo.slice(0, 3)).toEqual(["001-simple-one-echo.ts", "002-logging-class-cli.ts", "003-loop.ts"]);
  expect(lastStage("tcp_echo_server")).toBe(`tcp_echo_server/${echo.at(-1)}`);
  expect(ROOT).toBe(new URL("..", import.meta.url).pathname.replace(/\/$/, ""));
});
