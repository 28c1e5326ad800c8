import { assertFiniteTensor } from '../core/finite.js';
import { ArchError, ArgumentError } from '../core/errors.js';
import { isByteSource } from '../core/bytes.js';
import { ARCH_LABEL } from '../layout/archs.js';
import type { Arch, LayoutSize } from '../layout/types.js';
import { planLora, readPlannedTerm, type LoraPlan } from '../formats/decode.js';
import { openPath } from '../formats/index.js';
import { contiguousValues, moduleDims } from '../lora/delta.js';
import { compileWeight, type MergeWeight, type WeightSpec } from '../lora/merge.js';
import { describeComponents, hasComponents } from '../lora/components.js';
import { asLowRank, termDims, termKind } from '../lora/terms/index.js';
import type { F32Array, Lora, Term, TermKind } from '../lora/types.js';
import { parseSafetensors, SafetensorsFile } from '../safetensors/read.js';
import type { LoraInput } from './types.js';

/**
 * One module of one input: enough to plan, and a way to get its update. A lowRank module is fused through its
 * factors (stacked with the other inputs' into one kernel job); any other kind through its dense delta, computed
 * against the base rows in f32 (`term`).
 */
/** Hands out a Float32Array of exactly n values for a factor to be decoded into (see InputModule.factors). */
export type FactorAlloc = (n: number) => Float32Array;

export interface InputModule {
  readonly path: string;
  readonly kind: TermKind;
  /** lowRank: the rank of the factors; other kinds: 0. */
  readonly rank: number;
  /** lowRank: alpha (scale alpha / rank); other kinds: unused (their scale is part of the term). */
  readonly alpha: number;
  /** Rows of the delta (out) and length of one row (in·kh·kw). */
  readonly out: number;
  readonly fanIn: number;
  /** The name as spelled in the file (kohya name or path), for messages. */
  readonly name: string;
  /**
   * lowRank: contiguous row-major factors up [out, rank], down [rank, fanIn]. With `alloc`, factors read from a
   * file are decoded into the buffers it hands out (n values each; the caller owns them and reuses them once it is
   * done with the factors: a fuse then allocates no fresh memory per module); other sources may ignore it.
   */
  factors(alloc?: FactorAlloc): Promise<{ up: Float32Array; down: Float32Array }>;
  /** Any kind: the term itself. */
  term(): Promise<Term>;
  /** The bias delta [out] (PEFT lora_B.bias, scaled like up), for modules that have one. */
  readonly bias?: () => Promise<Float32Array>;
  /**
   * A base-dependent term (DoRA, GLoRA, OFT, BOFT) on a weight the base stores transposed (OpenCLIP text_projection):
   * out and fanIn are the stored tensor's, `term()` is the untransposed term (fuse: transposedBaseDelta).
   */
  readonly transposed?: true;
}

/** A norm-layer difference of one input (ComfyUI .diff / .diff_b, LyCORIS w_norm / b_norm): [channels] each. */
export interface InputNorm {
  readonly path: string;
  /** The name as spelled in the file, for messages. */
  readonly name: string;
  readonly channels: number;
  readonly weight?: () => Promise<Float32Array>;
  readonly bias?: () => Promise<Float32Array>;
}

export interface FuseInput {
  readonly source: string;
  readonly format: string;
  readonly arch: Arch;
  readonly size: LayoutSize;
  readonly modules: ReadonlyMap<string, InputModule>;
  /** Norm-layer differences by canonical norm path. */
  readonly norms: ReadonlyMap<string, InputNorm>;
  /** Modules or keys the decoder could not place (only with allowUnmatched). */
  readonly unmatched: readonly { readonly key: string; readonly reason: string }[];
  /** Tensors of the LoRA that have no place in a checkpoint (pivotal-tuning embeddings): skipped, reported. */
  readonly embeddings: readonly string[];
  /** λ of a module (weight × block multiplier). */
  readonly weightOf: (path: string) => number;
  readonly weightLabel: string;
  close(): Promise<void>;
}

function isLora(x: unknown): x is Lora<Term> {
  return typeof x === 'object' && x !== null && 'modules' in x && (x as Lora).modules instanceof Map && 'arch' in x;
}

function label(arch: Arch, size: LayoutSize): string {
  return size === 'tiny' ? `${ARCH_LABEL[arch]} (tiny)` : ARCH_LABEL[arch];
}

/** λ(path) of one input, checked as mergeLoras checks it, and a label for reports. */
function compileWeightLabelled(
  w: MergeWeight,
  arch: Arch,
  size: LayoutSize,
  name: string,
): { fn: (path: string) => number; label: string } {
  const fn = compileWeight(w, arch, size, name, 'fuse');
  if (typeof w === 'number') return { fn, label: String(w) };
  const ws = w as WeightSpec;
  const spec =
    ws.blocks === undefined
      ? null
      : typeof ws.blocks === 'function'
        ? 'a function'
        : typeof ws.blocks === 'string'
          ? ws.blocks
          : JSON.stringify(ws.blocks);
  const parts = [
    String(ws.weight ?? 1),
    ...(hasComponents(ws) ? [`(${describeComponents(ws)})`] : []),
    ...(spec !== null ? [`with blocks ${spec}`] : []),
  ];
  return { fn, label: parts.join(' ') };
}

