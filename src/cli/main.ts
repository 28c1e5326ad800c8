import { LoraMixError } from '../core/errors.js';
import { EXIT, exitCodeFor } from './exit.js';
import type { CliContext, Command } from './context.js';
import { COMMANDS } from './commands/index.js';
import { VERSION } from '../core/version.js';
import { installNodeHost } from '../node/install.js';

export { EXIT, exitCodeFor };

// The CLI runs in Node: paths, folders and worker threads everywhere.
installNodeHost();

function overview(commands: readonly Command[]): string {
  const width = Math.max(...commands.map((c) => c.name.length), 8);
  return [
    `lora-mix ${VERSION} — exact LoRA arithmetic for Stable Diffusion checkpoints (SD1.5, SSD-1B, SDXL)`,
    '',
    'Usage: lora-mix <command> [options]',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Global options:',
    '  -h, --help     show help (also: lora-mix <command> --help)',
    '  --version      print the version',
    '  --debug        print stack traces on errors',
    '',
    'Weights are written after the file: lcm.safetensors:1.0 style.safetensors:0.8',
    'Run `lora-mix <command> --help` for the options and examples of each command.',
  ].join('\n');
}

/** Run the CLI; resolves to the process exit code (EXIT: 0 ok, 1 input, 2 usage, 3 I/O, 4 arithmetic, 5 fuse, 6 sampler, 70 internal). */
export async function main(argv: string[], ctx: CliContext, commands: readonly Command[] = COMMANDS): Promise<number> {
  const debug = argv.includes('--debug');
  const args = argv.filter((a) => a !== '--debug');
  const first = args[0];
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    const target = first === 'help' ? commands.find((c) => c.name === args[1]) : undefined;
    ctx.out(`${target ? target.help : overview(commands)}\n`);
    return first === undefined ? EXIT.usage : EXIT.ok;
  }
  if (first === '--version' || first === '-v') {
    ctx.out(`${VERSION}\n`);
    return 0;
  }
  const command = commands.find((c) => c.name === first);
  if (!command) {
    ctx.err(`lora-mix: unknown command '${first}'. Commands: ${commands.map((c) => c.name).join(', ')}.\n`);
    return EXIT.usage;
  }
  const rest = args.slice(1);
  if (rest.includes('--help') || rest.includes('-h')) {
    ctx.out(`${command.help}\n`);
    return 0;
  }
  try {
    return await command.run(rest, ctx);
  } catch (e) {
    if (e instanceof LoraMixError) {
      ctx.err(`lora-mix ${command.name}: error ${e.code}: ${e.message}\n`);
      if (debug && e.stack) ctx.err(`${e.stack}\n`);
      return exitCodeFor(e);
    }
    const err = e as NodeJS.ErrnoException;
    if (err && typeof err.code === 'string' && typeof err.message === 'string' && !debug) {
      ctx.err(`lora-mix ${command.name}: ${err.code}: ${err.message}\n`);
      return exitCodeFor(e);
    }
    ctx.err(`lora-mix ${command.name}: unexpected internal error: ${err?.message ?? String(e)}\n`);
    if (err?.stack) ctx.err(`${debug ? err.stack : 'Run again with --debug for the stack trace; please report it.'}\n`);
    return exitCodeFor(e);
  }
}
