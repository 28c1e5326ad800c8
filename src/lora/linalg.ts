/**
 * Dense f64 linear algebra for rank reduction: Gram matrices of tall factor stacks, a pivoted (semi-definite)
 * Cholesky factorisation, a symmetric eigensolver (Householder tridiagonalisation + implicit QR with Wilkinson
 * shifts) and the two matrix products that rebuild the reduced factors.
 *
 * Conventions: every matrix is a Float64Array in row-major order with its dimensions passed alongside; "rows"
 * of a factor stack are the R rank-one directions, so the big operands are R × m with m the long dimension
 * (out channels of an `up`, in·kh·kw of a `down`). The hot kernels use 2 × 4 register tiles: on V8 that is what
 * keeps every loaded element in a register for several multiply-adds without spilling (≈3–4 GFLOP/s on one core
 * of the reference machine, against ≈0.8 for a plain dot-product loop).
 *
 * Nothing here allocates per element; callers pass the output arrays.
 */

import { LoraError } from '../core/errors.js';

/** Machine epsilon of f64. */
export const EPS64 = 2 ** -52;

/**
 * G = X·Xᵀ for X (rows × len, row-major): the Gram matrix of the rows, rows × rows, symmetric. The upper
 * triangle is computed in 2 × 4 tiles and mirrored, so G is exactly symmetric.
 */
export function gramRows(X: Float64Array, rows: number, len: number, G: Float64Array): void {
  for (let a = 0; a < rows; a += 2) {
    const pair = a + 1 < rows;
    for (let b = a & ~3; b < rows; b += 4) {
      if (pair && b + 4 <= rows) {
        const a0 = a * len,
          a1 = a0 + len;
        const b0 = b * len,
          b1 = b0 + len,
          b2 = b1 + len,
          b3 = b2 + len;
        let s00 = 0,
          s01 = 0,
          s02 = 0,
          s03 = 0,
          s10 = 0,
          s11 = 0,
          s12 = 0,
          s13 = 0;
        for (let i = 0; i < len; i++) {
          const x0 = X[a0 + i]!,
            x1 = X[a1 + i]!;
          const y0 = X[b0 + i]!,
            y1 = X[b1 + i]!,
            y2 = X[b2 + i]!,
            y3 = X[b3 + i]!;
          s00 += x0 * y0;
          s01 += x0 * y1;
          s02 += x0 * y2;
          s03 += x0 * y3;
          s10 += x1 * y0;
          s11 += x1 * y1;
          s12 += x1 * y2;
          s13 += x1 * y3;
        }
        let o = a * rows + b;
        G[o] = s00;
        G[o + 1] = s01;
        G[o + 2] = s02;
        G[o + 3] = s03;
        o += rows;
        G[o] = s10;
        G[o + 1] = s11;
        G[o + 2] = s12;
        G[o + 3] = s13;
      } else {
        for (let p = a; p < Math.min(a + 2, rows); p++) {
          for (let q = b; q < Math.min(b + 4, rows); q++) G[p * rows + q] = dot(X, p * len, X, q * len, len);
        }
      }
    }
  }
  for (let i = 1; i < rows; i++) for (let j = 0; j < i; j++) G[i * rows + j] = G[j * rows + i]!;
}

/** Σ x[xo+i]·y[yo+i] for i < len, with four partial sums. */
export function dot(x: Float64Array, xo: number, y: Float64Array, yo: number, len: number): number {
  let s0 = 0,
    s1 = 0,
    s2 = 0,
    s3 = 0;
  let i = 0;
  for (; i + 4 <= len; i += 4) {
    s0 += x[xo + i]! * y[yo + i]!;
    s1 += x[xo + i + 1]! * y[yo + i + 1]!;
    s2 += x[xo + i + 2]! * y[yo + i + 2]!;
    s3 += x[xo + i + 3]! * y[yo + i + 3]!;
  }
  for (; i < len; i++) s0 += x[xo + i]! * y[yo + i]!;
  return s0 + s1 + (s2 + s3);
}