const readBias =
  (file: SafetensorsFile, key: string): (() => Promise<Float32Array>) =>
  () =>
    file.readF32(key);

function fromPlan(file: SafetensorsFile, plan: LoraPlan, owned: boolean, weight: MergeWeight, name: string): FuseInput {
  const modules = new Map<string, InputModule>();
  for (const m of plan.modules) {
    if (!Number.isFinite(m.alpha)) assertFiniteTensor(plan.source, m.alphaKey ?? m.name, [m.alpha], 'alpha');
  }
  for (const m of plan.modules) {
    const fanIn = m.downShape.slice(1).reduce((a, b) => a * b, 1);
    const term = (): Promise<Term> => readPlannedTerm(file, m);
    // A diff_b beside other tensors comes with the term (scaled to fit the coefficient of its kind).
    const termBiasOf = async (): Promise<Float32Array> => {
      const t = await term();
      return t.bias ? contiguousValues(t.bias) : new Float32Array(m.upShape[0] ?? 0);
    };
    modules.set(m.entry.path, {
      path: m.entry.path,
      kind: m.kind,
      rank: m.kind === 'lowRank' ? m.rank : 0,
      alpha: m.alpha,
      out: m.upShape[0]!,
      fanIn,
      name: m.name,
      async factors(alloc?: FactorAlloc) {
        if (m.adapter) {
          // A Tucker LoCon: the core folded into down (exact), scale alpha / rank as for any LoRA.
          const t = asLowRank(await term(), m.entry.path);
          return { up: contiguousValues(t.up), down: contiguousValues(t.down) };
        }
        const into = (key: string): Float32Array | undefined => {
          const n = file.get(key)?.numel;
          return alloc && n !== undefined ? alloc(n) : undefined;
        };
        const [up, down] = await Promise.all([
          file.readF32(m.upKey, into(m.upKey)),
          file.readF32(m.downKey, into(m.downKey)),
        ]);
        assertFiniteTensor(plan.source, m.upKey, up, 'LoRA factor');
        assertFiniteTensor(plan.source, m.downKey, down, 'LoRA factor');
        return { up, down };
      },
      term,
      ...(m.biasKey !== undefined
        ? { bias: readBias(file, m.biasKey) }
        : m.adapter?.tensors.diff_b
          ? { bias: termBiasOf }
          : {}),
    });
  }
  const norms = new Map<string, InputNorm>();
  const readChecked = (key: string, what: string) => async (): Promise<Float32Array> => {
    const v = await file.readF32(key);
    assertFiniteTensor(plan.source, key, v, what);
    return v;
  };
  for (const n of plan.norms) {
    norms.set(n.entry.path, {
      path: n.entry.path,
      name: n.name,
      channels: n.entry.channels,
      ...(n.weightKey !== undefined ? { weight: readChecked(n.weightKey, 'norm-layer difference') } : {}),
      ...(n.biasKey !== undefined ? { bias: readChecked(n.biasKey, 'norm-layer difference') } : {}),
    });
  }
  const w = compileWeightLabelled(weight, plan.arch, plan.size, name);
  return {
    source: plan.source,
    format: plan.format,
    arch: plan.arch,
    size: plan.size,
    modules,
    norms,
    unmatched: plan.unmatched,
    embeddings: plan.embeddings.map((e) => e.key),
    weightOf: w.fn,
    weightLabel: w.label,
    async close() {
      if (owned) await file.close();
    },
  };
}

