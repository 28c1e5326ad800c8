/** What a CLI command needs from the outside world; tests pass a fake one and read what was printed. */
export interface CliContext {
  /** Write to standard output (results, tables, JSON). */
  out(text: string): void;
  /** Write to standard error (progress, warnings). */
  err(text: string): void;
  /** True when stderr is a terminal: progress bars redraw in place; otherwise they print occasional lines. */
  readonly isTTY: boolean;
  /** Working directory for relative paths. */
  readonly cwd: string;
}

export interface Command {
  readonly name: string;
  /** One line for the command list in `lora-mix --help`. */
  readonly summary: string;
  /** Full help text for `lora-mix <name> --help`: usage, options, examples. */
  readonly help: string;
  /** Run with the arguments after the command name; resolve to the exit code. Throw LoraMixError on failure. */
  run(argv: string[], ctx: CliContext): Promise<number>;
}
