/**
 * The provenance every CLI command that writes a file records (src/core/provenance.ts): each LoRA's size and
 * SHA-256, the base's size and header hash, the weights as given and the options.
 */
import * as path from 'node:path';
import { fileNameOf, type ProvenanceInput, provenanceMetadata, weightLabel } from '../core/provenance.js';
import type { MergeWeight } from '../lora/index.js';
import { baseProvenance, loraProvenance } from '../node/provenance.js';

export { weightLabel };

/**
 * The `__metadata__` entry for a file written by `command`. An input inside `cwd` is recorded by its path relative
 * to it; any other by its file name alone: a written file never records an absolute path or parent folders.
 */
export async function cliProvenance(
  command: string,
  cwd: string,
  loras: readonly { readonly file: string; readonly weight?: MergeWeight }[],
  options: Readonly<Record<string, unknown>>,
  checkpoints: readonly { readonly file: string; readonly role: string }[] = [],
): Promise<Record<string, string>> {
  const name = (p: string): string => {
    const rel = path.relative(cwd, p);
    return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : fileNameOf(p);
  };
  const inputs: ProvenanceInput[] = [];
  for (const c of checkpoints) inputs.push({ ...(await baseProvenance(c.file, name(c.file))), role: c.role });
  for (const l of loras) inputs.push(await loraProvenance(l.file, name(l.file), weightLabel(l.weight)));
  return provenanceMetadata(command, inputs, options);
}
