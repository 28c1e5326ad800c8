import type { Command } from '../context.js';
import { analyzeCommand } from './analyze.js';
import { convertCommand } from './convert.js';
import { demoCommand } from './demo.js';
import { extractCommand } from './extract.js';
import { fuseCommand } from './fuse.js';
import { unfuseCommand } from './unfuse.js';
import { inspectCommand } from './inspect.js';
import { layoutCommand } from './layout.js';
import { mergeCommand } from './merge.js';
import { resizeCommand } from './resize.js';
import { sampleCommand } from './sample.js';
import { verifyCommand } from './verify.js';

/** Every CLI command, in the order `lora-mix --help` lists them. Add one line per command module. */
export const COMMANDS: readonly Command[] = [
  inspectCommand,
  convertCommand,
  mergeCommand,
  resizeCommand,
  fuseCommand,
  unfuseCommand,
  extractCommand,
  analyzeCommand,
  verifyCommand,
  layoutCommand,
  sampleCommand,
  demoCommand,
];
