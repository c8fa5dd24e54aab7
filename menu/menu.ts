#!/usr/bin/env bun
/*
 * bun run menu - the interactive way into the project
 *
 * Pick an area (echo server, proxy, client, guided demo, tools), then a stage: each one is listed with the lesson
 * from its header comment, so a new stage file shows up here without editing the menu. The menu asks only for what
 * the stage takes (read from its --help), runs it in the foreground with its live output, and Ctrl-C stops it and
 * comes back here; Ctrl-C at the menu exits. Without a terminal (piped, CI), or with --list, it prints the
 * catalogue with the command line of each stage and exits 0: a prompt with no terminal would wait forever.
 */

import * as p from "@clack/prompts";
import { writeSync } from "node:fs";
import { isatty } from "node:tty";
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import pc from "picocolors";
import {
  AREAS,
  type AreaId,
  type Catalogue,
  type RuleId,
  type Stage,
  type StageOption,
  catalogueListing,
  commandLine,
  demoClient,
  diffCommand,
  findOption,
  loadCatalogue,
  PROJECT_ROOT,
  previousStage,
  servesOneClient,
  splitArguments,
  stageCommand,
  stageHelp,
  stageOptions,
  stagesOf,
  testCommand,
  testFileOf,
  validateValue,
  type Command,
} from "./catalogue.ts";
import {
  describeOutcome,
  installSignalHandlers,
  interruptible,
  runForeground,
  shutDown,
  shuttingDown,
  TERMINAL_CHECK_MS,
} from "./children.ts";
import { runDemo } from "./demo.ts";
import { lessCommand, pageThrough } from "./pager.ts";
import { environment as childEnvironment, spawnProcess } from "../lib/processes.ts";

const HELP = `Usage: bun run menu [options]        (or: bun menu/menu.ts [options])

Pick a stage and run it, watch a guided demo, or see what changed between two stages.
Without a terminal it prints the catalogue of stages and the command line of each, and exits.

Options:
  --list        print the catalogue and exit, even on a terminal
  --root DIR    read the stages from another checkout of the project (default: this one)
  -h, --help    show this help
`;

class UsageError extends Error {}

function parseCommandLine(argv: string[]): { list: boolean; root: string } | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        list: { type: "boolean", default: false },
        root: { type: "string", default: PROJECT_ROOT },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (values.help) return "help";
  return { list: values.list, root: resolve(values.root) };
}

// ---------------------------------------------------------------------------------------------------------------
// Interactive menu.

type TopChoice = AreaId | "demo" | "tools" | "exit";
type ToolChoice = "diff" | "about" | "tests";

/** What was picked last, offered first next time round. */
const remembered: { top?: TopChoice; stage?: string; tool?: ToolChoice } = {};

