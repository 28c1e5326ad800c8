/**
 * A base checkpoint as fusion sees it: the weight files to rewrite, the detected layout, and where each layout
 * module's weight lives (file, key, and the rows of a fused q/k/v tensor).
 */
import type { CheckpointDetection } from '../layout/detect.js';
import type { Component, Layout, ModuleEntry, StateDictEntry } from '../layout/types.js';
import { decodeToF32 } from '../core/dtype.js';
import { transposeF32 } from '../lora/linalg.js';
import type { SafetensorsFile } from '../safetensors/read.js';

/** One safetensors file of the base that is rewritten into the output. */
export interface BaseWeightFile {
  readonly file: SafetensorsFile;
  /** Path of the file relative to the base folder ('unet/diffusion_pytorch_model.safetensors'); '' for a single file. */
  readonly rel: string;
  /** The folder component the file belongs to; null for a single file. */
  readonly component: Component | null;
  /**
   * Its own detection, for a single-file checkpoint inside a diffusers folder (a root checkpoint fused on request);
   * absent: the base's.
   */
  readonly detection?: CheckpointDetection;
}

/** Options for opening a base path. */
export interface OpenBaseOptions {
  /**
   * A single-file checkpoint at the root of a diffusers folder, beside the components (as the SD1.5 repository
   * has): 'omit' (default) leaves it out of the output, 'fuse' fuses it too. Either way the report says so.
   */
  readonly rootCheckpoint?: 'omit' | 'fuse';
}

export interface OpenedBase {
  /** The path or source name, for messages and reports. */
  readonly name: string;
  readonly detection: CheckpointDetection;
  readonly files: readonly BaseWeightFile[];
  /**
   * Diffusers folders (Node): the folder, the files not carried over (weights of other formats in a fused
   * component, root checkpoints left out), what the report should say about them, and the components that hold no
   * safetensors (copied byte for byte; a LoRA that changes one is refused).
   */
  readonly folder?: {
    readonly dir: string;
    readonly skip: readonly string[];
    readonly notes: readonly string[];
    readonly unreadable: readonly { readonly component: Component; readonly files: readonly string[] }[];
  };
  close(): Promise<void>;
}

/** Where one module's weight is in one base file. */
export interface WeightLocation {
  readonly key: string;
  /** Rows [start, end) of the tensor; the whole tensor when absent. */
  readonly rows?: readonly [number, number];
  /** The tensor stores the transpose of the module's weight (OpenCLIP-G `text_projection` in a single file). */
  readonly transposed?: boolean;
}

/** The key (and rows) holding `entry`'s weight in `f`, or null when this file cannot hold it. */
export function locate(base: OpenedBase, f: BaseWeightFile, entry: ModuleEntry): WeightLocation | null {
  const d = f.detection ?? base.detection;
  if (f.component !== null) {
    return f.component === entry.component ? { key: entry.diffusersWeightKey } : null;
  }
  if (d.naming === 'diffusers-unet') {
    return entry.component === 'unet' ? { key: entry.diffusersWeightKey } : null;
  }
  if (!d.components.includes(entry.component)) return null;
  const key = d.aliases.get(entry.singleFileWeightKey) ?? entry.singleFileWeightKey;
  if (entry.singleFileRows) return { key, rows: entry.singleFileRows };
  return entry.singleFileTransposed ? { key, transposed: true } : { key };
}

const biasIndex = new WeakMap<Layout, Map<string, StateDictEntry>>();

/** The state-dict entry of a module's bias ('<component>/<localPath>.bias'), if the module has one. */
function biasEntry(layout: Layout, entry: ModuleEntry): StateDictEntry | undefined {
  let index = biasIndex.get(layout);
  if (!index) {
    index = new Map(layout.stateDict.map((s) => [`${s.component}/${s.diffusersKey}`, s]));
    biasIndex.set(layout, index);
  }
  return index.get(`${entry.component}/${entry.localPath}.bias`);
}

