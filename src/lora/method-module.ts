/**
 * One module through a delta-space merge method: the inputs' dense task tensors τᵢ = sᵢ·upᵢ·downᵢ (formed one
 * module at a time, so memory is bounded by one module's deltas), the method's pure function, and — for `merge`
 * — the optimal rank-K factors of the result through the one truncated SVD (./svd.ts). `fuse` takes the dense
 * result itself. A plain, structured-clone-friendly request, so worker threads can run it too.
 */
import { hashString, mulberry32 } from '../core/random.js';
import { disjointMerge, METHODS, type MergeMethod, type MethodParamValues } from './methods.js';
import { magnitudePrune } from './sparsify.js';
import { type ProductF32, wasmProduct } from './product.js';
import { chooseRank, truncationStats, type ReduceOutcome, type RankTarget } from './reduce.js';
import { choleskyWhitening, transposeF32 } from './linalg.js';
import { jsProduct, SvdWorkspace, truncatedSvd, type TruncatedSvd, type TruncatedSvdOptions } from './svd.js';

/**
 * One input's task tensor for a module: factors whose delta is scale·up·down (up out × rank, down rank × fanIn,
 * row-major), or — for term kinds fused through their dense delta — that delta itself at strength 1.
 */
export type MethodMember =
  | {
      readonly input: number;
      readonly scale: number;
      readonly rank: number;
      readonly up: Float32Array;
      readonly down: Float32Array;
    }
  | { readonly input: number; readonly delta: Float32Array };

export interface MethodModuleRequest {
  readonly path: string;
  readonly out: number;
  readonly fanIn: number;
  /** Inputs that have the module (any weight, zero included: they still vote in TIES). */
  readonly members: readonly MethodMember[];
  /** One weight per input of the merge (index = input). */
  readonly weights: readonly number[];
  readonly method: MergeMethod;
  readonly params: MethodParamValues;
  /**
   * The largest module (out·fanIn) of the merge, when known: reused buffers are allocated at that size on first
   * use, so they never grow (a grown buffer's predecessor would wait for the garbage collector, and a worker's
   * memory would hold several generations of them).
   */
  readonly reserve?: number;
}

/**
 * Dense buffers reused from module to module: ONE buffer holds the dense deltas of all of a module's inputs
 * (consecutive views), and the SVD's scratch is small. A merge keeps one DenseScratch per thread, so a module costs
 * no new dense allocation once the largest has been seen, and memory does not wait on the garbage collector. The
 * buffer grows to what is asked and stays.
 */
export class DenseScratch {
  private readonly buffers: Float32Array[] = [];
  private shared = new Float32Array(0);
  /** The truncated SVD's buffers (its starting block and the products' small operands), reused across modules. */
  readonly svd = new SvdWorkspace();

  /** n floats of buffer `slot` (contents undefined): separate buffers, for profiles that time the deltas alone. */
  get(slot: number, n: number): Float32Array {
    let b = this.buffers[slot];
    if (!b || b.length < n) {
      b = new Float32Array(n);
      this.buffers[slot] = b;
    }
    return b.subarray(0, n);
  }

  /** The shared dense buffer, at least n floats long (grown when shorter; contents undefined). */
  dense(n: number): Float32Array {
    if (this.shared.length < n) this.shared = new Float32Array(n);
    return this.shared;
  }
}

/**
 * The dense delta τ = scale·up·down of one member (out × fanIn, row-major f32), in `into` when given; the scaled
 * copy of `up` goes to `ws` when given (a merge's worker then allocates nothing per module here).
 */
export function memberDelta(
  m: MethodMember,
  out: number,
  fanIn: number,
  into?: Float32Array,
  ws?: SvdWorkspace,
): Float32Array {
  if ('delta' in m) {
    if (!into) return m.delta.slice(0, out * fanIn);
    into.set(m.delta.subarray(0, out * fanIn));
    return into;
  }
  const product = wasmProduct() ?? jsProduct;
  // The scale goes into a copy of the small factor (out × rank), not over the dense result (one pass less).
  let up = m.up;
  if (m.scale !== 1) {
    const n = out * m.rank;
    up = ws ? ws.f32('scaledUp', n) : new Float32Array(n);
    for (let i = 0; i < n; i++) up[i] = (m.up[i] as number) * m.scale;
  }
  return product(out, fanIn, m.rank, up, m.down, into);
}

/**
 * The generator of input i for a module: seeded from (seed, input, module path), so a run is reproducible byte for
 * byte whatever the module order or thread layout.
 */