/**
 * C = Xᵀ·Y with X (r × p) the big operand and Y (r × q) a small one, both row-major; C (p × q, row-major) is
 * written as f32 (the one rounding of a reduced factor). The reduction runs over the r rows.
 */
export function xtyToF32(X: Float64Array, Y: Float64Array, r: number, p: number, q: number, C: Float32Array): void {
  const q4 = q & ~3;
  let i = 0;
  for (; i + 2 <= p; i += 2) {
    let j = 0;
    for (; j < q4; j += 4) {
      let s00 = 0,
        s01 = 0,
        s02 = 0,
        s03 = 0,
        s10 = 0,
        s11 = 0,
        s12 = 0,
        s13 = 0;
      for (let a = 0, ox = i, oy = j; a < r; a++, ox += p, oy += q) {
        const x0 = X[ox]!,
          x1 = X[ox + 1]!;
        const y0 = Y[oy]!,
          y1 = Y[oy + 1]!,
          y2 = Y[oy + 2]!,
          y3 = Y[oy + 3]!;
        s00 += x0 * y0;
        s01 += x0 * y1;
        s02 += x0 * y2;
        s03 += x0 * y3;
        s10 += x1 * y0;
        s11 += x1 * y1;
        s12 += x1 * y2;
        s13 += x1 * y3;
      }
      let o = i * q + j;
      C[o] = s00;
      C[o + 1] = s01;
      C[o + 2] = s02;
      C[o + 3] = s03;
      o += q;
      C[o] = s10;
      C[o + 1] = s11;
      C[o + 2] = s12;
      C[o + 3] = s13;
    }
    for (; j < q; j++) {
      let s0 = 0,
        s1 = 0;
      for (let a = 0, ox = i, oy = j; a < r; a++, ox += p, oy += q) {
        const y = Y[oy]!;
        s0 += X[ox]! * y;
        s1 += X[ox + 1]! * y;
      }
      C[i * q + j] = s0;
      C[(i + 1) * q + j] = s1;
    }
  }
  for (; i < p; i++) {
    for (let j = 0; j < q; j++) {
      let s = 0;
      for (let a = 0, ox = i, oy = j; a < r; a++, ox += p, oy += q) s += X[ox]! * Y[oy]!;
      C[i * q + j] = s;
    }
  }
}

/** C (m × n) = A (m × k) · B (k × n), small dense row-major f64. */
export function matmul(
  A: Float64Array,
  B: Float64Array,
  m: number,
  k: number,
  n: number,
  C: Float64Array,
): Float64Array {
  C.fill(0, 0, m * n);
  for (let i = 0; i < m; i++) {
    const ci = i * n;
    for (let t = 0; t < k; t++) {
      const a = A[i * k + t]!;
      if (a === 0) continue;
      const bt = t * n;
      for (let j = 0; j < n; j++) C[ci + j] = C[ci + j]! + a * B[bt + j]!;
    }
  }
  return C;
}

export interface PivotedCholesky {
  /** Numerical rank: the number of rows of `factor`. */
  readonly rank: number;
  /**
   * F (rank × n, row-major) with Fᵀ·F = G up to the dropped trailing Schur complement, i.e. F plays the role of
   * the triangular factor of a QR (it is triangular up to the pivot permutation of its columns).
   */
  readonly factor: Float64Array;
}

/**
 * Pivoted Cholesky of a symmetric positive semi-definite G (n × n). G is first scaled to unit diagonal, so the
 * stopping rule is scale-free: it stops when the largest remaining pivot is ≤ `tol` (the squared sine of the
 * angle between the next direction and the span of those already taken). Zero rows/columns are skipped.
 */
