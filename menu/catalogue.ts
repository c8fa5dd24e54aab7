// The menu's catalogue: which stages exist, what each one teaches, what it needs to run, and the command line
// that runs it. Everything is discovered when the menu runs (file names, header comments, `--help` output), so a
// new stage file appears in the menu without editing it. The knowledge the menu has of stage options lives in
// ONE place: FLAG_RULES below.

import { readFileSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { environment, WITHOUT_COLOUR } from "../lib/processes.ts";
import { ROOT, stageFiles as stageFilesOf } from "../lib/stages.ts";

/** The project's root (lib/stages.ts's ROOT, under the name the menu has always used). */
export const PROJECT_ROOT = ROOT;

/** Stage files of one folder (lib/stages.ts's stageFiles, in the argument order the menu has always used). */
export function stageFiles(root: string, folder: string): string[] {
  return stageFilesOf(folder, root);
}

// ---------------------------------------------------------------------------------------------------------------
// Areas: the folders that hold stages.

export type AreaId = "echo" | "proxy" | "client";

export interface Area {
  id: AreaId;
  folder: string;
  label: string;
  /** What the stage does when run: a server listens until stopped, a client runs to completion. */
  role: "server" | "client";
}

export const AREAS: readonly Area[] = [
  { id: "echo", folder: "tcp_echo_server", label: "Echo server", role: "server" },
  { id: "proxy", folder: "tcp_proxy", label: "Proxy", role: "server" },
  { id: "client", folder: "test", label: "Client", role: "client" },
];

// ---------------------------------------------------------------------------------------------------------------
// The table: the options the menu knows how to ask for. Which of them a stage takes is read from its `--help`
// (or, for a stage without a command line, from its source: 001 reads the PORT environment variable). The question
// and the default come from the stage's own help text when it has one; `fallback` is used only when it has not.

export type RuleId = "port" | "host" | "upstream" | "connections" | "concurrency" | "maxClients" | "logLevel";

export type ValueKind = "port" | "hostPort" | "count" | "choice" | "host";

export interface FlagRule {
  id: RuleId;
  /** Command-line spellings; the first one the stage's help lists is the one used. */
  flags: readonly string[];
  /** An environment variable that carries the value for stages without a command line (found in the source). */
  env?: string;
  kind: ValueKind;
  /** Asked interactively; otherwise the menu sets it only where it must (the guided demo sets --host). */
  ask: boolean;
  /** Shown in every command line the catalogue prints, even at its default (the things a newcomer changes). */
  alwaysShown: boolean;
  question: string;
  fallback: string;
  choices?: readonly string[];
}

export const FLAG_RULES: readonly FlagRule[] = [
  {
    id: "port",
    flags: ["--port", "-p"],
    env: "PORT",
    kind: "port",
    ask: true,
    alwaysShown: true,
    question: "Port",
    fallback: "5000",
  },
  {
    id: "upstream",
    flags: ["--upstream", "-u"],
    kind: "hostPort",
    ask: true,
    alwaysShown: true,
    question: "Upstream server (HOST:PORT)",
    fallback: "127.0.0.1:5000",
  },
  {
    id: "connections",
    flags: ["-n", "--connections", "--count"],
    kind: "count",
    ask: true,
    alwaysShown: true,
    question: "Number of connections",
    fallback: "100",
  },
  {
    id: "concurrency",
    flags: ["-c", "--concurrency"],
    kind: "count",
    ask: true,
    alwaysShown: false,
    question: "Connections open at the same time",
    fallback: "10",
  },
  {
    id: "maxClients",
    flags: ["--max-clients"],
    kind: "count",
    ask: true,
    alwaysShown: false,
    question: "Most clients served at once",
    fallback: "100",
  },
  {
    id: "logLevel",
    flags: ["--log-level"],
    kind: "choice",
    ask: true,
    alwaysShown: false,
    question: "Log level",
    fallback: "info",
    choices: ["debug", "info", "warn", "error"],
  },
  {
    id: "host",
    flags: ["--host"],
    kind: "host",
    ask: false,
    alwaysShown: false,
    question: "Host",
    fallback: "127.0.0.1",
  },
];

/** Flags that are never options to fill in. */
const NOT_OPTIONS = new Set(["-h", "--help"]);

// ---------------------------------------------------------------------------------------------------------------
// Stages and their header comments.

export interface StageHeader {
  /** "NNN - one-line lesson": the lesson part. */
  lesson: string;
  adds: string;
  lacks: string;
  tryIt: string;
  /** The whole comment, without the ` * ` margins. */
  text: string;
}

export interface Stage {
  area: Area;
  /** Path relative to the project root, with forward slashes: "tcp_echo_server/003-loop.ts". */
  file: string;
  number: number;
  /** "003" */
  label: string;
  header: StageHeader;
  /** The source mentions --help, so running it with --help is safe (it prints usage instead of listening). */
  takesHelp: boolean;
  /** Environment variables the source reads that FLAG_RULES knows, with the default the source gives them. */
  envDefaults: Map<string, string>;
}

/** Reads the header comment: the first `/* ... *\/` block, its first line `NNN - lesson`, and its sections. */
export function parseHeader(source: string, fileName: string): StageHeader {
  const block = /\/\*([\s\S]*?)\*\//.exec(source)?.[1] ?? "";
  const lines = block.split("\n").map((line) => line.replace(/^\s*\* ?/, "").replace(/\s+$/, ""));
  while (lines.length > 0 && lines[0] === "") lines.shift();
  while (lines.length > 0 && lines.at(-1) === "") lines.pop();
  const first = /^\d{3}\s+-\s+(.+)$/.exec(lines[0] ?? "");
  // A file without the header (still being written) keeps a lesson made from its name.
  const lesson =
    first?.[1] ??
    basename(fileName, ".ts")
      .replace(/^\d{3}-/, "")
      .replaceAll("-", " ");
  return {
    lesson,
    adds: section(lines, "Adds"),
    lacks: section(lines, "Lacks"),
    tryIt: section(lines, "Try it"),
    text: lines.join("\n"),
  };
}

/** One `Label:` section: its first line and the lines indented under it, up to a blank line or the next label. */
function section(lines: string[], label: string): string {
  const start = lines.findIndex((line) => line.startsWith(`${label}:`));
  if (start < 0) return "";
  const first = lines[start]!;
  const content = first.slice(label.length + 1);
  const indent = first.length - content.trimStart().length;
  const out = [content.trim()];
  for (const line of lines.slice(start + 1)) {
    if (line === "" || /^[A-Z][\w ]*:/.test(line)) break;
    out.push(line.replace(new RegExp(`^ {0,${indent}}`), ""));
  }
  return out.join("\n");
}

function readStage(root: string, area: Area, name: string): Stage {
  const file = `${area.folder}/${name}`;
  const source = readFileSync(join(root, file), "utf8");
  const envDefaults = new Map<string, string>();
  for (const rule of FLAG_RULES) {
    if (!rule.env) continue;
    const read = new RegExp(`process\\.env\\.${rule.env}\\b(?:\\s*(?:\\?\\?|\\|\\|)\\s*["']?([\\w.:]+))?`).exec(source);
    if (read) envDefaults.set(rule.env, read[1] ?? rule.fallback);
  }
  return {
    area,
    file,
    number: Number(name.slice(0, 3)),
    label: name.slice(0, 3),
    header: parseHeader(source, name),
    takesHelp: source.includes("--help"),
    envDefaults,
  };
}

export interface Catalogue {
  root: string;
  stages: Stage[];
}

/** Scans the stage folders now; call again to see files added since. */
export function loadCatalogue(root = PROJECT_ROOT): Catalogue {
  const stages: Stage[] = [];
  for (const area of AREAS) {
    for (const name of stageFilesOf(area.folder, root)) stages.push(readStage(root, area, name));
  }
  return { root, stages };
}

export function stagesOf(catalogue: Catalogue, area: AreaId): Stage[] {
  return catalogue.stages.filter((stage) => stage.area.id === area);
}

/** The stage this one was copied from: the highest-numbered one below it in the same folder. */
export function previousStage(catalogue: Catalogue, stage: Stage): Stage | undefined {
  return stagesOf(catalogue, stage.area.id)
    .filter((other) => other.number < stage.number)
    .at(-1);
}

/** The client the guided demo uses: the highest `test/NNN-client*.ts`. */
export function demoClient(catalogue: Catalogue): Stage | undefined {
  return stagesOf(catalogue, "client")
    .filter((stage) => /^test\/\d{3}-client/.test(stage.file))
    .at(-1);
}

// ---------------------------------------------------------------------------------------------------------------
// --help: running it, and reading the options it lists.

export interface HelpFlag {
  names: string[];
  /** The value placeholder (PORT, HOST:PORT, N); absent for a boolean flag. */
  value?: string;
  description: string;
  default?: string;
}

export interface Help {
  text: string;
  /** The lines between the usage line and "Options:": what the program does. */
  summary: string;
  flags: HelpFlag[];
}

export function parseHelp(text: string): Help {
  const lines = text.split("\n");
  const optionsAt = lines.findIndex((line) => /^\s*options:\s*$/i.test(line));
  const summary = lines
    .slice(0, optionsAt < 0 ? lines.length : optionsAt)
    .filter((line) => !/^\s*usage:/i.test(line))
    .join("\n")
    .trim();
  const flags: HelpFlag[] = [];
  let last: HelpFlag | undefined;
  for (const line of lines) {
    const flag =
      /^\s+(-{1,2}[A-Za-z][\w-]*(?:[ =][^\s,]+)?(?:,\s*-{1,2}[A-Za-z][\w-]*(?:[ =][^\s,]+)?)*)(?:\s{2,}(.*))?$/.exec(
        line,
      );
    if (flag) {
      const names: string[] = [];
      let value: string | undefined;
      for (const part of flag[1]!.split(/,\s*/)) {
        const [name, placeholder] = part.split(/[ =]/);
        names.push(name!);
        value ??= placeholder;
      }
      last = { names, description: (flag[2] ?? "").trim() };
      if (value !== undefined) last.value = value;
      flags.push(last);
    } else if (last && /^\s{4,}\S/.test(line) && !/^\s*-/.test(line)) {
      last.description = `${last.description} ${line.trim()}`.trim(); // a description continued on the next line
    } else {
      last = undefined;
    }
  }
  for (const flag of flags) {
    const fallback = /\(default:?\s+([^)]+)\)/i.exec(flag.description)?.[1]?.trim();
    if (fallback !== undefined) flag.default = fallback.replace(/^["']|["']$/g, "");
  }
  return { text, summary, flags };
}

const helpCache = new Map<string, Promise<Help | undefined>>();

/**
 * Runs `bun <stage> --help` (once per file version) and parses it. A stage without a command line is not run:
 * it would start listening instead. As a safety net the child gets PORT=0 and is killed if it starts listening.
 */
export function stageHelp(catalogue: Catalogue, stage: Stage, timeoutMs = 5000): Promise<Help | undefined> {
  if (!stage.takesHelp) return Promise.resolve(undefined);
  const path = join(catalogue.root, stage.file);
  const key = `${path}@${statSync(path).mtimeMs}`;
  let help = helpCache.get(key);
  if (!help) {
    help = fetchHelp(catalogue.root, path, timeoutMs);
    helpCache.set(key, help);
  }
  return help;
}

async function fetchHelp(root: string, path: string, timeoutMs: number): Promise<Help | undefined> {
  const child = Bun.spawn([process.execPath, path, "--help"], {
    cwd: root,
    env: environment(WITHOUT_COLOUR, { PORT: "0" }),
    stdin: "ignore",
    stdout: "pipe",
    stderr: "ignore",
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  let text = "";
  try {
    const decoder = new TextDecoder();
    for await (const chunk of child.stdout) {
      text += decoder.decode(chunk, { stream: true });
      if (/^listening on /m.test(text)) child.kill("SIGKILL"); // it ignored --help and started serving
    }
    const code = await child.exited;
    if (code !== 0 || /^listening on /m.test(text) || text.trim() === "") return undefined;
    return parseHelp(text);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// What a stage needs, and the command line that runs it.

export interface StageOption {
  rule: FlagRule;
  /** The spelling to use: a flag ("--port", "-n") or, with `env`, an environment variable name ("PORT"). */
  name: string;
  env: boolean;
  question: string;
  default: string;
  /** For a choice: the values, read from the help ("debug, info, warn or error") or from the rule. */
  choices?: string[];
}

export interface StageOptions {
  /** Every option of FLAG_RULES this stage takes, asked or not. */
  known: StageOption[];
  /** Options with a value that the table does not know: the menu offers to type them. */
  unknown: HelpFlag[];
}

/** Matches the stage's help (or its environment variables) against FLAG_RULES. */
export function stageOptions(stage: Stage, help: Help | undefined): StageOptions {
  const known: StageOption[] = [];
  const claimed = new Set<HelpFlag>();
  for (const rule of FLAG_RULES) {
    const flag = help?.flags.find((candidate) => candidate.names.some((name) => rule.flags.includes(name)));
    if (flag) {
      claimed.add(flag);
      const name = rule.flags.find((candidate) => flag.names.includes(candidate))!;
      const described = flag.description.replace(/\s*\(default[^)]*\)/i, "").trim();
      const option: StageOption = {
        rule,
        name,
        env: false,
        question: capitalise(described || rule.question),
        default: flag.default ?? rule.fallback,
      };
      if (rule.kind === "choice") {
        const listed = described.split(/,\s*|\s+or\s+/);
        option.choices =
          listed.length > 1 && listed.every((word) => /^[\w-]+$/.test(word)) ? listed : [...(rule.choices ?? [])];
        option.question = rule.question;
      }
      known.push(option);
    } else if (rule.env && stage.envDefaults.has(rule.env)) {
      const question = `${rule.question} (environment variable ${rule.env})`;
      known.push({ rule, name: rule.env, env: true, question, default: stage.envDefaults.get(rule.env)! });
    }
  }
  const unknown = (help?.flags ?? []).filter(
    (flag) => !claimed.has(flag) && flag.value !== undefined && !flag.names.some((name) => NOT_OPTIONS.has(name)),
  );
  return { known, unknown };
}

function capitalise(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export function findOption(options: StageOptions, id: RuleId): StageOption | undefined {
  return options.known.find((option) => option.rule.id === id);
}

/** A program to run from the project root; argv[0] is "bun" or "git". */
export interface Command {
  argv: string[];
  env: Record<string, string>;
}

/**
 * The command line for `stage` with `values` (by rule id) and `extra` arguments typed by hand. An option shows up
 * when it was given a value, or when it is `alwaysShown` (then at its default), so the printed line is what a
 * person would type.
 */
export function stageCommand(
  stage: Stage,
  options: StageOptions,
  values: Partial<Record<RuleId, string>> = {},
  extra: string[] = [],
): Command {
  const argv = ["bun", stage.file];
  const env: Record<string, string> = {};
  for (const option of options.known) {
    const given = values[option.rule.id];
    const value = given ?? (option.rule.alwaysShown ? option.default : undefined);
    if (value === undefined || (given !== undefined && !option.rule.alwaysShown && given === option.default)) continue;
    if (option.env) env[option.name] = value;
    else argv.push(option.name, value);
  }
  argv.push(...extra);
  return { argv, env };
}

/** "git diff" between a stage and the one before it: the lesson, as a diff. */
export function diffCommand(previous: Stage, stage: Stage, colour: boolean): Command {
  const argv = ["git", "diff", "--no-index"];
  if (colour) argv.push("--color=always");
  argv.push(previous.file, stage.file);
  return { argv, env: {} };
}

export function testFileOf(catalogue: Catalogue, stage: Stage): string | undefined {
  const test = stage.file.replace(/\.ts$/, ".test.ts");
  try {
    return statSync(join(catalogue.root, test)).isFile() ? test : undefined;
  } catch {
    return undefined;
  }
}

export function testCommand(testFile: string): Command {
  return { argv: ["bun", "test", "--timeout", "60000", testFile], env: {} };
}

const SHELL_SAFE = /^[\w@%+=:,./-]+$/;

function shellQuote(word: string): string {
  return SHELL_SAFE.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/** The command as a person types it in a shell, from the project root. */
export function commandLine(command: Command): string {
  const env = Object.entries(command.env).map(([name, value]) => `${name}=${shellQuote(value)}`);
  return [...env, ...command.argv.map(shellQuote)].join(" ");
}

/** Splits what a person typed as extra arguments; single and double quotes group words. */
export function splitArguments(typed: string): string[] {
  const words: string[] = [];
  for (const match of typed.matchAll(/"([^"]*)"|'([^']*)'|(\S+)/g)) words.push(match[1] ?? match[2] ?? match[3]!);
  return words;
}

// ---------------------------------------------------------------------------------------------------------------
// Checking what a person types.

export function validateValue(kind: ValueKind, value: string): string | undefined {
  switch (kind) {
    case "port":
      return /^\d+$/.test(value) && Number(value) <= 65535 ? undefined : "a port is a whole number from 0 to 65535";
    case "hostPort": {
      const match = /^(\[[^\]]+\]|[^:\s]+):(\d+)$/.exec(value);
      const port = Number(match?.[2]);
      return match && port >= 1 && port <= 65535 ? undefined : "expected HOST:PORT, e.g. 127.0.0.1:5000";
    }
    case "count":
      return /^\d+$/.test(value) && Number(value) >= 1 ? undefined : "a whole number, 1 or more";
    case "host":
      return value.trim() === "" ? "a host name or address" : undefined;
    case "choice":
      return undefined;
  }
}

/** A server stage documented as serving one client and exiting (001-003): the demo then sends one connection. */
export function servesOneClient(stage: Stage, help: Help | undefined): boolean {
  const description = help?.summary || stage.header.adds; // 001's help is a bare usage line: no summary
  return /\bone client\b(?! at a time)/i.test(description);
}

// ---------------------------------------------------------------------------------------------------------------
// The catalogue as text: what `bun run menu` prints without a terminal, and with --list.

export interface ListingStyle {
  bold: (text: string) => string;
  dim: (text: string) => string;
  cyan: (text: string) => string;
}

const PLAIN: ListingStyle = { bold: (t) => t, dim: (t) => t, cyan: (t) => t };

/** The default command line of every stage (their --help run in parallel), the demo by hand, and a diff. */
export async function catalogueListing(catalogue: Catalogue, style: ListingStyle = PLAIN): Promise<string> {
  const helps = new Map(
    await Promise.all(catalogue.stages.map(async (stage) => [stage, await stageHelp(catalogue, stage)] as const)),
  );
  const optionsOf = (stage: Stage): StageOptions => stageOptions(stage, helps.get(stage));
  const out: string[] = [
    style.bold("bun-tcp-lab: the stages in this checkout, and the command that runs each (from the project root)."),
    style.dim("On a terminal, `bun run menu` lets you pick one, runs it, and shows what changed between stages."),
    "",
  ];
  for (const area of AREAS) {
    out.push(style.bold(`${area.label}  (${area.folder}/)`));
    const stages = stagesOf(catalogue, area.id);
    if (stages.length === 0) out.push(style.dim("  none yet"));
    for (const stage of stages) {
      out.push(`  ${style.cyan(stage.label)}  ${stage.header.lesson}`);
      out.push(`       ${commandLine(stageCommand(stage, optionsOf(stage)))}`);
    }
    out.push("");
  }
  const echo = stagesOf(catalogue, "echo").at(-1);
  if (echo) {
    const echoOptions = optionsOf(echo);
    const echoPort = findOption(echoOptions, "port")?.default ?? "5000";
    const steps = [commandLine(stageCommand(echo, echoOptions))];
    let target = `127.0.0.1:${echoPort}`;
    const proxy = stagesOf(catalogue, "proxy").at(-1);
    if (proxy) {
      const proxyOptions = optionsOf(proxy);
      steps.push(`${commandLine(stageCommand(proxy, proxyOptions, { upstream: target }))}   (optional)`);
      target = `127.0.0.1:${findOption(proxyOptions, "port")?.default ?? "6000"}`;
    }
    const client = demoClient(catalogue);
    if (client) {
      const clientOptions = optionsOf(client);
      const connections = servesOneClient(echo, helps.get(echo)) ? { connections: "1" } : {};
      steps.push(commandLine(stageCommand(client, clientOptions, { port: target.split(":")[1]!, ...connections })));
    } else {
      steps.push(`echo "hello from the menu" | nc -N ${target.replace(":", " ")}`);
    }
    out.push(
      style.bold("Guided demo"),
      style.dim("  the menu runs these for you, each in turn, then stops them; by hand, one per terminal:"),
    );
    for (const step of steps) out.push(`  ${step}`);
    out.push("");
  }
  // The first step of the first series (echo 001 -> 002), as the menu's What changed starts there.
  const withPrevious = catalogue.stages.find((stage) => previousStage(catalogue, stage));
  if (withPrevious) {
    out.push(style.bold("What changed"), style.dim("  the lesson of a stage is its diff with the one before, e.g.:"));
    out.push(`  ${commandLine(diffCommand(previousStage(catalogue, withPrevious)!, withPrevious, false))}`, "");
  }
  return out.join("\n");
}