export function moduleRng(seed: number, path: string): (input: number) => () => number {
  return (input) => mulberry32(hashString(`${seed >>> 0}:${input}:${path}`));
}

/**
 * The method's dense result for one module (out × fanIn, row-major f32). The inputs' dense deltas are formed here
 * and handed to the method, which trims them in place and writes its result into one of them: one dense buffer
 * per input is all a module costs (the truncated SVD adds only O((out + fanIn)·(k + 8)) floats). With a `scratch`
 * the deltas are consecutive views of its one buffer, reused (the result is a view of it, valid until the scratch's
 * next use). With `reserve` that buffer holds reserve·(p − 1) floats for p ≥ 2 inputs — for two inputs the largest
 * module once, not twice; a module whose p deltas do not fit in it (for SDXL only the largest three convolutions,
 * 1280 × 23 040 and 1280 × 17 280) goes through tiesSparse for TIES (the same bits), and the other methods form the
 * deltas that do not fit in arrays of their own.
 */
export function methodDelta(req: MethodModuleRequest, scratch?: DenseScratch): Float32Array {
  const n = req.out * req.fanIn;
  const deltas: (Float32Array | null)[] = req.weights.map(() => null);
  const p = req.members.length;
  const rng = moduleRng(req.params.seed, req.path);
  if (!scratch) {
    for (const m of req.members) deltas[m.input] = memberDelta(m, req.out, req.fanIn);
    return METHODS[req.method].dense(deltas, req.weights, req.params, rng, true);
  }
  const buffer = scratch.dense(Math.max(req.reserve === undefined ? p * n : req.reserve * Math.max(1, p - 1), n));
  if (p * n > buffer.length && req.method === 'ties' && req.params.density <= 0.5)
    return tiesSparse(req, buffer.subarray(0, n), scratch.svd);
  req.members.forEach((m, j) => {
    const into = (j + 1) * n <= buffer.length ? buffer.subarray(j * n, (j + 1) * n) : new Float32Array(n);
    deltas[m.input] = memberDelta(m, req.out, req.fanIn, into, scratch.svd);
  });
  return METHODS[req.method].dense(deltas, req.weights, req.params, rng, true);
}

/** Values per chunk of tiesSparse's vote (the trimmed deltas kept aside are expanded one chunk at a time). */
const SPARSE_VOTE_CHUNK = 1 << 16;

/**
 * TIES for a module whose inputs' dense deltas do not fit side by side: each input's delta but the last is formed in
 * `dense` (out × fanIn floats), trimmed, and kept aside as its non-zero entries (indices and bit patterns: at most
 * 8·density bytes per value); the last is formed and trimmed in `dense`, and the vote runs chunk by chunk on the
 * kept entries expanded, writing into `dense`. Trim and vote are the method's own functions on the same values,
 * element for element, so the result has the bits of METHODS.ties.dense.
 */
export function tiesSparse(req: MethodModuleRequest, dense: Float32Array, ws?: SvdWorkspace): Float32Array {
  const n = dense.length;
  const bits = new Uint32Array(dense.buffer, dense.byteOffset, n);
  const kept: { input: number; index: Uint32Array; bits: Uint32Array }[] = [];
  const last = req.members.length - 1;
  req.members.forEach((m, j) => {
    memberDelta(m, req.out, req.fanIn, dense, ws);
    magnitudePrune(dense, req.params.density);
    if (j === last) return;
    let count = 0;
    for (let i = 0; i < n; i++) if (bits[i] !== 0) count++;
    const index = new Uint32Array(count);
    const values = new Uint32Array(count);
    let c = 0;
    for (let i = 0; i < n; i++) {
      const b = bits[i] as number;
      if (b !== 0) {
        index[c] = i;
        values[c++] = b;
      }
    }
    kept.push({ input: m.input, index, bits: values });
  });
  const lastInput = (req.members[last] as MethodMember).input;
  const chunks = kept.map(() => new Float32Array(Math.min(SPARSE_VOTE_CHUNK, n)));
  const at = kept.map(() => 0);
  const trimmed: (Float32Array | null)[] = req.weights.map(() => null);
  for (let c0 = 0; c0 < n; c0 += SPARSE_VOTE_CHUNK) {
    const c1 = Math.min(n, c0 + SPARSE_VOTE_CHUNK);
    kept.forEach((k, j) => {
      const chunk = (chunks[j] as Float32Array).subarray(0, c1 - c0);
      chunk.fill(0);
      const u = new Uint32Array(chunk.buffer, chunk.byteOffset, chunk.length);
      let e = at[j] as number;
      while (e < k.index.length && (k.index[e] as number) < c1) {
        u[(k.index[e] as number) - c0] = k.bits[e] as number;
        e++;
      }
      at[j] = e;
      trimmed[k.input] = chunk;
    });
    const out = dense.subarray(c0, c1);
    trimmed[lastInput] = out;
    disjointMerge(trimmed, req.weights, req.params.majoritySign, out);
  }
  return dense;
}

