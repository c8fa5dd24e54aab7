// The test helpers' own promises about processes: what a test starts in a Terminal never outlives the test.

import { expect, test } from "bun:test";
import { Terminal, isAlive } from "./process.ts";

// Here: programs that ignore the hangup.
test("Terminal disposal kills, by PID, what outlives its tmux server", async () => {
  let orphans: number[] = [];
  {
    // sh and its sleep ignore SIGHUP, as a program that mishandles the hangup would in effect.
    await using terminal = await Terminal.start(`sh -c 'trap "" HUP; sleep 600 & echo "sleeping $!"; wait'`);
    const sleeping = await terminal.waitFor(/^sleeping (\d+)$/m);
    const sleeper = Number(sleeping.match[1]);
    await terminal.killServer();
    orphans = terminal.pids().filter(isAlive);
    expect(orphans).toContain(sleeper); // the server is gone, and they are not
  }
  expect(orphans.filter(isAlive)).toEqual([]);
});