function fromLora(lora: Lora<Term>, weight: MergeWeight, name: string): FuseInput {
  const modules = new Map<string, InputModule>();
  for (const [path, m] of lora.modules) {
    const kind = termKind(m);
    if (m.kind === undefined || m.kind === 'lowRank') {
      const dims = moduleDims(m, path, name);
      modules.set(path, {
        path,
        kind,
        rank: dims.rank,
        alpha: m.alpha,
        out: dims.out,
        fanIn: dims.fanIn,
        name: path,
        async factors() {
          const up = contiguousValues(m.up);
          const down = contiguousValues(m.down);
          assertFiniteTensor(name, `${path} (up)`, up, 'LoRA factor');
          assertFiniteTensor(name, `${path} (down)`, down, 'LoRA factor');
          return { up, down };
        },
        async term() {
          return m;
        },
        ...(m.bias ? { bias: async () => contiguousValues(m.bias!) } : {}),
      });
      continue;
    }
    const dims = termDims(m, path);
    modules.set(path, {
      path,
      kind,
      rank: 0,
      alpha: 0,
      out: dims.out,
      fanIn: dims.fanIn,
      name: path,
      async factors() {
        return { up: new Float32Array(0), down: new Float32Array(0) };
      },
      async term() {
        return m;
      },
      ...(m.bias ? { bias: async () => contiguousValues(m.bias!) } : {}),
    });
  }
  const norms = new Map<string, InputNorm>();
  for (const [path, d] of lora.norms ?? []) {
    const values = (v: F32Array | undefined, what: string) =>
      v
        ? {
            [what]: async () => {
              const x = contiguousValues(v);
              assertFiniteTensor(name, `${path} (${what})`, x, 'norm-layer difference');
              return x;
            },
          }
        : {};
    norms.set(path, {
      path,
      name: path,
      channels: (d.weight ?? d.bias)?.shape[0] ?? 0,
      ...values(d.weight, 'weight'),
      ...values(d.bias, 'bias'),
    });
  }
  const w = compileWeightLabelled(weight, lora.arch, lora.size, name);
  const source = (lora as { source?: unknown }).source;
  const format = (lora as { format?: unknown }).format;
  return {
    source: typeof source === 'string' ? source : name,
    format: typeof format === 'string' ? format : 'in memory',
    arch: lora.arch,
    size: lora.size,
    modules,
    norms,
    unmatched: (lora as { unmatched?: FuseInput['unmatched'] }).unmatched ?? [],
    embeddings: [...(lora.embeddings?.keys() ?? [])],
    weightOf: w.fn,
    weightLabel: w.label,
    async close() {
      /* nothing to release */
    },
  };
}

/**
 * Open every input against the base's architecture. A LoRA of another architecture is an ARCH_MISMATCH, except an
 * SDXL LoRA on an SSD-1B base (SSD-1B is SDXL with blocks removed) when allowUnmatched is set: the modules SSD-1B lacks
 * are then reported as unmatched.
 */
export async function openInputs(
  loras: readonly LoraInput[],
  weights: readonly MergeWeight[],
  arch: Arch,
  size: LayoutSize,
  allowUnmatched: boolean,
): Promise<FuseInput[]> {
  if (!Array.isArray(loras) || loras.length === 0) {
    throw new ArgumentError('ARG_MISSING', 'fuse: no LoRA given; pass at least one LoRA with its weight', {});
  }
  if (!Array.isArray(weights) || weights.length !== loras.length) {
    throw new ArgumentError(
      'ARG_INVALID',
      `fuse: expected one weight per LoRA (${loras.length}), found ${Array.isArray(weights) ? weights.length : String(weights)}`,
      { expected: loras.length, found: Array.isArray(weights) ? weights.length : weights },
    );
  }
  const opened: FuseInput[] = [];
  try {
    for (let i = 0; i < loras.length; i++) {
      const input = loras[i]!;
      const name = typeof input === 'string' ? input : `input ${i + 1}`;
      if (isLora(input)) {
        if (input.arch !== arch || input.size !== size) throw mismatch(name, input.arch, input.size, arch, size);
        opened.push(fromLora(input, weights[i]!, name));
        continue;
      }
      let file: SafetensorsFile;
      let owned = false;
      if (typeof input === 'string') {
        file = await openPath(input);
        owned = true;
      } else if (input instanceof SafetensorsFile) {
        file = input;
      } else if (isByteSource(input)) {
        file = await parseSafetensors(input);
      } else {
        throw new ArgumentError(
          'ARG_INVALID',
          `fuse: ${name} is not a path, a ByteSource, a SafetensorsFile or a LoRA`,
          { key: name },
        );
      }
      try {
        let plan = await planLora(file, { allowUnmatched });
        if (plan.arch !== arch || plan.size !== size) {
          if (allowUnmatched && plan.arch === 'sdxl' && arch === 'ssd1b' && plan.size === size) {
            plan = await planLora(file, { arch, size, allowUnmatched: true });
          } else {
            throw mismatch(file.name, plan.arch, plan.size, arch, size);
          }
        }
        opened.push(fromPlan(file, plan, owned, weights[i]!, file.name));
      } catch (e) {
        if (owned) await file.close();
        throw e;
      }
    }
  } catch (e) {
    await Promise.all(opened.map((o) => o.close().catch(() => undefined)));
    throw e;
  }
  return opened;
}

function mismatch(name: string, a: Arch, s: LayoutSize, baseArch: Arch, baseSize: LayoutSize): ArchError {
  const hint =
    a === 'sdxl' && baseArch === 'ssd1b'
      ? ' (an SDXL LoRA can be applied to SSD-1B with allowUnmatched / --allow-unmatched: the modules SSD-1B lacks are skipped and listed)'
      : '';
  return new ArchError(
    'ARCH_MISMATCH',
    `${name} is a LoRA for ${label(a, s)} but the base checkpoint is ${label(baseArch, baseSize)}${hint}`,
    { file: name, expected: `${baseArch}/${baseSize}`, found: `${a}/${s}` },
  );
}