function plural(count: number, word: string): string {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

/** Offers `stages`, starting on the one picked last if it is there, else on `fallback` (by default the newest). */
async function pickStage(
  stages: Stage[],
  message: string,
  describe?: (stage: Stage) => string,
  fallback: Stage | undefined = stages.at(-1),
): Promise<Stage | undefined> {
  const initial = stages.find((stage) => stage.file === remembered.stage) ?? fallback;
  const picked = await p.select<Stage>({
    message,
    options: stages.map((stage) => ({
      value: stage,
      label: describe?.(stage) ?? `${stage.label}  ${stage.header.lesson}`,
    })),
    ...(initial ? { initialValue: initial } : {}),
    maxItems: 12,
  });
  if (p.isCancel(picked)) return undefined;
  remembered.stage = picked.file;
  return picked;
}

/** Asks for one option; undefined if the user cancelled. */
async function ask(option: StageOption): Promise<string | undefined> {
  if (option.choices && option.choices.length > 0) {
    const chosen = await p.select<string>({
      message: option.question,
      options: option.choices.map((choice) => ({ value: choice, label: choice })),
      initialValue: option.choices.includes(option.default) ? option.default : option.choices[0]!,
    });
    return p.isCancel(chosen) ? undefined : chosen;
  }
  const typed = await p.text({
    message: `${option.question}  ${pc.dim(option.env ? `(${option.name}=)` : `(${option.name})`)}`,
    placeholder: option.default,
    defaultValue: option.default,
    validate: (value) => validateValue(option.rule.kind, value?.trim() || option.default),
  });
  return p.isCancel(typed) ? undefined : typed.trim() || option.default;
}

interface ForegroundDisplay {
  /** Exit codes that are not failures, and what they mean. */
  meanings?: Record<number, string>;
  /** The command line to show, when the one run has extras a person would not type. */
  shown?: string;
}

/** Runs `command` on the terminal until it ends or Ctrl-C, and says how it ended. */
async function runInForeground(
  catalogue: Catalogue,
  command: Command,
  what: string,
  display: ForegroundDisplay = {},
): Promise<void> {
  const { meanings = {}, shown = commandLine(command) } = display;
  p.log.step(`${pc.bold(shown)}\n${pc.dim("Ctrl-C stops it and comes back to the menu")}`);
  const outcome = await interruptible((interrupted) =>
    runForeground(command, {
      root: catalogue.root,
      interrupted,
      // The PID, for `ps -p PID -T -f` or `ss -tp` in another terminal.
      // Written at once (not buffered) so that it comes before the child's first line.
      onStart: (pid) => void writeSync(1, `${pc.dim(`(pid ${pid})`)}\n`),
      onInterrupt: (graceMs) => {
        if (!shuttingDown())
          console.log(pc.dim(`\nCtrl-C: waiting up to ${graceMs / 1000} s for ${what} to stop (then it is killed)`));
      },
    }),
  );
  const meaning = outcome.code === null ? undefined : meanings[outcome.code];
  const message = `${what} (pid ${outcome.pid}) ${describeOutcome(outcome)}${meaning ? ` (${meaning})` : ""}`;
  if (outcome.interrupted || outcome.code === 0 || meaning) p.log.info(message);
  else p.log.warn(message);
}

async function runStage(catalogue: Catalogue, areaId: AreaId): Promise<void> {
  const area = AREAS.find((candidate) => candidate.id === areaId)!;
  const stage = await pickStage(stagesOf(catalogue, areaId), `${area.label}: which stage?`);
  if (!stage) return;
  const help = await stageHelp(catalogue, stage);
  const options = stageOptions(stage, help);
  if (area.role === "client") {
    p.log.info(
      "A client needs a server: start one in another terminal (bun run menu, Echo server), or use the Guided demo.",
    );
  }
  const values: Partial<Record<RuleId, string>> = {};
  for (const option of options.known.filter((known) => known.rule.ask)) {
    const value = await ask(option);
    if (value === undefined) return;
    values[option.rule.id] = value;
  }
  let extra: string[] = [];
  if (options.unknown.length > 0) {
    const known = options.unknown.map((flag) => `${flag.names.join(", ")} ${flag.value}`).join("; ");
    const typed = await p.text({
      message: `Other options? ${pc.dim(`(${known}; Enter for none)`)}`,
      placeholder: "",
      defaultValue: "",
    });
    if (p.isCancel(typed)) return;
    extra = splitArguments(typed);
  }
  if (stage.header.tryIt) p.note(stage.header.tryIt, `${stage.label} ${stage.header.lesson}: try it`);
  await runInForeground(catalogue, stageCommand(stage, options, values, extra), stage.file);
}

async function guidedDemo(catalogue: Catalogue): Promise<void> {
  const echoes = stagesOf(catalogue, "echo");
  if (echoes.length === 0) return void p.log.warn("No echo server stage yet: nothing to demonstrate.");
  p.note(
    "The menu starts an echo server on a free port, optionally a proxy in front of it, then runs a client\n" +
      "against them and shows the client's summary. Then it stops everything. Ctrl-C stops it all at any time.",
    "Guided demo",
  );
  const echo = await pickStage(echoes, "Which echo server?");
  if (!echo) return;
  const proxies = stagesOf(catalogue, "proxy");
  let proxy: Stage | undefined;
  if (proxies.length > 0) {
    const picked = await p.select<Stage | "none">({
      message: "A proxy in front of it?",
      options: [
        { value: "none", label: "no proxy" },
        ...proxies.map((stage) => ({ value: stage, label: `${stage.label}  ${stage.header.lesson}` })),
      ],
      initialValue: "none",
    });
    if (p.isCancel(picked)) return;
    proxy = picked === "none" ? undefined : picked;
  }
  const client = demoClient(catalogue);
  let connections = 1;
  if (client) {
    const option = findOption(stageOptions(client, await stageHelp(catalogue, client)), "connections");
    const oneClient = servesOneClient(echo, await stageHelp(catalogue, echo));
    if (oneClient) p.log.info(`${echo.label} serves one client and exits, so one connection is what it can take.`);
    if (option) {
      const typed = await ask({ ...option, default: oneClient ? "1" : option.default });
      if (typed === undefined) return;
      connections = Number(typed);
    }
    p.log.step(`Client: ${client.file}`);
  } else {
    p.log.step("No client stage yet (test/NNN-client*.ts): the menu checks the server itself, one line, one reply.");
  }
  const report = await interruptible((interrupted) =>
    runDemo(
      catalogue,
      { echo, ...(proxy ? { proxy } : {}), ...(client ? { client } : {}), connections },
      {
        interrupted,
        print: (line) => console.log(line),
        colour: pc.isColorSupported,
      },
    ),
  );
  p.note(report.summary, report.interrupted ? "Demo interrupted" : client ? "Client summary" : "Built-in check");
  if (report.interrupted) p.log.info("Stopped everything.");
  else if (report.ok) p.log.success("Demo done: everything stopped.");
  else p.log.error("The demo failed (see above); everything stopped.");
}

async function tools(catalogue: Catalogue): Promise<void> {
  const tested = catalogue.stages.filter((stage) => testFileOf(catalogue, stage));
  const choice = await p.select<ToolChoice>({
    message: "Tools",
    options: [
      { value: "diff", label: "What changed", hint: "the diff between a stage and the one before it" },
      { value: "about", label: "About a stage", hint: "its header comment and --help" },
      {
        value: "tests",
        label: "Run a stage's tests",
        hint: tested.length ? plural(tested.length, "test file") : "none yet",
        disabled: tested.length === 0,
      },
    ],
    ...(remembered.tool ? { initialValue: remembered.tool } : {}),
  });
  if (p.isCancel(choice)) return;
  remembered.tool = choice;
  if (choice === "diff") {
    const steps = catalogue.stages.filter((candidate) => previousStage(catalogue, candidate));
    const step = (candidate: Stage): string =>
      `${candidate.area.folder}/${previousStage(catalogue, candidate)!.label} -> ${candidate.label}`;
    // Unless a stage was picked before, start on the first step of the series (echo 001 -> 002): the last one
    // in the list is a client, and two unrelated tools make a poor first lesson.
    const stage = await pickStage(
      steps,
      "What changed in which stage?",
      (candidate) => `${step(candidate)}  ${candidate.header.lesson}`,
      steps[0],
    );
    if (stage) await whatChanged(catalogue, previousStage(catalogue, stage)!, stage);
  } else if (choice === "about") {
    const stage = await pickStage(
      catalogue.stages,
      "About which stage?",
      (candidate) => `${candidate.file}  ${candidate.header.lesson}`,
    );
    if (!stage) return;
    p.note(stage.header.text, stage.file);
    const help = await stageHelp(catalogue, stage);
    p.note(help?.text.trimEnd() ?? "(no command line: it takes no options)", `bun ${stage.file} --help`);
  } else {
    const stage = await pickStage(tested, "Run the tests of which stage?");
    if (stage) await runInForeground(catalogue, testCommand(testFileOf(catalogue, stage)!), "the tests");
  }
}

/** The lesson of `stage`: what it adds, then its diff with `previous`, paged so that its top stays readable. */
async function whatChanged(catalogue: Catalogue, previous: Stage, stage: Stage): Promise<void> {
  if (stage.header.adds) p.note(stage.header.adds, `${stage.label} adds`);
  const shown = commandLine(diffCommand(previous, stage, false));
  const argv = diffCommand(previous, stage, pc.isColorSupported).argv;
  // git's own pager would be a grandchild, left running if git were interrupted: the menu pages it itself.
  await using git = spawnProcess(argv, { cwd: catalogue.root, env: childEnvironment({ GIT_PAGER: "cat" }) });
  const [diff, code] = [await git.stdout.ended(), await git.exited];
  if (code > 1) return void p.log.error(`${shown} failed (exit code ${code}): ${git.stderr.text.trim()}`);
  const lines = diff.split("\n").length - 1;
  const less = process.stdout.isTTY ? Bun.which("less") : null;
  const how = less ? "q leaves the pager, space and arrows move" : "a page at a time";
  p.log.step(`${pc.bold(shown)}\n${pc.dim(`${lines} lines; ${how}`)}`);
  if (less) {
    await interruptible((interrupted) =>
      runForeground(
        { argv: lessCommand(less), env: {} },
        { root: catalogue.root, interrupted, input: new TextEncoder().encode(diff) },
      ),
    );
  } else {
    const height = Math.max(5, (process.stdout.rows || 24) - 4);
    await pageThrough(
      diff,
      height,
      (page) => console.log(page.join("\n")),
      async (left) => {
        const more = await p.confirm({ message: `${left} more lines: show the next page?` });
        return more === true;
      },
    );
  }
  p.log.info(code === 1 ? `${stage.file} differs from ${previous.file}` : "no difference");
}

/** A prompt may be showing: give the terminal back as it was (cooked mode, cursor visible), if it is still there. */
function restoreTerminal(): void {
  // On a terminal that is gone every call fails with EIO: the check skips them, and anything that fails anyway
  // must not stop the exit (that is how a menu once survived SIGHUP and SIGTERM, spinning on a dead pty).
  if (!isatty(0) || !isatty(1)) return;
  try {
    process.stdin.setRawMode(false);
  } finally {
    writeSync(1, "\x1b[?25h\n");
  }
}

/**
 * The terminal going away must end the menu, and what it started, whether or not a signal says so: the kernel
 * sends SIGHUP only to the terminal's session, and a clack prompt whose input has ended never settles (and Bun
 * then spins on the dead pty at half a core). Each of these means the terminal is gone; each is enough.
 */
function watchTerminal(): void {
  const gone = (): void => shutDown("terminal gone");
  process.stdin.on("end", gone); // a hung-up pty reads as end of file ...
  process.stdin.on("error", gone); // ... then the prompt's setRawMode(false) fails with EIO
  process.stdout.on("error", gone); // writing to it fails with EIO
  process.stderr.on("error", gone);
  // While a stage runs nobody reads stdin, and without SIGHUP (another session) no event would come: ask the
  // terminal itself. isatty() is false once the pty is hung up. Unreferenced: it never keeps the menu alive.
  setInterval(() => {
    if (!isatty(0)) gone();
  }, TERMINAL_CHECK_MS).unref();
}

async function interactive(root: string): Promise<void> {
  installSignalHandlers(restoreTerminal);
  watchTerminal();
  p.intro(pc.bold("bun-tcp-lab"));
  for (;;) {
    const catalogue = loadCatalogue(root); // every time round: files added meanwhile show up
    const count = (area: AreaId): number => stagesOf(catalogue, area).length;
    const choice = await p.select<TopChoice>({
      message: "What would you like to explore?",
      options: [
        ...AREAS.map((area) => ({
          value: area.id,
          label: area.label,
          hint: count(area.id) ? `${plural(count(area.id), "stage")} in ${area.folder}/` : "none yet",
          disabled: count(area.id) === 0,
        })),
        { value: "demo", label: "Guided demo", hint: "echo server, optional proxy, a client; then everything stopped" },
        { value: "tools", label: "Tools", hint: "what changed between stages, about a stage, tests" },
        { value: "exit", label: "Exit" },
      ],
      ...(remembered.top ? { initialValue: remembered.top } : {}),
    });
    if (p.isCancel(choice) || choice === "exit") break;
    remembered.top = choice;
    if (choice === "demo") await guidedDemo(catalogue);
    else if (choice === "tools") await tools(catalogue);
    else await runStage(catalogue, choice);
  }
  p.outro("Bye.");
  process.exit(0);
}

async function main(): Promise<void> {
  let config;
  try {
    config = parseCommandLine(process.argv.slice(2));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`error: ${error.message} (see --help)`);
    process.exit(2);
  }
  if (config === "help") return void process.stdout.write(HELP);
  // A prompt needs a terminal on both sides: without one it would wait forever (stdin) or draw into a file (stdout).
  if (config.list || !process.stdin.isTTY || !process.stdout.isTTY) {
    process.stdout.write(`${await catalogueListing(loadCatalogue(config.root), pc)}\n`);
    return;
  }
  await interactive(config.root);
}

try {
  await main();
} catch (error) {
  console.error(`error: ${(error as Error).message}`);
  process.exit(1);
}
