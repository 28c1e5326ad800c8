/**
 * The provenance every CLI command that writes a file records (src/core/provenance.ts): each LoRA's size and
 * SHA-256, the base's size and header hash, the weights as given and the options.
 */
import * as path from 'node:path';
import { type ProvenanceInput, provenanceMetadata } from '../core/provenance.js';
import type { MergeWeight } from '../lora/index.js';
import { baseProvenance, loraProvenance } from '../node/provenance.js';

/** '0.8', '1 with blocks IN04=0', '0.5 (unet=1, te=0)' */
export function weightLabel(w: MergeWeight | undefined): string | undefined {
  if (w === undefined) return undefined;
  if (typeof w === 'number') return String(w);
  const { weight, blocks, ...rest } = w as { weight?: number; blocks?: unknown } & Record<string, unknown>;
  const parts = [String(weight ?? 1)];
  if (blocks !== undefined) parts.push(`blocks ${typeof blocks === 'string' ? blocks : JSON.stringify(blocks)}`);
  const comps = Object.entries(rest).filter(([, v]) => typeof v === 'number');
  if (comps.length > 0) parts.push(comps.map(([k, v]) => `${k}=${String(v)}`).join(','));
  return parts.join(' ');
}

/** The `__metadata__` entry for a file written by `command`. Paths are recorded as given, relative to `cwd`. */
export async function cliProvenance(
  command: string,
  cwd: string,
  loras: readonly { readonly file: string; readonly weight?: MergeWeight }[],
  options: Readonly<Record<string, unknown>>,
  checkpoints: readonly { readonly file: string; readonly role: string }[] = [],
): Promise<Record<string, string>> {
  const name = (p: string): string => {
    const rel = path.relative(cwd, p);
    return rel !== '' && !rel.startsWith('..') ? rel : p;
  };
  const inputs: ProvenanceInput[] = [];
  for (const c of checkpoints) inputs.push({ ...(await baseProvenance(c.file, name(c.file))), role: c.role });
  for (const l of loras) inputs.push(await loraProvenance(l.file, name(l.file), weightLabel(l.weight)));
  return provenanceMetadata(command, inputs, options);
}
