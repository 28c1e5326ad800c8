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
import { decodeLora, inspectLora, openPath, planLora } from '../formats/index.js';
import { readPlannedTerm } from '../formats/decode.js';
import { compileWeight, type MergeWeight } from '../lora/merge.js';
import { baseFromFused, termDelta, termNeedsBase, termShape } from '../lora/terms/index.js';
import type { Lora, Term } from '../lora/types.js';
import { isLora } from '../lora/validate.js';
import { parseSafetensors, SafetensorsFile } from '../safetensors/read.js';
import type { ByteSource } from '../core/bytes.js';
import { baseWeight } from './base-terms.js';
import { openBase } from './fuse.js';
import type { OpenedBase } from './base.js';
import type { BaseInput, LoraInput } from './types.js';

const needsBaseKind = (kind: string): boolean =>
  kind === 'dora' || kind === 'glora' || kind === 'oft' || kind === 'boft';

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

/**
 * One input as unfuse reads it: a LoRA in memory as it is; a file through its plan (the header), so that only the
 * modules asked for are read. `decode` loads the whole LoRA (for the inputs whose terms get replaced).
 */
interface Source {
  readonly arch: Lora['arch'];
  readonly size: Lora['size'];
  /** Module paths with a base-dependent term. */
  readonly needingBase: readonly string[];
  term(path: string): Promise<Term | undefined>;
  decode(): Promise<Lora<Term>>;
  close(): Promise<void>;
}

function memorySource(lora: Lora<Term>): Source {
  return {
    arch: lora.arch,
    size: lora.size,
    needingBase: [...lora.modules].filter(([, t]) => termNeedsBase(t)).map(([p]) => p),
    term: async (path) => lora.modules.get(path),
    decode: async () => lora,
    close: async () => undefined,
  };
}

async function fileSource(input: LoraInput, opened: OpenedBase, allowUnmatched: boolean): Promise<Source> {
  const { arch, size } = opened.detection;
  const owned = typeof input === 'string';
  const file =
    input instanceof SafetensorsFile
      ? input
      : typeof input === 'string'
        ? await openPath(input)
        : await parseSafetensors(input as ByteSource);
  try {
    let options: { arch?: typeof arch; size?: typeof size; allowUnmatched: boolean } = { allowUnmatched };
    let plan = await planLora(file, options);
    if (plan.arch !== arch || plan.size !== size) {
      if (allowUnmatched && plan.arch === 'sdxl' && arch === 'ssd1b' && plan.size === size) {
        options = { arch, size, allowUnmatched: true };
        plan = await planLora(file, options);
      } else {
        throw new ArchError(
          'ARCH_MISMATCH',
          `unfuse: a LoRA for ${plan.arch}${plan.size === 'tiny' ? ' (tiny)' : ''} cannot be taken out of ${opened.name}, which is ${arch}${size === 'tiny' ? ' (tiny)' : ''}`,
          { file: opened.name, expected: arch, found: plan.arch },
        );
      }
    }
    const byPath = new Map(plan.modules.map((m) => [m.entry.path, m]));
    return {
      arch: plan.arch,
      size: plan.size,
      needingBase: plan.modules.filter((m) => needsBaseKind(m.kind)).map((m) => m.entry.path),
      async term(path) {
        const m = byPath.get(path);
        return m ? readPlannedTerm(file, m) : undefined;
      },
      decode: () => decodeLora(file, options),
      close: async () => {
        if (owned) await file.close();
      },
    };
  } catch (e) {
    if (owned) await file.close().catch(() => undefined);
    throw e;
  }
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
  const sources: Source[] = [];
  try {
    // Headers only: the inputs' factors are read for the modules with a base-dependent term, and only the
    // inputs whose terms are replaced are decoded whole.
    for (const l of loras)
      sources.push(isLora(l) ? memorySource(l as Lora<Term>) : await fileSource(l, opened, allowUnmatched));
    const weightOf = sources.map((l, i) =>
      compileWeight(
        weights[i] ?? 1,
        l.arch,
        l.size,
        typeof loras[i] === 'string' ? String(loras[i]) : `input ${i + 1}`,
        'unfuse',
      ),
    );
    const replaced = sources.map(() => new Map<string, Term>());
    const paths = new Set<string>();
    for (const l of sources) for (const p of l.needingBase) paths.add(p);
    const terms = new Map<string, (Term | undefined)[]>();
    for (const path of paths) terms.set(path, await Promise.all(sources.map((l) => l.term(path))));
    for (const path of paths) {
      const here = terms.get(path)!;
      const owners = here.flatMap((t, i) => (t && termNeedsBase(t) && (weightOf[i]?.(path) ?? 0) !== 0 ? [i] : []));
      const owner = owners[0];
      if (owner === undefined) continue;
      if (owners.length > 1) {
        throw new LoraError(
          'LORA_CANNOT_UNFUSE',
          `module '${path}': ${owners.length} inputs put a base-dependent term (DoRA / GLoRA) on it; the fused weight then mixes their deltas of W0 and unfuse cannot separate them; unfuse needs the original checkpoint`,
          { key: path, found: owners.length },
        );
      }
      const term = here[owner]!;
      const w = weightOf[owner]!(path);
      const fusedWeight = await baseWeight(opened, sources[owner]!, path);
      // F' = F − Σ w_j·Δ_j over the other inputs' (base-free) terms on this module
      const rest = Float64Array.from(fusedWeight);
      here.forEach((t, j) => {
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
    const out: LoraInput[] = [];
    for (let i = 0; i < loras.length; i++) {
      const changes = replaced[i]!;
      if (changes.size === 0) {
        out.push(loras[i]!);
        continue;
      }
      const lora = await sources[i]!.decode();
      const modules = new Map<string, Term>();
      for (const [p, t] of lora.modules) modules.set(p, changes.get(p) ?? t);
      out.push({ ...lora, modules });
    }
    return out;
  } finally {
    await Promise.allSettled(sources.map((x) => x.close()));
    await opened.close();
  }
}
