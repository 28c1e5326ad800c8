/**
 * `--prompt "<lora:…>" | --comfy-workflow FILE` with `--lora-dir DIR` for merge and fuse: the runtime stack read
 * into input files and per-component weights equal to what the UI applies (docs/methods.md, "Runtime stacks").
 */
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { IoError, UsageError } from '../core/errors.js';
import { loadLora } from '../formats/index.js';
import { parseComfyWorkflowText, parsePromptStack, type StackEntry } from '../formats/stack.js';
import { lbwBlocks } from '../lora/lbw.js';
import type { MergeWeight } from '../lora/merge.js';
import { loraDirectory } from '../node/lora-dir.js';

export const STACK_OPTIONS = {
  prompt: { type: 'string' },
  'comfy-workflow': { type: 'string' },
  'lora-dir': { type: 'string' },
} as const;

export const STACK_HELP = `  --prompt TEXT           the <lora:NAME:te:unet> tags of an A1111 prompt (named te= unet= lbw= too); the
                          LoRAs are looked up by file name (or ss_output_name) under --lora-dir
  --comfy-workflow FILE   the LoraLoader / LoraLoaderModelOnly chain of a ComfyUI workflow (UI or API JSON):
                          strength_model → UNet, strength_clip → text encoders
  --lora-dir DIR          the LoRA folder the prompt or workflow refers to (searched recursively)`;

/** What a stack resolved to: one input per entry, with its weight, and what the report should say. */
export interface ResolvedStack {
  readonly paths: string[];
  readonly weights: MergeWeight[];
  readonly entries: readonly (StackEntry & { readonly file: string })[];
  readonly warnings: string[];
  readonly source: string;
}

/** The weight an entry applies: a plain number when UNet and text encoders agree and no block weights are given. */
async function weightOf(entry: StackEntry, file: string): Promise<MergeWeight> {
  if (entry.lbw === undefined)
    return entry.unet === entry.te ? entry.unet : { weight: 1, unet: entry.unet, te: entry.te };
  const { arch } = await loadLora(file);
  return { weight: 1, unet: entry.unet, te: entry.te, blocks: lbwBlocks(entry.lbw, arch, entry.origin) };
}

/** null when neither --prompt nor --comfy-workflow is given. */
export async function stackArgs(
  command: string,
  values: Record<string, unknown>,
  positionals: readonly string[],
  cwd: string,
): Promise<ResolvedStack | null> {
  const prompt = values.prompt;
  const workflow = values['comfy-workflow'];
  if (prompt === undefined && workflow === undefined) {
    if (values['lora-dir'] !== undefined) {
      throw new UsageError(`${command}: --lora-dir goes with --prompt or --comfy-workflow`, 'USAGE_BAD_ARGUMENT');
    }
    return null;
  }
  if (prompt !== undefined && workflow !== undefined) {
    throw new UsageError(`${command}: give --prompt or --comfy-workflow, not both`, 'USAGE_BAD_ARGUMENT');
  }
  if (positionals.length > 0) {
    throw new UsageError(
      `${command}: the LoRAs come from the ${prompt !== undefined ? 'prompt' : 'workflow'}; drop the file arguments (${positionals.join(' ')})`,
      'USAGE_BAD_ARGUMENT',
    );
  }
  if (typeof values['lora-dir'] !== 'string' || values['lora-dir'] === '') {
    throw new UsageError(
      `${command}: --lora-dir DIR is required with --prompt / --comfy-workflow`,
      'USAGE_BAD_ARGUMENT',
    );
  }
  const dir = await loraDirectory(path.resolve(cwd, values['lora-dir']));
  let entries: StackEntry[];
  const warnings: string[] = [];
  let source: string;
  if (typeof prompt === 'string') {
    entries = parsePromptStack(prompt);
    source = 'prompt';
  } else {
    const file = path.resolve(cwd, String(workflow));
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (e) {
      throw new IoError('INPUT_NOT_FOUND', `${command}: cannot read the workflow ${file} (${(e as Error).message})`, {
        file,
      });
    }
    const parsed = parseComfyWorkflowText(text, String(workflow));
    entries = parsed.entries;
    warnings.push(...parsed.warnings);
    source = String(workflow);
  }
  const resolved: (StackEntry & { file: string })[] = [];
  for (const e of entries) {
    const file = source === 'prompt' ? await dir.byName(e.name, e.origin) : await dir.byRelativePath(e.name, e.origin);
    resolved.push({ ...e, file });
    warnings.push(...e.warnings);
  }
  const weights: MergeWeight[] = [];
  for (const e of resolved) weights.push(await weightOf(e, e.file));
  return { paths: resolved.map((e) => e.file), weights, entries: resolved, warnings, source };
}

/** Report lines: what was read and how it maps. */
export function describeStack(stack: ResolvedStack, cwd: string): string[] {
  return [
    `  read from ${stack.source}: ${stack.entries.length} LoRA(s)`,
    ...stack.entries.map(
      (e) =>
        `    ${e.origin} → ${path.relative(cwd, e.file) || e.file}: unet ${e.unet}, te ${e.te}${e.lbw ? `, lbw ${e.lbw}` : ''}${e.dyn !== undefined ? `, dyn ${e.dyn} (ignored)` : ''}`,
    ),
  ];
}
