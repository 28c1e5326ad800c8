/**
 * The page's state rules, as pure functions (no DOM): which request a result belongs to, which files are
 * duplicates, and how a mix of architectures is explained. app.ts applies them; test/web-state.test.ts checks them.
 */
import { LoraMixError } from '../../src/core/errors.js';
import { parseComponentStrengths, type ComponentStrengths } from '../../src/lora/components.js';
import type { MergeRequest } from './protocol.js';

/** What identifies a picked file without reading it: name, size and modification time. */
export interface FileIdentity {
  readonly name: string;
  readonly size: number;
  readonly lastModified: number;
}

export function fileKey(f: FileIdentity): string {
  return `${f.name}\u0000${f.size}\u0000${f.lastModified}`;
}

/**
 * For each entry (in page order), the id of the earlier entry holding the same file, or undefined: the same name,
 * size and modification time, or — once both are read — the same content (SHA-256) under another name. The first
 * occurrence is the one kept, so removing it turns the next copy into the original.
 */
export function duplicatesOf<T extends { id: number; key: string; sha256?: string | undefined }>(
  entries: readonly T[],
): Map<number, number> {
  const byKey = new Map<string, number>();
  const bySha = new Map<string, number>();
  const dup = new Map<number, number>();
  for (const e of entries) {
    const original = byKey.get(e.key) ?? (e.sha256 !== undefined ? bySha.get(e.sha256) : undefined);
    if (original !== undefined) dup.set(e.id, original);
    const kept = original ?? e.id;
    if (!byKey.has(e.key)) byKey.set(e.key, kept);
    if (e.sha256 !== undefined && !bySha.has(e.sha256)) bySha.set(e.sha256, kept);
  }
  return dup;
}

/**
 * The identity of a merge request: inputs (in order, with weights and block weights) and every option. A result is
 * offered only while the page would send the same request again; the file name is not part of it.
 */
export function requestKey(request: Omit<MergeRequest, 'fileName'> & { fileName?: string }): string {
  return JSON.stringify({
    inputs: request.inputs.map((i) => [i.id, i.weight, i.blocks ?? '', i.components ?? null]),
    rank: request.rank ?? null,
    method: request.method ?? 'concat',
    params: Object.entries(request.params ?? {}).sort(([a], [b]) => (a < b ? -1 : 1)),
    blocks: request.blocks ?? '',
    format: request.format,
    dtype: request.dtype,
  });
}

export const ARCH_NAMES: Readonly<Record<string, string>> = { sd15: 'SD 1.5', sdxl: 'SDXL', ssd1b: 'SSD-1B' };

export function archName(arch: string, size: string): string {
  return `${ARCH_NAMES[arch] ?? arch}${size === 'tiny' ? ' (tiny test layout)' : ''}`;
}

export interface ArchConflict {
  /** One sentence naming every file and its architecture. */
  readonly message: string;
  /** Ids of the files outside the largest group (the ones to remove, most likely). */
  readonly odd: readonly number[];
}

/**
 * When the loaded files are for more than one architecture: a message that names each file with its architecture,
 * and the files outside the largest group (ties: the group of the first file is kept).
 */
export function archConflict(
  loaded: readonly { id: number; fileName: string; arch: string; size: string }[],
): ArchConflict | null {
  const groups = new Map<string, { label: string; files: { id: number; fileName: string }[] }>();
  for (const l of loaded) {
    const k = `${l.arch}/${l.size}`;
    const g = groups.get(k) ?? { label: archName(l.arch, l.size), files: [] };
    g.files.push({ id: l.id, fileName: l.fileName });
    groups.set(k, g);
  }
  if (groups.size < 2) return null;
  const list = [...groups.values()];
  let keep = list[0];
  for (const g of list) if (keep && g.files.length > keep.files.length) keep = g;
  const parts = list.map(
    (g) => `${g.files.map((f) => f.fileName).join(', ')} ${g.files.length === 1 ? 'is' : 'are'} ${g.label}`,
  );
  return {
    message:
      `These LoRAs are for different architectures: ${parts.join('; ')}. ` +
      'A merge adds updates to the same model, so all inputs must be for one architecture — remove the others.',
    odd: list.filter((g) => g !== keep).flatMap((g) => g.files.map((f) => f.id)),
  };
}

/** Parse a weight field: a finite number, or undefined. */
export function parseWeight(text: string): number | undefined {
  const t = text.trim();
  if (t === '') return undefined;
  const n = Number(t);
  return Number.isFinite(n) ? n : undefined;
}

/**
 * Parse a weight field as the CLI reads the part after FILE: — a number (every component), or per-component
 * strengths `unet=0.8,te=0.5` (te1=/te2= for SDXL's two text encoders; components not named keep 1).
 */
export function parseWeightField(
  text: string,
): { weight: number; components?: ComponentStrengths } | { error: string } {
  const n = parseWeight(text);
  if (n !== undefined) return { weight: n };
  try {
    const components = parseComponentStrengths(text);
    if (components) return { weight: 1, components };
  } catch (e) {
    return { error: e instanceof LoraMixError ? `${e.code} — ${e.message}` : String(e) };
  }
  return { error: `a weight is a number (0.8) or component strengths (unet=0.8,te=0.5), found "${text.trim()}"` };
}

/** Parse the target-rank field: undefined for empty (exact), a whole number ≥ 1, or an error text. */
export function parseRank(text: string): { rank?: number; error?: string } {
  const t = text.trim();
  if (t === '') return {};
  const n = Number(t);
  if (!Number.isInteger(n) || n < 1) return { error: `target rank must be a whole number ≥ 1, found "${t}"` };
  return { rank: n };
}

/** Whole percent of done/total, clamped to 0…100 (0 for an empty total). */
export function percent(done: number, total: number): number {
  if (!(total > 0)) return 0;
  return Math.max(0, Math.min(100, Math.floor((100 * done) / total)));
}