/**
 * The key (and rows) holding `entry`'s bias in `f` (where a PEFT bias delta lands), or null when this file cannot
 * hold it or the module has no bias in this architecture.
 */
export function locateBias(base: OpenedBase, f: BaseWeightFile, entry: ModuleEntry): WeightLocation | null {
  const d = f.detection ?? base.detection;
  const s = biasEntry(d.layout, entry);
  return s ? locateStateDict(base, f, s) : null;
}

/**
 * The key (and rows) of a state-dict tensor (a bias, a norm's weight or bias) in `f`, under the file's naming, or
 * null when this file cannot hold it.
 */
export function locateStateDict(base: OpenedBase, f: BaseWeightFile, s: StateDictEntry): WeightLocation | null {
  const d = f.detection ?? base.detection;
  if (f.component !== null) return f.component === s.component ? { key: s.diffusersKey } : null;
  if (d.naming === 'diffusers-unet') return s.component === 'unet' ? { key: s.diffusersKey } : null;
  if (!d.components.includes(s.component)) return null;
  const key = d.aliases.get(s.singleFileKey) ?? s.singleFileKey;
  return s.singleFileRows ? { key, rows: s.singleFileRows } : { key };
}

/** Why a base has no place for a module (for the unmatched list). */
export function whyAbsent(base: OpenedBase, entry: ModuleEntry): string {
  const d = base.detection;
  if (d.naming === 'diffusers-unet' && entry.component !== 'unet') {
    return `the base is a lone diffusers UNet file; it has no ${entry.component}`;
  }
  if (!d.components.includes(entry.component)) {
    return `the base checkpoint has no ${entry.component} (it holds ${d.components.join(', ')})`;
  }
  return `no tensor '${d.naming === 'single-file' ? entry.singleFileWeightKey : entry.diffusersWeightKey}' in the base`;
}

/** A module's weight found in an opened checkpoint: the file, the key, and the rows of a fused q/k/v tensor. */
export interface FoundWeight {
  readonly file: SafetensorsFile;
  readonly key: string;
  readonly rows?: readonly [number, number];
  /** The tensor stores the transpose of the module's weight. */
  readonly transposed?: boolean;
  /** Index of the file in `opened.files`. */
  readonly fileIndex: number;
}

/** Where `entry`'s weight is in any file of `opened` (null when no file holds it). */
export function findWeight(opened: OpenedBase, entry: ModuleEntry): FoundWeight | null {
  for (let i = 0; i < opened.files.length; i++) {
    const f = opened.files[i];
    if (!f) continue;
    const l = locate(opened, f, entry);
    if (l?.key !== undefined && f.file.has(l.key))
      return {
        file: f.file,
        key: l.key,
        ...(l.rows ? { rows: l.rows } : {}),
        ...(l.transposed ? { transposed: true } : {}),
        fileIndex: i,
      };
  }
  return null;
}

/** A weight's place in an opened file, as `findWeight` and `locate` give it. */
export interface WeightRowsAt {
  readonly file: Pick<SafetensorsFile, 'info'>;
  readonly key: string;
  readonly rows?: readonly [number, number];
  readonly transposed?: boolean;
}

/**
 * The f32 values of a module's weight, in the module's own orientation, from the stored bytes of its tensor: the
 * whole tensor, its rows [start, end) when the file stores several modules in one tensor (OpenCLIP-G q/k/v — a view
 * into the decoded tensor), or the transpose of a tensor the file stores transposed (OpenCLIP-G text_projection — a
 * new array).
 */
export function readWeightRows(raw: Uint8Array, at: WeightRowsAt, what: string): Float32Array {
  const info = at.file.info(at.key);
  const all = decodeToF32(info.dtype, raw, what);
  const rows = info.shape[0] ?? 1;
  const cols = rows === 0 ? 0 : info.numel / rows;
  if (at.transposed) return transposeF32(all, rows, cols);
  if (!at.rows) return all;
  return all.subarray(at.rows[0] * cols, at.rows[1] * cols);
}
