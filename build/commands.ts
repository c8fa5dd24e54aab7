// The four commands this project ships, and the file each one is built from: the ONE place that maps a command
// name to a stage. The build (executables and the package's commands), the Dockerfile's check, the deploy checks
// and the docs all go through this table, so a renumbered or new last stage needs no edit anywhere.

import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { lastStage, ROOT } from "../lib/stages.ts";

export { ROOT };

export type CommandName = "tcp-echo-server" | "tcp-proxy" | "tcp-load" | "tcp-sockets";

export interface Command {
  name: CommandName;
  /** What it is, in the words the docs use. */
  what: string;
  /** The source file, relative to the repository root, found when asked (stages are renumbered over time). */
  source: () => string;
}

export const COMMANDS: readonly Command[] = [
  { name: "tcp-echo-server", what: "the last echo stage", source: () => lastStage("tcp_echo_server") },
  { name: "tcp-proxy", what: "the last proxy stage", source: () => lastStage("tcp_proxy") },
  { name: "tcp-load", what: "the load generator", source: () => "test/003-load-generator.ts" },
  { name: "tcp-sockets", what: "the socket counter", source: () => "test/004-sockets.ts" },
];

export function command(name: CommandName): Command {
  const found = COMMANDS.find((c) => c.name === name);
  if (found === undefined) throw new Error(`no command named ${name}`);
  return found;
}

/** The absolute path of `name`'s source file; throws if the table names a file that is gone. */
export function sourceOf(name: CommandName): string {
  const file = resolve(ROOT, command(name).source());
  if (!existsSync(file)) throw new Error(`${name}: its source ${file} does not exist (build/commands.ts)`);
  return file;
}
