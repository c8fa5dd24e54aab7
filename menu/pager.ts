// Showing text longer than the terminal (a stage's diff) from its top: through `less` on a terminal that has it,
// otherwise a page at a time, asking before each next page. Printed straight, it would scroll its top away.

/** The pager command for `text` on a terminal: raw colours, exit on Ctrl-C, quit at once if it fits one screen. */
export function lessCommand(less: string): string[] {
  return [less, "-R", "-K", "-F"];
}

/** `text` cut into pages of `height` lines (at least 1); a final newline does not make an empty page. */
export function pages(text: string, height: number): string[][] {
  const lines = text.replace(/\n$/, "").split("\n");
  const size = Math.max(1, height);
  const out: string[][] = [];
  for (let start = 0; start < lines.length; start += size) out.push(lines.slice(start, start + size));
  return out;
}

/**
 * The pager without `less`: prints a page of `height` lines, then asks `more(linesLeft)` before the next one.
 * Returns how many lines were shown.
 */
export async function pageThrough(
  text: string,
  height: number,
  print: (lines: string[]) => void,
  more: (linesLeft: number) => Promise<boolean>,
): Promise<number> {
  const all = pages(text, height);
  let shown = 0;
  for (const [index, page] of all.entries()) {
    print(page);
    shown += page.length;
    const left = all.slice(index + 1).reduce((sum, next) => sum + next.length, 0);
    if (left > 0 && !(await more(left))) break;
  }
  return shown;
}
