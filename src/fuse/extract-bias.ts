/**
 * extract's `biasDiff` (ComfyUI's LoraSave `bias_diff`): the 1-D parameters a LoRA's factors cannot carry, stored
 * as full differences tuned − base in f32 — the bias of every extracted module (written `<module>.diff_b` beside its
 * factors) and the weight and bias of every norm layer of the extracted components (`<norm>.diff` / `<norm>.diff_b`).
 * ComfyUI's loader and lora-mix read, fuse and verify both. A changed norm layer is stored whole (weight and bias,
 * the unchanged one as zeros, as ComfyUI's saver writes its pairs). Identical tensors are left out and counted; the base
 * tensors carried this way are no longer reported as differing outside the LoRA.
 */
import { ArchError } from '../core/errors.js';
import type { NormSource } from '../formats/encode.js';
import type { Layout, ModuleEntry, StateDictEntry } from '../layout/types.js';
import type { SafetensorsFile } from '../safetensors/read.js';
import { locateStateDict, readWeightRows, type OpenedBase } from './base.js';

export interface BiasDiffs {
  /** Module path → its bias difference [out] (only the ones that differ). */
  readonly biases: ReadonlyMap<string, Float32Array>;
  /** Norm layers with a differing weight or bias, in layout order. */
  readonly norms: readonly NormSource[];
  /** `rel\0key` of the base tensors compared here (carried, or identical). */
  readonly used: readonly string[];
  /** Module biases stored, norm layers stored (weight and bias), identical tensors left out. */
  readonly counts: { biases: number; norms: number; identical: number };
}

interface Found {
  readonly file: SafetensorsFile;
  readonly key: string;
  readonly rows?: readonly [number, number];
  readonly rel: string;
}

function find(opened: OpenedBase, s: StateDictEntry): Found | null {
  for (const f of opened.files) {
    const l = locateStateDict(opened, f, s);
    if (l && f.file.has(l.key)) return { file: f.file, key: l.key, ...(l.rows ? { rows: l.rows } : {}), rel: f.rel };
  }
  return null;
}

/** tuned − base of one state-dict tensor: null when either checkpoint lacks it; values null when identical. */
async function difference(
  base: OpenedBase,
  tuned: OpenedBase,
  s: StateDictEntry,
): Promise<{ values: Float32Array | null; used: string } | null> {
  const b = find(base, s);
  const t = find(tuned, s);
  if (!b || !t) return null;
  const expected = s.shape.reduce((a, d) => a * d, 1);
  const vb = readWeightRows(await b.file.read(b.key), b, `${base.name}: '${b.key}'`);
  const vt = readWeightRows(await t.file.read(t.key), t, `${tuned.name}: '${t.key}'`);
  if (vb.length !== expected || vt.length !== expected) {
    throw new ArchError(
      'ARCH_MISMATCH',
      `extract: '${s.diffusersKey}' (${s.component}) holds ${vb.length} value(s) in the base ('${b.key}') and ` +
        `${vt.length} in ${tuned.name} ('${t.key}'); expected ${expected}`,
      { key: s.diffusersKey, expected, found: vt.length },
    );
  }
  const d = new Float32Array(expected);
  let any = false;
  for (let i = 0; i < expected; i++) {
    const x = (vt[i] as number) - (vb[i] as number);
    d[i] = x;
    if (x !== 0) any = true;
  }
  return { values: any ? d : null, used: `${b.rel}\0${b.key}` };
}

function stateDictIndex(layout: Layout): Map<string, StateDictEntry> {
  return new Map(layout.stateDict.map((s) => [`${s.component}/${s.diffusersKey}`, s]));
}

/**
 * The bias differences of `modules` (the extracted ones) and the norm differences of the UNet (and the text
 * encoders with `textEncoders`), base and tuned read tensor by tensor (1-D: small).
 */
export async function biasDiffs(
  base: OpenedBase,
  tuned: OpenedBase,
  modules: readonly ModuleEntry[],
  textEncoders: boolean,
): Promise<BiasDiffs> {
  const layout = base.detection.layout;
  const index = stateDictIndex(layout);
  const biases = new Map<string, Float32Array>();
  const used: string[] = [];
  const counts = { biases: 0, norms: 0, identical: 0 };
  for (const m of modules) {
    const s = index.get(`${m.component}/${m.localPath}.bias`);
    const d = s ? await difference(base, tuned, s) : null;
    if (!d) continue;
    used.push(d.used);
    if (d.values) {
      biases.set(m.path, d.values);
      counts.biases++;
    } else counts.identical++;
  }
  const norms: NormSource[] = [];
  for (const n of layout.norms) {
    if (n.component !== 'unet' && !textEncoders) continue;
    const w = await difference(base, tuned, n.weight);
    const b = n.bias ? await difference(base, tuned, n.bias) : null;
    for (const d of [w, b]) if (d) used.push(d.used);
    if (!w?.values && !b?.values) {
      counts.identical += (w ? 1 : 0) + (b ? 1 : 0);
      continue;
    }
    // A changed norm is stored whole, weight and bias (an unchanged one as zeros), as ComfyUI's saver writes them.
    const zeros = new Float32Array(n.channels);
    const wv = w?.values ?? zeros;
    const bv = b?.values ?? zeros;
    counts.norms++;
    norms.push({ entry: n, ...(w ? { weight: () => wv } : {}), ...(b ? { bias: () => bv } : {}) });
  }
  return { biases, norms, used, counts };
}