export function pivotedCholesky(G: Float64Array, n: number, tol = 1e-14): PivotedCholesky {
  const scale = new Float64Array(n);
  const active: number[] = [];
  for (let i = 0; i < n; i++) {
    const d = G[i * n + i]!;
    if (d > 0 && Number.isFinite(d)) {
      scale[i] = Math.sqrt(d);
      active.push(i);
    }
  }
  const m = active.length;
  // Scaled copy of the active part: S = D⁻½ G D⁻½.
  const S = new Float64Array(m * m);
  for (let a = 0; a < m; a++) {
    const ia = active[a]!;
    for (let b = 0; b < m; b++) {
      const ib = active[b]!;
      S[a * m + b] = G[ia * n + ib]! / (scale[ia]! * scale[ib]!);
    }
  }
  const perm = Int32Array.from({ length: m }, (_, i) => i);
  const diag = new Float64Array(m);
  for (let i = 0; i < m; i++) diag[i] = S[i * m + i]!;
  // L (m × m) column-major in the permuted order: column k holds the k-th pivot direction.
  const L = new Float64Array(m * m);
  let rank = 0;
  for (let k = 0; k < m; k++) {
    let best = k;
    for (let i = k + 1; i < m; i++) if (diag[perm[i]!]! > diag[perm[best]!]!) best = i;
    const pk = perm[best]!;
    const pivot = diag[pk]!;
    if (!(pivot > tol)) break;
    perm[best] = perm[k]!;
    perm[k] = pk;
    const lkk = Math.sqrt(pivot);
    const colK = k * m;
    L[colK + pk] = lkk;
    for (let i = k + 1; i < m; i++) {
      const pi = perm[i]!;
      let s = S[pi * m + pk]!;
      for (let j = 0; j < k; j++) s -= L[j * m + pi]! * L[j * m + pk]!;
      const l = s / lkk;
      L[colK + pi] = l;
      diag[pi] = diag[pi]! - l * l;
    }
    rank++;
  }
  // Factor F = Lᵀ (scaled back): F[k, active[i]] = L[k][i] · scale[active[i]].
  const F = new Float64Array(rank * n);
  for (let k = 0; k < rank; k++) {
    for (let i = 0; i < m; i++) {
      const v = L[k * m + i]!;
      if (v !== 0) F[k * n + active[i]!] = v * scale[active[i]!]!;
    }
  }
  return { rank, factor: F };
}

export interface SymmetricEigen {
  /** Eigenvalues, descending. */
  readonly values: Float64Array;
  /** Eigenvectors as rows (n × n): row j belongs to values[j]. */
  readonly vectors: Float64Array;
}

/**
 * Eigen-decomposition of a symmetric matrix A (n × n, row-major; only read). Householder reduction to
 * tridiagonal form with the transformation accumulated, then implicit symmetric QR steps with Wilkinson shifts
 * (each Givens rotation applied to two contiguous rows of the transposed eigenvector matrix).
 */
export function symmetricEigen(A: Float64Array, n: number): SymmetricEigen {
  const { d, e, v, betas } = tridiagonalise(A, n);
  // --- Accumulate Q = H0·H1·…·H(n-3) backwards; only rows/cols > k change when H_k is applied.
  const Q = new Float64Array(n * n);
  for (let i = 0; i < n; i++) Q[i * n + i] = 1;
  const w = new Float64Array(n);
  for (let k = n - 3; k >= 0; k--) {
    const beta = betas[k]!;
    if (beta === 0) continue;
    const rowK = k * n;
    w.fill(0, k + 1, n);
    for (let i = k + 1; i < n; i++) {
      const vi = v[rowK + i]!;
      if (vi === 0) continue;
      const rowI = i * n;
      for (let j = k + 1; j < n; j++) w[j] = w[j]! + vi * Q[rowI + j]!;
    }
    for (let i = k + 1; i < n; i++) {
      const f = beta * v[rowK + i]!;
      if (f === 0) continue;
      const rowI = i * n;
      for (let j = k + 1; j < n; j++) Q[rowI + j] = Q[rowI + j]! - f * w[j]!;
    }
  }
  // Z holds the eigenvectors as rows: Z = Qᵀ, rotated along with the tridiagonal matrix.
  const Z = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) Z[j * n + i] = Q[i * n + j]!;
  tridiagonalQR(d, e, Z, n);
  // Sort descending.
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => d[b]! - d[a]!);
  const values = new Float64Array(n);
  const vectors = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    values[j] = d[order[j]!]!;
    vectors.set(Z.subarray(order[j]! * n, order[j]! * n + n), j * n);
  }
  return { values, vectors };
}

