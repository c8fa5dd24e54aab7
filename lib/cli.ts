// Command lines of the tools around the stages (benchmarks, the chaos run): --help, and usage errors in one line
// with exit 2, never a stack trace. (Stages parse their own options: they import nothing from here.)

import { type ParseArgsOptionsConfig, parseArgs } from "node:util";

/** Prints `error: MESSAGE (see --help)` on stderr and exits 2. */
export function usageError(message: string): never {
  process.stderr.write(`error: ${message.split("\n")[0]} (see --help)\n`);
  process.exit(2);
}

const HELP_OPTION = { type: "boolean", short: "h", default: false } as const;

/**
 * Parses this process's command line against `options` (plus -h/--help; no positional arguments): --help prints
 * `help` and exits 0; anything parseArgs rejects is a usage error.
 */
export function commandLine<const O extends ParseArgsOptionsConfig>(help: string, options: O) {
  const config = {
    options: { ...options, help: HELP_OPTION },
    strict: true,
    allowPositionals: false,
  } as const;
  let parsed: ReturnType<typeof parseArgs<typeof config>>;
  try {
    parsed = parseArgs(config);
  } catch (error) {
    usageError((error as Error).message);
  }
  if ((parsed.values as { help?: boolean }).help) {
    process.stdout.write(help);
    process.exit(0);
  }
  return parsed.values;
}

/** `text` as a number of at least `min` (a whole one if `integer`), or a usage error naming `option`. */
export function numberOption(option: string, text: string, { min = 0, integer = false } = {}): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || value < min || (integer && !Number.isInteger(value)))
    usageError(`${option} must be ${integer ? "a whole number" : "a number"} of at least ${min}, got "${text}"`);
  return value;
}
