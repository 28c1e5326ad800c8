/**
 * Merge methods: one registry, one small pure function per method over ONE module's dense task tensors.
 *
 * A method receives, for one module, the unweighted task tensor τᵢ = (αᵢ/rᵢ)·Bᵢ·Aᵢ of every input (null where the
 * input lacks the module, which every method treats as a zero tensor), the user's weights wᵢ, its typed
 * parameters and a seeded generator per input, and returns the merged dense delta. PEFT's order is kept:
 * trimming, dropping and the sign election see the unweighted τᵢ; the weights enter only the final sum (or, for
 * slerp, the two endpoint vectors, as in the research contract).
 *
 * The CLI flags, the API option types and the docs table are generated from METHODS and PARAMS; add a method by
 * declaring it here.
 */
import { OptionError } from '../core/errors.js';
import { magnitudePrune, randomPrune } from './sparsify.js';
import { getWasmTrim, WASM_VOTE_MAX_INPUTS } from './trim-wasm.js';

/** The parameters any method may take, with their types. */
export interface MethodParamValues {
  /** Fraction of entries kept by trimming (magnitude) or dropping (DARE), 0 < density ≤ 1. */
  readonly density: number;
  /** How the TIES sign election weighs the inputs: by the sum of values, or by the count of signs. */
  readonly majoritySign: 'total' | 'frequency';
  /** Seed of DARE's generator: the same seed and inputs give identical bytes. */
  readonly seed: number;
  /** SLERP interpolation parameter: 0 → the first input, 1 → the second. */
  readonly t: number;
}
export type MethodParamName = keyof MethodParamValues;

export interface ParamSpec<K extends MethodParamName = MethodParamName> {
  readonly name: K;
  /** CLI flag without the dashes. */
  readonly flag: string;
  readonly kind: 'number' | 'integer' | 'choice';
  readonly default: MethodParamValues[K];
  readonly choices?: readonly string[];
  /** Accepted range; `minExclusive` makes the lower bound open. */
  readonly min?: number;
  readonly max?: number;
  readonly minExclusive?: boolean;
  readonly doc: string;
}

export const PARAMS: { readonly [K in MethodParamName]: ParamSpec<K> } = {
  density: {
    name: 'density',
    flag: 'density',
    kind: 'number',
    default: 1,
    min: 0,
    max: 1,
    minExclusive: true,
    doc: 'fraction of each input’s entries kept by trimming (largest magnitudes) or DARE dropping, in (0, 1]',
  },
  majoritySign: {
    name: 'majoritySign',
    flag: 'majority-sign',
    kind: 'choice',
    default: 'total',
    choices: ['total', 'frequency'],
    doc: 'sign election: total (sign of Σ τᵢ) or frequency (sign of Σ sign τᵢ)',
  },
  seed: {
    name: 'seed',
    flag: 'seed',
    kind: 'integer',
    default: 0,
    min: 0,
    max: 4294967295,
    doc: 'seed of the DARE masks (per module and input): same seed, same bytes',
  },
  t: {
    name: 't',
    flag: 't',
    kind: 'number',
    default: 0.5,
    min: 0,
    max: 1,
    doc: 'slerp position: 0 gives the first input, 1 the second',
  },
};

/**
 * One module's merge: τᵢ (unweighted, null = absent), wᵢ, parameters, a generator per input → dense delta. With
 * `consume` the caller hands the τᵢ over: the method trims them in place and writes its result into one of them
 * (no dense copies; method-module.ts does this). Without it the inputs are left untouched. Same values either way.
 */
export type DenseMethod = (
  deltas: readonly (Float32Array | null)[],
  weights: readonly number[],
  params: MethodParamValues,
  rng: (input: number) => () => number,
  consume?: boolean,
) => Float32Array;

export interface MethodSpec {
  readonly name: string;
  /** 'factors': works on the LoRA factors exactly (no dense delta); 'delta': one module's dense deltas. */
  readonly space: 'factors' | 'delta';
  readonly params: readonly MethodParamName[];
  /** Exactly this many inputs (slerp: 2). */
  readonly inputs?: number;
  readonly summary: string;
  /** The dense per-module function (every method has one; 'factors' methods also have an exact factor path). */
  readonly dense: DenseMethod;
}