/**
 * The eigenvalues (descending) of a symmetric matrix A (n × n, row-major; only read): the same tridiagonalisation
 * and QR steps as symmetricEigen without forming the eigenvectors — about a fifth of its work, for callers that
 * only need the spectrum (the truncated SVD's convergence checks).
 */
export function symmetricEigenvalues(A: Float64Array, n: number): Float64Array {
  const { d, e } = tridiagonalise(A, n);
  tridiagonalQR(d, e, null, n);
  return d.sort().reverse();
}

/**
 * Householder reduction of symmetric A to tridiagonal form (diagonal d, off-diagonal e); the reflectors are kept
 * in the rows of v (row k: entries k+1..n-1) with their β in betas, for symmetricEigen to accumulate.
 */
function tridiagonalise(
  A: Float64Array,
  n: number,
): { d: Float64Array; e: Float64Array; v: Float64Array; betas: Float64Array } {
  const W = Float64Array.from(A.subarray(0, n * n));
  const d = new Float64Array(n);
  const e = new Float64Array(Math.max(n - 1, 0));
  const betas = new Float64Array(n);
  const p = new Float64Array(n);
  // --- Householder tridiagonalisation: for column k, reflect x = W[k+1.., k] onto a multiple of e1. The
  // reflector vector is kept in row k of W (entries k+1..n-1), β in betas[k].
  for (let k = 0; k + 2 < n; k++) {
    const rowK = k * n;
    let tail = 0;
    for (let i = k + 2; i < n; i++) tail += W[rowK + i]! * W[rowK + i]!;
    const x0 = W[rowK + k + 1]!;
    d[k] = W[rowK + k]!;
    if (tail === 0) {
      e[k] = x0;
      betas[k] = 0;
      continue;
    }
    const norm = Math.sqrt(x0 * x0 + tail);
    const alpha = x0 > 0 ? -norm : norm;
    const v0 = x0 - alpha;
    W[rowK + k + 1] = v0;
    const beta = 2 / (v0 * v0 + tail);
    betas[k] = beta;
    e[k] = alpha;
    // Trailing block B = W[k+1.., k+1..]: p = β·B·v, w = p − (β/2)(pᵀv)v, B ← B − v·wᵀ − w·vᵀ.
    let pv = 0;
    for (let i = k + 1; i < n; i++) {
      const rowI = i * n;
      let s = 0;
      for (let j = k + 1; j < n; j++) s += W[rowI + j]! * W[rowK + j]!;
      p[i] = beta * s;
      pv += p[i]! * W[rowK + i]!;
    }
    const half = 0.5 * beta * pv;
    for (let i = k + 1; i < n; i++) p[i] = p[i]! - half * W[rowK + i]!;
    for (let i = k + 1; i < n; i++) {
      const rowI = i * n;
      const vi = W[rowK + i]!,
        wi = p[i]!;
      for (let j = k + 1; j < n; j++) W[rowI + j] = W[rowI + j]! - vi * p[j]! - wi * W[rowK + j]!;
    }
  }
  if (n >= 2) {
    d[n - 2] = W[(n - 2) * n + n - 2]!;
    e[n - 2] = W[(n - 2) * n + n - 1]!;
  }
  if (n >= 1) d[n - 1] = W[(n - 1) * n + n - 1]!;
  return { d, e, v: W, betas };
}

