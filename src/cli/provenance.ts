/**
 * The provenance every CLI command that writes a file records (src/core/provenance.ts): each LoRA's size and
 * SHA-256, the base's size and header hash, the weights as given and the options.
 *
 * The LoRAs' SHA-256 comes from the command's own reads where it can (`tapReads`, src/node/provenance.ts): merge and
 * convert load their inputs before writing, so the hashes are complete by then; fuse and unfuse read the factors
 * while the output streams, so they write a placeholder of the same length and rewrite the header at the end
 * (`deferredProvenance`). Either way each LoRA file is read once.
 */
import * as path from 'node:path';
import { fileNameOf, type ProvenanceInput, provenanceMetadata, weightLabel } from '../core/provenance.js';
import type { MergeWeight } from '../lora/index.js';
import { baseProvenance, loraProvenance, sha256File } from '../node/provenance.js';

export { weightLabel };
export { tapReads, type ReadTap } from '../node/provenance.js';

type LoraArg = { readonly file: string; readonly weight?: MergeWeight };
type CheckpointArg = { readonly file: string; readonly role: string };

/**
 * The `__metadata__` entry for a file written by `command`. An input inside `cwd` is recorded by its path relative
 * to it; any other by its file name alone: a written file never records an absolute path or parent folders.
 * `sha256` gives each LoRA's hash (default: a read of the file; a ReadTap's from the command's own reads).
 */
export async function cliProvenance(
  command: string,
  cwd: string,
  loras: readonly LoraArg[],
  options: Readonly<Record<string, unknown>>,
  checkpoints: readonly CheckpointArg[] = [],
  sha256: (file: string) => Promise<string> = sha256File,
): Promise<Record<string, string>> {
  const name = (p: string): string => {
    const rel = path.relative(cwd, p);
    return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : fileNameOf(p);
  };
  const inputs: ProvenanceInput[] = [];
  for (const c of checkpoints) inputs.push({ ...(await baseProvenance(c.file, name(c.file))), role: c.role });
  for (const l of loras) inputs.push(await loraProvenance(l.file, name(l.file), weightLabel(l.weight), sha256));
  return provenanceMetadata(command, inputs, options);
}

/** Written in place of a SHA-256 that is not known yet: as long as the real one, so the header keeps its length. */
const PENDING_SHA256 = '0'.repeat(64);

/**
 * Provenance for a command that streams its output while it reads the LoRAs (fuse, unfuse): `metadata` to write
 * first, with placeholders for the LoRAs' hashes, and `late` for the same record with the hashes `sha256` gives at
 * the end (FuseOptions.lateMetadata rewrites the header with it).
 */
export async function deferredProvenance(
  command: string,
  cwd: string,
  loras: readonly LoraArg[],
  options: Readonly<Record<string, unknown>>,
  checkpoints: readonly CheckpointArg[],
  sha256: (file: string) => Promise<string>,
): Promise<{ metadata: Record<string, string>; late: () => Promise<Record<string, string>> }> {
  const metadata = await cliProvenance(command, cwd, loras, options, checkpoints, async () => PENDING_SHA256);
  return { metadata, late: () => cliProvenance(command, cwd, loras, options, checkpoints, sha256) };
}
