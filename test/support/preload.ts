// Loaded before every test file (bunfig.toml [test] preload). After each file, no process the tests started may
// still be running: `bun test` does not kill children a test left behind, so a leak would outlive the run.
import { afterAll } from "bun:test";
import { readFileSync } from "node:fs";
import { descendants, isAlive } from "./process.ts";

afterAll(async () => {
  // Give children killed in the last `finally` a moment to be reaped.
  let left = descendants(process.pid).filter(isAlive);
  for (let i = 0; i < 20 && left.length > 0; i++) {
    await Bun.sleep(25);
    left = descendants(process.pid).filter(isAlive);
  }
  if (left.length === 0) return;
  const commandOf = (pid: number): string => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
    } catch {
      return "(exited meanwhile)";
    }
  };
  const commands = left.map((pid) => `${pid}: ${commandOf(pid)}`);
  for (const pid of left) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // exited meanwhile
    }
  }
  throw new Error(`test file left ${left.length} process(es) running (now killed):\n${commands.join("\n")}`);
});