/**
 * The truncated SVD's stopping rule for method results: stop when the half-steps still to come are predicted to
 * lower the Frobenius error by at most 0.02% (a fifth of the 0.1% the merge promises over the Eckart–Young
 * optimum). The prediction is a heuristic: at 0.05% it ended above 0.1% on 2 of 600 random noise/clustered
 * matrices (up to 0.16%); at 0.02% none of 2,400 did (worst 0.052%), for ~20% more rounds than at 0.05%.
 */
export const METHOD_SVD_OPTIONS = { excess: 2e-4 } as const;

/**
 * TIES's stopping rule: the same 0.02% predicted excess, the convergence rate also read off the Ritz values' gap
 * (truncatedSvd `ritzGap`) instead of the fixed ¾ before a whole round's ratio exists — most SDXL TIES modules stop
 * after their third or fourth product instead of their fifth (bench/ties-rule.ts: 2.98 instead of 4.01 half-steps per
 * module, worst excess over a long-run reference 0.0199% on 158 modules; RESULTS.md, session 8). Only TIES uses it
 * for now, so the other methods' outputs stay byte-identical.
 */
export const TIES_SVD_OPTIONS = { excess: 2e-4, ritzGap: true } as const;

/** truncatedSvd's default oversampling (l = k + 8), and how many of the l starting rows are A·ω for random ω. */
const START_OVERSAMPLE = 8;
const START_SKETCH_ROWS = 8;

/**
 * The truncated SVD of a method's result `delta` (req.out × req.fanIn) as the merge runs it: METHOD_SVD_OPTIONS (TIES_SVD_OPTIONS for TIES),
 * started from the inputs' factors (factorStartBasis, l − 8 rows; the other 8 are A·ω for random ω) where every
 * member has factors. `options` are passed on (a workspace, a product for profiling, other stopping options).
 */
export function methodSvd(
  req: MethodModuleRequest,
  delta: Float32Array,
  k: number,
  options: TruncatedSvdOptions = {},
): TruncatedSvd {
  const l = Math.min(k + START_OVERSAMPLE, req.out, req.fanIn);
  const mul = typeof options.product === 'function' ? options.product : undefined;
  const ws = options.workspace instanceof SvdWorkspace ? options.workspace : undefined;
  const start = l > START_SKETCH_ROWS ? factorStartBasis(req, l - START_SKETCH_ROWS, 2, mul, ws) : undefined;
  return truncatedSvd(delta, req.out, req.fanIn, k, {
    ...(req.method === 'ties' ? TIES_SVD_OPTIONS : METHOD_SVD_OPTIONS),
    ...options,
    ...(start ? { startLeft: start } : {}),
  });
}

/**
 * The method's result for one module as optimal rank-k factors (k from the target: `rank` caps it, `minEnergy`
 * picks the smallest k keeping that fraction of the result's Frobenius norm). Factors are always present when
 * k > 0 (arrays of their own, never scratch); k = 0 means the result is zero.
 */
export function methodModule(req: MethodModuleRequest, target: RankTarget, scratch?: DenseScratch): ReduceOutcome {
  const delta = methodDelta(req, scratch);
  const cap = Math.min(target.rank ?? Math.min(req.out, req.fanIn), req.out, req.fanIn);
  const svd = methodSvd(req, delta, Math.max(1, cap), scratch ? { workspace: scratch.svd } : {});
  const spectrum = { sigma2: svd.sigma2.subarray(0, svd.rank), total: svd.total };
  const k = Math.min(chooseRank(spectrum, target), svd.rank);
  const stats = truncationStats(spectrum, k);
  if (k === 0) return { k, ...stats };
  if (k === svd.rank) return { k, ...stats, factors: { up: svd.up, down: svd.down } };
  const up = new Float32Array(req.out * k);
  for (let o = 0; o < req.out; o++) up.set(svd.up.subarray(o * svd.rank, o * svd.rank + k), o * k);
  return { k, ...stats, factors: { up, down: svd.down.slice(0, k * req.fanIn) } };
}

