/**
 * Provenance: what a written file was made from, stored as one JSON string under `lora_mix_provenance` in its
 * `__metadata__`: the tool and version, the command, every input with its role, name, size and SHA-256 (of the
 * whole file for LoRAs; of the header bytes for a base checkpoint, which name every tensor, its dtype, shape and
 * offsets, so a 7 GB base is not read twice), the weights and the options. Built here (isomorphic); the hashes
 * come from the host (src/node/provenance.ts in Node).
 */
import { VERSION } from './version.js';

export const PROVENANCE_METADATA_KEY = 'lora_mix_provenance';

/**
 * The file (or folder) name of a path, for metadata: written files never record where their inputs lived (no
 * absolute path, no parent folders), only what they were called. Either separator; a trailing one is ignored.
 */
export function fileNameOf(p: string): string {
  const parts = p.split(/[\\/]+/).filter((x) => x !== '');
  return parts[parts.length - 1] ?? p;
}

export interface ProvenanceInput {
  /** 'lora', 'base' … */
  readonly role: string;
  /** The name as given (a path relative to where the command ran, or a file name). */
  readonly name: string;
  /** Bytes. */
  readonly size: number;
  /** Hex SHA-256 of the whole file (LoRAs). */
  readonly sha256?: string;
  /** Hex SHA-256 of the 8-byte length and the JSON header (base checkpoints). */
  readonly headerSha256?: string;
  /** The weight the input was used with, as given ('0.8', '1 with blocks IN04=0'). */
  readonly weight?: string;
}

export interface Provenance {
  readonly tool: 'lora-mix';
  readonly version: string;
  /** The operation: 'merge', 'convert', 'fuse', … */
  readonly command: string;
  readonly inputs: readonly ProvenanceInput[];
  /** The options that shaped the output (rank, dtype, format, method …), as plain JSON values. */
  readonly options: Readonly<Record<string, unknown>>;
}

/**
 * A weight as provenance records it: '0.8', '1 blocks IN04=0', '1 unet=0.8,te=0.5' — a number, or an object with
 * `weight`, optional `blocks` and per-component strengths (the shape of the library's MergeWeight).
 */
export function weightLabel(w: number | object | undefined): string | undefined {
  if (w === undefined) return undefined;
  if (typeof w === 'number') return String(w);
  const { weight, blocks, ...rest } = w as { weight?: number; blocks?: unknown } & Record<string, unknown>;
  const parts = [String(weight ?? 1)];
  if (blocks !== undefined) parts.push(`blocks ${typeof blocks === 'string' ? blocks : JSON.stringify(blocks)}`);
  const comps = Object.entries(rest).filter(([, v]) => typeof v === 'number');
  if (comps.length > 0) parts.push(comps.map(([k, v]) => `${k}=${String(v)}`).join(','));
  return parts.join(' ');
}

/** The metadata entry for a written file. */
export function provenanceMetadata(
  command: string,
  inputs: readonly ProvenanceInput[],
  options: Readonly<Record<string, unknown>> = {},
): Record<string, string> {
  const p: Provenance = { tool: 'lora-mix', version: VERSION, command, inputs, options };
  return { [PROVENANCE_METADATA_KEY]: JSON.stringify(p) };
}

/** Parse the provenance of a file's metadata; undefined when absent or not lora-mix's JSON. */
export function readProvenance(metadata: Readonly<Record<string, string>>): Provenance | undefined {
  const raw = metadata[PROVENANCE_METADATA_KEY];
  if (raw === undefined) return undefined;
  try {
    const p = JSON.parse(raw) as Partial<Provenance>;
    if (p?.tool !== 'lora-mix' || !Array.isArray(p.inputs)) return undefined;
    return p as Provenance;
  } catch {
    return undefined;
  }
}

/** Lines for `inspect`: the command and each input with its hash. */
export function formatProvenance(p: Provenance): string {
  const opts = Object.entries(p.options)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(', ');
  return [
    `made by:     lora-mix ${p.version} ${p.command}${opts ? ` (${opts})` : ''}`,
    ...p.inputs.map(
      (i) =>
        `  ${i.role.padEnd(5)} ${i.name}${i.weight !== undefined ? ` × ${i.weight}` : ''}, ${i.size.toLocaleString('en-US')} bytes, ` +
        (i.sha256 ? `sha256 ${i.sha256}` : i.headerSha256 ? `header sha256 ${i.headerSha256}` : 'no hash'),
    ),
  ].join('\n');
}
