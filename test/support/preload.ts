// Loaded before every test file (bunfig.toml [test] preload). After each file, no process the tests started may
// still be running: `bun test` does not kill children a test left behind, so a leak would outlive the run.
import { afterAll } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";

/** PIDs of this process's direct children, from /proc (Linux). */
function childPids(): number[] {
  const pids: number[] = [];
  try {
    for (const task of readdirSync(`/proc/${process.pid}/task`)) {
      const children = readFileSync(`/proc/${process.pid}/task/${task}/children`, "utf8").trim();
      if (children) pids.push(...children.split(/\s+/).map(Number));
    }
  } catch {
    // Not Linux, or /proc is not readable: nothing to check.
  }
  return pids;
}

/** A child that has exited but not been reaped yet is not "left running". */
function isRunning(pid: number): boolean {
  try {
    const state = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0];
    return state !== undefined && state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

afterAll(async () => {
  // Give children killed in the last `finally` a moment to be reaped.
  let left = childPids().filter(isRunning);
  for (let i = 0; i < 20 && left.length > 0; i++) {
    await Bun.sleep(25);
    left = childPids().filter(isRunning);
  }
  if (left.length === 0) return;
  const commands = left.map((pid) => `${pid}: ${readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ")}`);
  for (const pid of left) process.kill(pid, "SIGKILL");
  throw new Error(`test file left ${left.length} process(es) running (now killed):\n${commands.join("\n")}`);
});