function sizeOf(deltas: readonly (Float32Array | null)[]): number {
  for (const d of deltas) if (d) return d.length;
  return 0;
}

/** The first present tensor (the buffer an in-place result is written to). */
function firstPresent(deltas: readonly (Float32Array | null)[]): Float32Array | undefined {
  for (const d of deltas) if (d) return d;
  return undefined;
}

/**
 * Σ wᵢ·xᵢ, each element accumulated in f64 in input order, rounded once to f32. `out` (default: a new array) may
 * be one of the inputs: every element is read before it is written.
 */
export function weightedSum(
  deltas: readonly (Float32Array | null)[],
  weights: readonly number[],
  out: Float32Array = new Float32Array(sizeOf(deltas)),
): Float32Array {
  const n = sizeOf(deltas);
  const terms = deltas.flatMap((d, i) => (d && (weights[i] ?? 0) !== 0 ? [{ d, w: weights[i] ?? 0 }] : []));
  for (let e = 0; e < n; e++) {
    let s = 0;
    for (const { d, w } of terms) s += w * (d[e] ?? 0);
    out[e] = s;
  }
  return out;
}

/**
 * TIES' election and disjoint mean on already trimmed tensors: σ = +1 where S ≥ 0 else −1 (S = Σ tᵢ or Σ sign tᵢ);
 * result = Σ wᵢ·tᵢ·[sign tᵢ = σ] / max(1, #{i : sign tᵢ = σ}). Zeros never vote or count. `out` (default: a new
 * array) may be one of the inputs: every element is read before it is written. Runs in WebAssembly
 * (src/lora/trim-wasm.ts) where available, else disjointMergeScalar; both give the same bits.
 */
export function disjointMerge(
  trimmed: readonly (Float32Array | null)[],
  weights: readonly number[],
  majoritySign: 'total' | 'frequency',
  out: Float32Array = new Float32Array(sizeOf(trimmed)),
): Float32Array {
  const wasm = getWasmTrim();
  const n = sizeOf(trimmed);
  let inputs = 0,
    sameSize = out.length >= n;
  for (const t of trimmed) {
    if (!t) continue;
    inputs++;
    if (t.length !== n) sameSize = false;
  }
  // (the reference reads a shorter input as zeros and ignores writes past a shorter `out`: left to it)
  if (wasm && sameSize && inputs <= WASM_VOTE_MAX_INPUTS) {
    return wasm.disjointMerge(trimmed, weights, majoritySign === 'frequency', n, out);
  }
  return disjointMergeScalar(trimmed, weights, majoritySign, out);
}

/** disjointMerge in plain JS (the reference, and the fallback without WebAssembly SIMD); the same bits. */
export function disjointMergeScalar(
  trimmed: readonly (Float32Array | null)[],
  weights: readonly number[],
  majoritySign: 'total' | 'frequency',
  out: Float32Array = new Float32Array(sizeOf(trimmed)),
): Float32Array {
  const n = sizeOf(trimmed);
  const present = trimmed.flatMap((t, i) => (t ? [{ t, w: weights[i] ?? 0 }] : []));
  const byCount = majoritySign === 'frequency';
  const [p0, p1] = present;
  if (present.length === 2 && p0 && p1) return disjointMergeTwo(p0.t, p0.w, p1.t, p1.w, byCount, n, out);
  for (let e = 0; e < n; e++) {
    let S = 0;
    for (const { t } of present) {
      const v = t[e] ?? 0;
      S += byCount ? Math.sign(v) : v;
    }
    const sigma = S >= 0 ? 1 : -1;
    let num = 0,
      count = 0;
    for (const { t, w } of present) {
      const v = t[e] ?? 0;
      if (v !== 0 && Math.sign(v) === sigma) {
        num += w * v;
        count++;
      }
    }
    out[e] = count > 0 ? num / count : 0;
  }
  return out;
}