/**
 * Diagonalise the symmetric tridiagonal matrix (d, e) in place by implicit QR steps with Wilkinson shifts; the
 * rotations are applied to the rows of Z (n × n) so that rows of Z become eigenvectors of the original matrix.
 */
function tridiagonalQR(d: Float64Array, e: Float64Array, Z: Float64Array | null, n: number): void {
  const maxIterations = 60 * Math.max(n, 1);
  let iterations = 0;
  let hi = n - 1;
  while (hi > 0) {
    // Deflate converged off-diagonals at the bottom.
    if (Math.abs(e[hi - 1]!) <= EPS64 * (Math.abs(d[hi - 1]!) + Math.abs(d[hi]!)) || e[hi - 1] === 0) {
      e[hi - 1] = 0;
      hi--;
      continue;
    }
    let lo = hi - 1;
    while (lo > 0) {
      const off = Math.abs(e[lo - 1]!);
      if (off <= EPS64 * (Math.abs(d[lo - 1]!) + Math.abs(d[lo]!)) || off === 0) {
        e[lo - 1] = 0;
        break;
      }
      lo--;
    }
    if (++iterations > maxIterations) {
      throw new LoraError(
        'LORA_NUMERICAL_FAILURE',
        `symmetric eigensolver: no convergence after ${maxIterations} QR steps on a ${n} × ${n} core (non-finite factor values?)`,
        { expected: 'convergence', found: { n, iterations: maxIterations } },
      );
    }
    // Wilkinson shift from the trailing 2×2 block.
    const dh = d[hi]!,
      eh = e[hi - 1]!;
    const delta = (d[hi - 1]! - dh) / 2;
    const denom = delta + (delta >= 0 ? 1 : -1) * Math.hypot(delta, eh);
    const mu = denom === 0 ? dh : dh - (eh * eh) / denom;
    let x = d[lo]! - mu;
    let z = e[lo]!;
    for (let k = lo; k < hi; k++) {
      const r = Math.hypot(x, z);
      const c = r === 0 ? 1 : x / r;
      const s = r === 0 ? 0 : z / r;
      if (k > lo) e[k - 1] = r;
      const a = d[k]!,
        b = e[k]!,
        dd = d[k + 1]!;
      const cc = c * c,
        ss = s * s,
        cs = c * s;
      d[k] = cc * a + 2 * cs * b + ss * dd;
      d[k + 1] = ss * a - 2 * cs * b + cc * dd;
      e[k] = cs * (dd - a) + (cc - ss) * b;
      if (k + 1 < hi) {
        z = s * e[k + 1]!;
        e[k + 1] = c * e[k + 1]!;
        x = e[k]!;
      }
      // Rows k and k+1 of Z: Z ← P·Z.
      if (!Z) continue;
      const rk = k * n,
        rk1 = rk + n;
      for (let j = 0; j < n; j++) {
        const zk = Z[rk + j]!,
          zk1 = Z[rk1 + j]!;
        Z[rk + j] = c * zk + s * zk1;
        Z[rk1 + j] = c * zk1 - s * zk;
      }
    }
  }
}

/**
 * L⁻¹ for the Cholesky factor G = L·Lᵀ of a symmetric positive definite G (n × n, row-major; only read): the
 * whitening of CholeskyQR (rows X with Gram matrix G give orthonormal rows L⁻¹·X). Null when a pivot falls to
 * `relTol` of its diagonal entry or below (G is numerically singular: the caller falls back to an eigen-
 * decomposition). `spread` is the smallest over the largest squared pivot, a cheap conditioning estimate.
 */
