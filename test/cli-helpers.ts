import type { Command } from '../src/cli/context.js';
import { main } from '../src/cli/main.js';

export interface CliRun {
  code: number;
  out: string;
  err: string;
}

export interface CliRunOptions {
  /** Pretend stdout is a terminal (progress lines, colours). Default false. */
  isTTY?: boolean;
  /** The command table to dispatch on (default: every command). */
  commands?: readonly Command[];
}

/** Run the CLI in-process in `cwd`, collecting what it prints. */
export async function runCli(argv: string[], cwd: string, options: CliRunOptions = {}): Promise<CliRun> {
  let out = '';
  let err = '';
  const ctx = {
    out: (s: string) => {
      out += s;
    },
    err: (s: string) => {
      err += s;
    },
    isTTY: options.isTTY ?? false,
    cwd,
  };
  const code = options.commands ? await main(argv, ctx, options.commands) : await main(argv, ctx);
  return { code, out, err };
}