/** disjointMerge for exactly two present inputs (the common case), unrolled: the same arithmetic, in the same order. */
function disjointMergeTwo(
  t0: Float32Array,
  w0: number,
  t1: Float32Array,
  w1: number,
  byCount: boolean,
  n: number,
  out: Float32Array,
): Float32Array {
  for (let e = 0; e < n; e++) {
    const v0 = t0[e] ?? 0,
      v1 = t1[e] ?? 0;
    if (v0 === 0 && v1 === 0) {
      out[e] = 0;
      continue;
    }
    const S = byCount ? Math.sign(v0) + Math.sign(v1) : v0 + v1;
    const sigma = S >= 0 ? 1 : -1;
    const a0 = v0 !== 0 && Math.sign(v0) === sigma,
      a1 = v1 !== 0 && Math.sign(v1) === sigma;
    // `0 +` as in the general loop's accumulator (a zero weight gives +0, never −0).
    if (a0 && a1) out[e] = (0 + w0 * v0 + w1 * v1) / 2;
    else if (a0) out[e] = 0 + w0 * v0;
    else if (a1) out[e] = 0 + w1 * v1;
    else out[e] = 0;
  }
  return out;
}

const copies = (deltas: readonly (Float32Array | null)[]): (Float32Array | null)[] =>
  deltas.map((d) => (d ? Float32Array.from(d) : null));

/** The tensors a method may overwrite: the inputs themselves when the caller hands them over, else copies. */
const owned = (deltas: readonly (Float32Array | null)[], consume: boolean): (Float32Array | null)[] =>
  consume ? [...deltas] : copies(deltas);

function magnitudeTrimmed(
  deltas: readonly (Float32Array | null)[],
  density: number,
  consume: boolean,
): (Float32Array | null)[] {
  const t = owned(deltas, consume);
  for (const x of t) if (x) magnitudePrune(x, density);
  return t;
}

function dareDropped(
  deltas: readonly (Float32Array | null)[],
  density: number,
  rng: (input: number) => () => number,
  consume: boolean,
): (Float32Array | null)[] {
  const t = owned(deltas, consume);
  t.forEach((x, i) => {
    if (x) randomPrune(x, density, rng(i));
  });
  return t;
}

/**
 * mergekit's slerp of v0 = w₀τ₀ and v1 = w₁τ₁, flattened (a missing module is a zero vector). `out` (default: a
 * new array) may be one of the inputs.
 */
export function slerpDeltas(
  deltas: readonly (Float32Array | null)[],
  weights: readonly number[],
  t: number,
  out: Float32Array = new Float32Array(sizeOf(deltas)),
): Float32Array {
  const n = sizeOf(deltas);
  const w0 = weights[0] ?? 0,
    w1 = weights[1] ?? 0;
  const a = deltas[0] ?? null,
    b = deltas[1] ?? null;
  const v0 = (e: number): number => (a ? w0 * (a[e] ?? 0) : 0);
  const v1 = (e: number): number => (b ? w1 * (b[e] ?? 0) : 0);
  let n0 = 0,
    n1 = 0,
    dot = 0;
  for (let e = 0; e < n; e++) {
    const x = v0(e),
      y = v1(e);
    n0 += x * x;
    n1 += y * y;
    dot += x * y;
  }
  const EPS = 1e-8;
  const l0 = Math.sqrt(n0),
    l1 = Math.sqrt(n1);
  const c = dot / (l0 > EPS ? l0 : 1) / (l1 > EPS ? l1 : 1);
  let s0: number, s1: number;
  if (Math.abs(c) > 0.9995) {
    s0 = 1 - t;
    s1 = t;
  } else {
    const theta = Math.acos(c);
    const sin = Math.sin(theta);
    s0 = Math.sin((1 - t) * theta) / sin;
    s1 = Math.sin(t * theta) / sin;
  }
  for (let e = 0; e < n; e++) out[e] = s0 * v0(e) + s1 * v1(e);
  return out;
}