/**
 * A starting left basis for the truncated SVD of a method's result, from the inputs' factors: ≈ the top `rows`
 * left singular directions of the weighted sum M = Σ wᵢ·sᵢ·upᵢ·downᵢ (the linear merge), whose range the trimmed,
 * sign-elected result largely shares. With U = [wᵢsᵢ·upᵢ] (out × R) and V = [downᵢ] (R × fanIn), M·Mᵀ·U·x =
 * U·(G_V·G_U·x) for G_U = UᵀU and G_V = V·Vᵀ (R × R), so `iterations` rounds of subspace iteration run on `rows`
 * coefficient vectors of length R (CholeskyQR in the G_U metric after each), never on an out × fanIn matrix; the
 * basis is X·Uᵀ. Its cost is O(R²·(out + fanIn)) — about a third of one product with the dense result for two
 * rank-64 inputs. Undefined when a member is dense (no factors) or no factor has weight. With `ws` every buffer
 * (the vectors returned included: valid until the workspace's next use) is the workspace's, so a merge's worker
 * allocates nothing here from module to module; the values are the same either way.
 */
export function factorStartBasis(
  req: MethodModuleRequest,
  rows: number,
  iterations = 2,
  mul: ProductF32 = wasmProduct() ?? jsProduct,
  ws?: SvdWorkspace,
): { rows: number; vectors: Float32Array } | undefined {
  const { out, fanIn } = req;
  let R = 0;
  for (const m of req.members) {
    if ('delta' in m) return undefined;
    R += m.rank;
  }
  if (R === 0) return undefined;
  const f32 = (name: string, n: number): Float32Array => (ws ? ws.f32(name, n) : new Float32Array(n));
  // u is written whole below (every member's columns), v too (every member's rows).
  const u = f32('startU', out * R);
  const v = f32('startV', R * fanIn);
  let j0 = 0;
  let any = false;
  for (const m of req.members) {
    if ('delta' in m) continue;
    const c = (req.weights[m.input] ?? 0) * m.scale;
    if (c !== 0) any = true;
    for (let o = 0; o < out; o++)
      for (let j = 0; j < m.rank; j++) u[o * R + j0 + j] = c * (m.up[o * m.rank + j] as number);
    v.set(m.down.subarray(0, m.rank * fanIn), j0 * fanIn);
    j0 += m.rank;
  }
  if (!any) return undefined;
  const ut = transposeF32(u, out, R, ws?.f32('startUt', R * out));
  if (R <= rows) return { rows: R, vectors: ut };
  const gu = mul(R, R, out, ut, u, ws?.f32('startGu', R * R));
  const gv = mul(R, R, fanIn, v, transposeF32(v, R, fanIn, ws?.f32('startVt', fanIn * R)), ws?.f32('startGv', R * R));
  // X: `rows` coefficient vectors (one per row, length R), seeded; x ← G_V·G_U·x is X ← X·G_U·G_V.
  const next = mulberry32(0x5eed);
  let x: Float32Array = f32('startX', rows * R);
  for (let i = 0; i < x.length; i++) x[i] = next() / 2147483648 - 1;
  for (let it = 0; it < iterations; it++) {
    // 'startT' holds X·G_U, then Y·G_U (X is rewritten only after both are used).
    const y = mul(rows, R, R, mul(rows, R, R, x, gu, ws?.f32('startT', rows * R)), gv, ws?.f32('startY', rows * R));
    // CholeskyQR in the G_U metric: H = Y·G_U·Yᵀ = L·Lᵀ, X ← L⁻¹·Y. A singular H keeps the previous X.
    const h = mul(
      rows,
      rows,
      R,
      mul(rows, R, R, y, gu, ws?.f32('startT', rows * R)),
      transposeF32(y, rows, R, ws?.f32('startYt', R * rows)),
      ws?.f32('startH', rows * rows),
    );
    const h64 = new Float64Array(rows * rows);
    for (let i = 0; i < rows; i++)
      for (let j = 0; j < rows; j++)
        h64[i * rows + j] = 0.5 * ((h[i * rows + j] as number) + (h[j * rows + i] as number));
    const w = choleskyWhitening(h64, rows);
    if (!w) break;
    x = mul(rows, R, rows, Float32Array.from(w.inverse), y, ws?.f32('startX', rows * R));
  }
  return { rows, vectors: mul(rows, out, R, x, ut, ws?.f32('startVectors', rows * out)) };
}
