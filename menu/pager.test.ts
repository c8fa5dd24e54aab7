// The pager's arithmetic (the less path is driven end to end in menu.test.ts).

import { expect, test } from "bun:test";
import { lessCommand, pages, pageThrough } from "./pager.ts";

const text = (count: number): string => Array.from({ length: count }, (_, i) => `line ${i + 1}`).join("\n") + "\n";

test("pages: whole pages of the height, the rest on the last; a final newline adds no page", () => {
  expect(pages(text(5), 2)).toEqual([["line 1", "line 2"], ["line 3", "line 4"], ["line 5"]]);
  expect(pages(text(4), 2)).toHaveLength(2);
  expect(pages(text(3), 0)).toEqual([["line 1"], ["line 2"], ["line 3"]]); // a terminal too small still pages
});

test("without less: a page, then asks before each next one, saying how many lines are left; no stops it", async () => {
  const printed: string[][] = [];
  const asked: number[] = [];
  const answers = [true, false];
  const shown = await pageThrough(
    text(10),
    3,
    (page) => printed.push(page),
    async (left) => {
      asked.push(left);
      return answers.shift()!;
    },
  );
  expect(printed).toEqual([
    ["line 1", "line 2", "line 3"],
    ["line 4", "line 5", "line 6"],
  ]);
  expect(asked).toEqual([7, 4]);
  expect(shown).toBe(6);
  let questions = 0;
  expect(
    await pageThrough(
      text(3),
      3,
      () => {},
      async () => Boolean(++questions),
    ),
  ).toBe(3);
  expect(questions).toBe(0); // it fits: nothing to ask
});

test("less keeps colours, leaves on Ctrl-C, and does not page what fits on one screen", () => {
  expect(lessCommand("/usr/bin/less")).toEqual(["/usr/bin/less", "-R", "-K", "-F"]);
});