/** Declare a method: keeps its parameter list as a literal type (for the typed API options) and its function typed. */
const declare = <const P extends readonly MethodParamName[]>(
  m: Omit<MethodSpec, 'params'> & { readonly params: P },
): Omit<MethodSpec, 'params'> & { readonly params: P } => m;

export const METHODS = {
  concat: declare({
    name: 'concat',
    space: 'factors',
    params: [],
    summary: 'exact Σ wᵢτᵢ as rank-concatenated factors (the default; no SVD, rank grows to Σ rᵢ)',
    dense: (deltas, weights, _p, _rng, consume) =>
      weightedSum(deltas, weights, consume ? firstPresent(deltas) : undefined),
  }),
  linear: declare({
    name: 'linear',
    space: 'factors',
    params: [],
    summary: 'Σ wᵢτᵢ, then its optimal rank-K factors (Eckart–Young, computed from the factors)',
    dense: (deltas, weights, _p, _rng, consume) =>
      weightedSum(deltas, weights, consume ? firstPresent(deltas) : undefined),
  }),
  ties: declare({
    name: 'ties',
    space: 'delta',
    params: ['density', 'majoritySign'],
    summary:
      'trim each τᵢ to its largest-magnitude entries, elect a sign per entry, weighted mean of the agreeing entries',
    dense: (deltas, weights, p, _rng, consume) => {
      const t = magnitudeTrimmed(deltas, p.density, consume === true);
      return disjointMerge(t, weights, p.majoritySign, firstPresent(t));
    },
  }),
  dare_linear: declare({
    name: 'dare_linear',
    space: 'delta',
    params: ['density', 'seed'],
    summary: 'drop entries of each τᵢ at random (keep with probability density, rescale by 1/density), Σ wᵢtᵢ',
    dense: (deltas, weights, p, rng, consume) => {
      const t = dareDropped(deltas, p.density, rng, consume === true);
      return weightedSum(t, weights, firstPresent(t));
    },
  }),
  dare_ties: declare({
    name: 'dare_ties',
    space: 'delta',
    params: ['density', 'majoritySign', 'seed'],
    summary: 'DARE dropping, then the TIES sign election and disjoint mean',
    dense: (deltas, weights, p, rng, consume) => {
      const t = dareDropped(deltas, p.density, rng, consume === true);
      return disjointMerge(t, weights, p.majoritySign, firstPresent(t));
    },
  }),
  magnitude_prune: declare({
    name: 'magnitude_prune',
    space: 'delta',
    params: ['density'],
    summary: 'keep the ⌊density·n⌋ largest-magnitude entries of each τᵢ, Σ wᵢtᵢ',
    dense: (deltas, weights, p, _rng, consume) => {
      const t = magnitudeTrimmed(deltas, p.density, consume === true);
      return weightedSum(t, weights, firstPresent(t));
    },
  }),
  slerp: declare({
    name: 'slerp',
    space: 'delta',
    params: ['t'],
    inputs: 2,
    summary: 'mergekit’s spherical interpolation of the flattened w₀τ₀ and w₁τ₁ (exactly two inputs)',
    dense: (deltas, weights, p, _rng, consume) =>
      slerpDeltas(deltas, weights, p.t, consume ? firstPresent(deltas) : undefined),
  }),
};

export type MergeMethod = keyof typeof METHODS;
export const METHOD_NAMES = Object.keys(METHODS) as MergeMethod[];

/** The API options of one method: `{ method }` plus that method's parameters, each optional. */
export type MethodOptionsOf<M extends MergeMethod> = { readonly method: M } & {
  readonly [K in (typeof METHODS)[M]['params'][number]]?: MethodParamValues[K];
};
/** Typed options per method (a discriminated union on `method`). */
export type MethodOptions = { [M in MergeMethod]: MethodOptionsOf<M> }[MergeMethod];

/** A checked method request: the method, its parameters with defaults filled in. */
export interface ResolvedMethod {
  readonly method: MergeMethod;
  readonly spec: MethodSpec;
  readonly params: MethodParamValues;
}

export function isMergeMethod(x: unknown): x is MergeMethod {
  return typeof x === 'string' && Object.hasOwn(METHODS, x);
}

