// What the tooling around the stages knows about them: where the project is, which files are stages, and the one
// line a server stage prints when it listens. Used by test/, bench/ and menu/ alike; stages never import it.

import { readdirSync, statSync } from "node:fs";
import { join, resolve } from "node:path";

/** The project's root folder (this file's parent's parent). */
export const ROOT = resolve(import.meta.dir, "..");

/**
 * The line every server stage prints on stdout once it accepts connections: `listening on HOST:PORT`, an IPv6 host
 * in brackets. Group 1 is the host (brackets dropped), group 2 the port.
 */
export const LISTENING_LINE = /^listening on \[?([^\]\s]+?)\]?:(\d+)$/m;

/** The line a proxy stage with a control API (012 on) prints once the API answers; alone with --api-port. */
export const API_LINE = /^api on \[?([^\]\s]+?)\]?:(\d+)$/m;

export interface Address {
  host: string;
  port: number;
}

/** The address in the first listening line of `text`, if it has one. */
export function parseListeningLine(text: string): Address | undefined {
  const match = LISTENING_LINE.exec(text);
  return match ? { host: match[1]!, port: Number(match[2]) } : undefined;
}

/** `host:port`, the host in brackets when it is IPv6: how the stages print an address and take --upstream. */
export function formatAddress({ host, port }: Address): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A stage file's name: three digits, a dash, what it adds; `.ts`. */
const STAGE_FILE = /^(\d{3})-[\w.-]+\.ts$/;

/** True for `NNN-what-it-adds.ts`; false for tests (`.test.ts`, `.spec.ts`), declarations and anything else. */
export function isStageFileName(name: string): boolean {
  return STAGE_FILE.test(name) && !/\.(test|spec)\.ts$/.test(name) && !name.endsWith(".d.ts");
}

/** The stage files of `folder` (relative to `root`), sorted by number; none when the folder does not exist. */
export function stageFiles(folder: string, root = ROOT): string[] {
  let names: string[];
  try {
    names = readdirSync(join(root, folder));
  } catch {
    return []; // a stage folder that does not exist yet
  }
  return names.filter((name) => isStageFileName(name) && statSync(join(root, folder, name)).isFile()).sort();
}

/** The highest-numbered stage of `folder` numbered `from` or above, as `folder/NNN-name.ts`. */
export function lastStage(folder: string, from = 1, root = ROOT): string {
  const last = stageFiles(folder, root)
    .filter((name) => Number(name.slice(0, 3)) >= from)
    .at(-1);
  if (last === undefined) throw new Error(`no stage numbered ${from} or above in ${folder}/`);
  return `${folder}/${last}`;
}