export function choleskyWhitening(
  G: Float64Array,
  n: number,
  relTol = 1e-10,
): { inverse: Float64Array; spread: number } | null {
  const L = new Float64Array(n * n);
  let lo = Number.POSITIVE_INFINITY,
    hi = 0;
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    for (let j = 0; j <= i; j++) {
      const rj = j * n;
      let s = G[ri + j]!;
      for (let t = 0; t < j; t++) s -= L[ri + t]! * L[rj + t]!;
      if (i === j) {
        if (!(s > relTol * G[ri + i]!) || !Number.isFinite(s)) return null;
        L[ri + i] = Math.sqrt(s);
        lo = Math.min(lo, s);
        hi = Math.max(hi, s);
      } else L[ri + j] = s / L[rj + j]!;
    }
  }
  // Forward substitution, column by column of the identity: X = L⁻¹ (lower triangular).
  const X = new Float64Array(n * n);
  for (let c = 0; c < n; c++) {
    for (let i = c; i < n; i++) {
      const ri = i * n;
      let s = i === c ? 1 : 0;
      for (let t = c; t < i; t++) s -= L[ri + t]! * X[t * n + c]!;
      X[ri + c] = s / L[ri + i]!;
    }
  }
  return { inverse: X, spread: hi > 0 ? lo / hi : 0 };
}

/**
 * The inverse of a small dense n × n matrix (row-major f64) by Gauss–Jordan elimination with partial pivoting, or
 * null when a pivot is exactly zero (singular). The caller judges conditioning (e.g. ‖A‖₁·‖A⁻¹‖₁).
 */
export function invertSmall(A: Float64Array, n: number): Float64Array | null {
  const a = Float64Array.from(A.subarray(0, n * n));
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) inv[i * n + i] = 1;
  for (let col = 0; col < n; col++) {
    let pivot = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(a[r * n + col]!) > Math.abs(a[pivot * n + col]!)) pivot = r;
    const p = a[pivot * n + col]!;
    if (p === 0 || !Number.isFinite(p)) return null;
    if (pivot !== col) {
      for (let j = 0; j < n; j++) {
        const t = a[col * n + j]!;
        a[col * n + j] = a[pivot * n + j]!;
        a[pivot * n + j] = t;
        const u = inv[col * n + j]!;
        inv[col * n + j] = inv[pivot * n + j]!;
        inv[pivot * n + j] = u;
      }
    }
    for (let j = 0; j < n; j++) {
      a[col * n + j] = a[col * n + j]! / p;
      inv[col * n + j] = inv[col * n + j]! / p;
    }
    for (let r = 0; r < n; r++) {
      if (r === col) continue;
      const f = a[r * n + col]!;
      if (f === 0) continue;
      for (let j = 0; j < n; j++) {
        a[r * n + j] = a[r * n + j]! - f * a[col * n + j]!;
        inv[r * n + j] = inv[r * n + j]! - f * inv[col * n + j]!;
      }
    }
  }
  return inv;
}

/** The 1-norm (largest column sum of absolute values) of a dense rows × cols row-major matrix. */
export function norm1(A: Float64Array, rows: number, cols: number): number {
  let best = 0;
  for (let j = 0; j < cols; j++) {
    let s = 0;
    for (let i = 0; i < rows; i++) s += Math.abs(A[i * cols + j]!);
    if (s > best) best = s;
  }
  return best;
}

/** Transpose a row-major rows × cols f32 matrix (cols × rows), in cache-friendly tiles; into `into` when given. */
export function transposeF32(x: Float32Array, rows: number, cols: number, into?: Float32Array): Float32Array {
  const t = into && into.length >= rows * cols ? into.subarray(0, rows * cols) : new Float32Array(rows * cols);
  const T = 32;
  for (let i0 = 0; i0 < rows; i0 += T) {
    const i1 = Math.min(rows, i0 + T);
    for (let j0 = 0; j0 < cols; j0 += T) {
      const j1 = Math.min(cols, j0 + T);
      for (let i = i0; i < i1; i++) for (let j = j0; j < j1; j++) t[j * rows + i] = x[i * cols + j] ?? 0;
    }
  }
  return t;
}