function checkParam<K extends MethodParamName>(spec: ParamSpec<K>, value: unknown, op: string): MethodParamValues[K] {
  const bad = (expected: string): never => {
    throw new OptionError(
      'OPTION_INVALID',
      `${op}: ${spec.name} (--${spec.flag}) must be ${expected}, found ${JSON.stringify(value) ?? String(value)}`,
      { key: spec.name, expected, found: value },
    );
  };
  if (spec.kind === 'choice') {
    if (typeof value !== 'string' || !spec.choices?.includes(value)) bad(`one of ${spec.choices?.join(', ')}`);
    return value as MethodParamValues[K];
  }
  const lo = spec.min,
    hi = spec.max;
  const range = `${spec.kind === 'integer' ? 'an integer' : 'a number'} in ${spec.minExclusive ? '(' : '['}${lo}, ${hi}]`;
  if (typeof value !== 'number' || !Number.isFinite(value)) return bad(range);
  if (spec.kind === 'integer' && !Number.isInteger(value)) bad(range);
  if (lo !== undefined && (spec.minExclusive ? !(value > lo) : !(value >= lo))) bad(range);
  if (hi !== undefined && !(value <= hi)) bad(range);
  return value as MethodParamValues[K];
}

/**
 * Check a method request (API options or CLI flags): a known method, parameters it takes, values in range, and
 * the number of inputs it needs. Returns the method with defaults filled in. OptionError on any problem.
 */
export function resolveMethod(
  options: { readonly method?: unknown } & Partial<Record<MethodParamName, unknown>>,
  inputCount: number,
  op = 'merge',
): ResolvedMethod {
  const method = options.method ?? 'concat';
  if (!isMergeMethod(method)) {
    throw new OptionError(
      'OPTION_INVALID',
      `${op}: unknown merge method ${JSON.stringify(method)}; expected one of ${METHOD_NAMES.join(', ')}`,
      { key: 'method', expected: METHOD_NAMES, found: method },
    );
  }
  const spec: MethodSpec = METHODS[method];
  const params: Record<string, unknown> = {};
  for (const name of Object.keys(PARAMS) as MethodParamName[]) {
    const given = options[name];
    if (given === undefined) {
      params[name] = PARAMS[name].default;
      continue;
    }
    if (!spec.params.includes(name)) {
      throw new OptionError(
        'OPTION_CONFLICT',
        `${op}: method ${method} takes no ${name} (--${PARAMS[name].flag}); its parameters: ${spec.params.join(', ') || 'none'}`,
        { key: name, expected: spec.params, found: given },
      );
    }
    params[name] = checkParam(PARAMS[name], given, op);
  }
  if (spec.inputs !== undefined && inputCount !== spec.inputs) {
    throw new OptionError(
      'OPTION_CONFLICT',
      `${op}: method ${method} takes exactly ${spec.inputs} inputs, found ${inputCount}`,
      { key: 'method', expected: spec.inputs, found: inputCount },
    );
  }
  return { method, spec, params: params as unknown as MethodParamValues };
}

/** The docs table of the registry (docs/methods.md embeds it verbatim; a test keeps them equal). */
export function methodsTable(): string {
  const rows = METHOD_NAMES.map((name) => {
    const m: MethodSpec = METHODS[name];
    const params = m.params.map((p) => `\`--${PARAMS[p].flag}\``).join(', ') || '—';
    return `| \`${name}\` | ${m.space === 'factors' ? 'factors' : 'dense delta'} | ${params} | ${m.summary} |`;
  });
  const paramRows = (Object.keys(PARAMS) as MethodParamName[]).map((p) => {
    const s = PARAMS[p];
    return `| \`--${s.flag}\` | \`${s.name}\` | ${JSON.stringify(s.default)} | ${s.doc} |`;
  });
  return [
    '| method | works on | parameters | what it computes per module |',
    '| --- | --- | --- | --- |',
    ...rows,
    '',
    '| flag | API option | default | meaning |',
    '| --- | --- | --- | --- |',
    ...paramRows,
  ].join('\n');
}
