/**
 * Test helpers for the LoRA arithmetic tests: seeded random LoRAs, an independent f64 dense delta, and a dense
 * reference SVD (cyclic two-sided Jacobi on ΔᵀΔ or ΔΔᵀ) that shares no code with src/lora/linalg.ts.
 */
import ndarray from 'ndarray';
import { mulberry32 } from '../src/fixtures/random.js';
import type { Arch, LayoutSize } from '../src/layout/types.js';
import type { Lora, LoraModule } from '../src/lora/types.js';

/** A seeded PRNG returning floats in [0, 1): the fixtures' mulberry32, scaled. */
export function prng(seed: number): () => number {
  const next = mulberry32(seed);
  return () => next() / 4294967296;
}

export function randomArray(rand: () => number, n: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rand() * 2 - 1) * scale;
  return a;
}

export interface ModuleSpec {
  out: number;
  in: number;
  rank: number;
  kernel?: [number, number];
  alpha?: number;
  /** Store up as [out, r, 1, 1] (default for conv). */
  up4?: boolean;
}

export function randomModule(rand: () => number, spec: ModuleSpec): LoraModule {
  const { out, in: inn, rank: r, kernel } = spec;
  const n = inn * (kernel ? kernel[0] * kernel[1] : 1);
  const down = ndarray(randomArray(rand, r * n, 0.5), kernel ? [r, inn, kernel[0], kernel[1]] : [r, inn]);
  const up4 = spec.up4 ?? kernel !== undefined;
  const up = ndarray(randomArray(rand, out * r, 0.5), up4 ? [out, r, 1, 1] : [out, r]);
  return { down, up, alpha: spec.alpha ?? r };
}

export function makeLora(
  modules: Record<string, LoraModule>,
  arch: Arch = 'sd15',
  size: LayoutSize = 'tiny',
  metadata: Record<string, string> = {},
): Lora {
  return { arch, size, modules: new Map(Object.entries(modules)), metadata };
}

/** Row-major values of an ndarray (any strides), as f64. */
export function values64(a: ndarray.NdArray<Float32Array>): Float64Array {
  const size = a.shape.reduce((x, y) => x * y, 1);
  const out = new Float64Array(size);
  const idx = new Array<number>(a.shape.length).fill(0);
  for (let i = 0; i < size; i++) {
    out[i] = a.get(...idx);
    for (let d = a.shape.length - 1; d >= 0; d--) {
      if (++idx[d]! < a.shape[d]!) break;
      idx[d] = 0;
    }
  }
  return out;
}

/** Dense delta (alpha/r)·up·down in f64, as out × fanIn, computed independently of src/lora. */
export function dense(m: LoraModule): { out: number; n: number; data: Float64Array } {
  const r = m.down.shape[0]!;
  const out = m.up.shape[0]!;
  const n = m.down.size / r;
  const up = values64(m.up),
    down = values64(m.down);
  const data = new Float64Array(out * n);
  const s = m.alpha / r;
  for (let o = 0; o < out; o++) {
    for (let a = 0; a < r; a++) {
      const u = s * up[o * r + a]!;
      for (let i = 0; i < n; i++) data[o * n + i] = data[o * n + i]! + u * down[a * n + i]!;
    }
  }
  return { out, n, data };
}

/** Σ wᵢ·Δᵢ for one module path over several LoRAs (missing modules contribute 0). */
export function weightedDense(loras: Lora[], weights: number[], path: string): Float64Array | null {
  let acc: Float64Array | null = null;
  loras.forEach((l, i) => {
    const m = l.modules.get(path);
    if (!m) return;
    const d = dense(m).data;
    if (!acc) acc = new Float64Array(d.length);
    for (let j = 0; j < d.length; j++) acc[j] = acc[j]! + weights[i]! * d[j]!;
  });
  return acc;
}

export function frob(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * a[i]!;
  return Math.sqrt(s);
}

export function diffNorm(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i]! - b[i]!) ** 2;
  return Math.sqrt(s);
}

/** Eigenvalues of a symmetric matrix by cyclic two-sided Jacobi rotations (reference; O(n³) per sweep). */
export function jacobiEigenvalues(S: Float64Array, n: number): Float64Array {
  const A = Float64Array.from(S);
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += A[p * n + q]! ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = A[p * n + q]!;
        if (Math.abs(apq) < 1e-300) continue;
        const theta = (A[q * n + q]! - A[p * n + p]!) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1),
          s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = A[k * n + p]!,
            akq = A[k * n + q]!;
          A[k * n + p] = c * akp - s * akq;
          A[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = A[p * n + k]!,
            aqk = A[q * n + k]!;
          A[p * n + k] = c * apk - s * aqk;
          A[q * n + k] = s * apk + c * aqk;
        }
      }
    }
  }
  const ev = new Float64Array(n);
  for (let i = 0; i < n; i++) ev[i] = A[i * n + i]!;
  return ev.sort().reverse();
}

/** Singular values of a dense out × n matrix (descending) from the eigenvalues of its smaller Gram matrix. */
export function singularValues(D: Float64Array, out: number, n: number): Float64Array {
  const small = Math.min(out, n);
  const S = new Float64Array(small * small);
  for (let i = 0; i < small; i++) {
    for (let j = i; j < small; j++) {
      let s = 0;
      if (out <= n) for (let l = 0; l < n; l++) s += D[i * n + l]! * D[j * n + l]!;
      else for (let l = 0; l < out; l++) s += D[l * n + i]! * D[l * n + j]!;
      S[i * small + j] = s;
      S[j * small + i] = s;
    }
  }
  return jacobiEigenvalues(S, small).map((v) => Math.sqrt(Math.max(v, 0)));
}

/** The Eckart–Young error of the best rank-k approximation of the m × n matrix a: the root of its tail energy. */
export function optimalError(a: Float32Array, m: number, n: number, k: number): number {
  const sv = singularValues(Float64Array.from(a), m, n);
  let tail = 0;
  for (let j = k; j < sv.length; j++) tail += sv[j]! ** 2;
  return Math.sqrt(tail);
}

/** ‖a − up·down‖_F for up [m, r] and down [r, n], summed in f64. */
export function productError(
  a: Float32Array,
  m: number,
  n: number,
  up: Float32Array,
  down: Float32Array,
  r: number,
): number {
  let e = 0;
  for (let i = 0; i < m; i++)
    for (let c = 0; c < n; c++) {
      let v = 0;
      for (let j = 0; j < r; j++) v += up[i * r + j]! * down[j * n + c]!;
      e += (a[i * n + c]! - v) ** 2;
    }
  return Math.sqrt(e);
}
