/**
 * Unfuse of the base-dependent kinds (DoRA, GLoRA). Fusing added w·Δ(W0) with a delta that depends on the original
 * weight W0, so subtracting the delta computed from the fused weight would be wrong. Instead, for every such module
 * W0 is recovered from the fused weight F (minus the base-free terms of the other inputs on the same module) by the
 * kind's inverse (src/lora/terms: the per-channel norm equation for DoRA, a Woodbury solve for GLoRA), and the term
 * is replaced by the dense term D = (F' − W0)/w, so the ordinary unfuse (the fuse pipeline at −w) writes W0 with the
 * one rounding. Inputs without base-dependent terms are returned as given.
 */
import ndarray from 'ndarray';
import { ArchError, LoraError } from '../core/errors.js';
import { decodeLora, inspectLora, loadLora, planLora } from '../formats/index.js';
import { compileWeight, type MergeWeight } from '../lora/merge.js';
import { baseFromFused, termDelta, termNeedsBase, termShape } from '../lora/terms/index.js';
import type { Lora, Term } from '../lora/types.js';
import { isLora } from '../lora/validate.js';
import { SafetensorsFile } from '../safetensors/read.js';
import { baseWeight } from './base-terms.js';
import { openBase } from './fuse.js';
import type { OpenedBase } from './base.js';
import type { BaseInput, LoraInput } from './types.js';

const needsBaseKind = (kind: string): boolean => kind === 'dora' || kind === 'glora';

async function hasBaseDependent(input: LoraInput, allowUnmatched: boolean): Promise<boolean> {
  if (isLora(input)) {
    for (const t of (input as Lora<Term>).modules.values()) if (termNeedsBase(t)) return true;
    return false;
  }
  const plan =
    input instanceof SafetensorsFile
      ? await planLora(input, { allowUnmatched })
      : await inspectLora(input as string, { allowUnmatched });
  return plan.modules.some((m) => needsBaseKind(m.kind));
}

async function asLora(input: LoraInput, opened: OpenedBase, allowUnmatched: boolean): Promise<Lora<Term>> {
  if (isLora(input)) return input as Lora<Term>;
  const { arch, size } = opened.detection;
  const load = (options: { arch?: typeof arch; size?: typeof size; allowUnmatched: boolean }) =>
    input instanceof SafetensorsFile ? decodeLora(input, options) : loadLora(input as string, options);
  const lora = await load({ allowUnmatched });
  if (lora.arch === arch && lora.size === size) return lora;
  if (allowUnmatched && lora.arch === 'sdxl' && arch === 'ssd1b' && lora.size === size) {
    return load({ arch, size, allowUnmatched: true });
  }
  throw new ArchError(
    'ARCH_MISMATCH',
    `unfuse: a LoRA for ${lora.arch}${lora.size === 'tiny' ? ' (tiny)' : ''} cannot be taken out of ${opened.name}, which is ${arch}${size === 'tiny' ? ' (tiny)' : ''}`,
    { file: opened.name, expected: arch, found: lora.arch },
  );
}

/**
 * The inputs with every DoRA / GLoRA term replaced by the dense term that unfusing at −w turns into the recovered
 * base. LORA_CANNOT_UNFUSE when the fused weight does not determine the base (see baseFromFused), or when two
 * base-dependent terms change one module. `notes` receives the warnings of baseFromFused (DoRA channels with a
 * second solution); `recovered` the paths whose W0 came from an inverse.
 */
export async function resolveFusedBases(
  fused: BaseInput,
  loras: readonly LoraInput[],
  weights: readonly MergeWeight[],
  allowUnmatched: boolean,
  notes: string[] = [],
  recovered: Set<string> = new Set(),
): Promise<LoraInput[]> {
  const flags = await Promise.all(loras.map((l) => hasBaseDependent(l, allowUnmatched)));
  if (!flags.some(Boolean)) return [...loras];
  const opened = await openBase(fused);
  try {
    const all = await Promise.all(loras.map((l) => asLora(l, opened, allowUnmatched)));
    const weightOf = all.map((l, i) =>
      compileWeight(
        weights[i] ?? 1,
        l.arch,
        l.size,
        typeof loras[i] === 'string' ? String(loras[i]) : `input ${i + 1}`,
        'unfuse',
      ),
    );
    const replaced = all.map(() => new Map<string, Term>());
    const paths = new Set<string>();
    for (const l of all) for (const [p, t] of l.modules) if (termNeedsBase(t)) paths.add(p);
    for (const path of paths) {
      const owners = all.flatMap((l, i) => {
        const t = l.modules.get(path);
        return t && termNeedsBase(t) && (weightOf[i]?.(path) ?? 0) !== 0 ? [i] : [];
      });
      const owner = owners[0];
      if (owner === undefined) continue;
      if (owners.length > 1) {
        throw new LoraError(
          'LORA_CANNOT_UNFUSE',
          `module '${path}': ${owners.length} inputs put a base-dependent term (DoRA / GLoRA) on it; the fused weight then mixes their deltas of W0 and unfuse cannot separate them; unfuse needs the original checkpoint`,
          { key: path, found: owners.length },
        );
      }
      const lora = all[owner]!;
      const term = lora.modules.get(path)!;
      const w = weightOf[owner]!(path);
      const fusedWeight = await baseWeight(opened, lora, path);
      // F' = F − Σ w_j·Δ_j over the other inputs' (base-free) terms on this module
      const rest = Float64Array.from(fusedWeight);
      all.forEach((other, j) => {
        const t = other.modules.get(path);
        const wj = weightOf[j]!(path);
        if (j === owner || !t || wj === 0) return;
        const d = termDelta(t, path);
        for (let i = 0; i < rest.length; i++) rest[i] = (rest[i] ?? 0) - wj * (d[i] ?? 0);
      });
      const w0 = baseFromFused(term, path, rest, w, notes);
      recovered.add(path);
      const delta = new Float32Array(w0.length);
      for (let i = 0; i < delta.length; i++) delta[i] = ((rest[i] ?? 0) - (w0[i] ?? 0)) / w;
      const shape = termShape(term, path);
      const bias = 'bias' in term ? term.bias : undefined;
      replaced[owner]!.set(path, {
        kind: 'dense',
        shape,
        delta: ndarray(delta, [...shape]),
        ...(bias ? { bias } : {}),
      });
    }
    return loras.map((input, i) => {
      const changes = replaced[i]!;
      if (changes.size === 0) return input;
      const lora = all[i]!;
      const modules = new Map<string, Term>();
      for (const [p, t] of lora.modules) modules.set(p, changes.get(p) ?? t);
      return { ...lora, modules };
    });
  } finally {
    await opened.close();
  }
}
