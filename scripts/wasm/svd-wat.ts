/**
 * Generates src/lora/svd-kernel.wat: the two products of the truncated SVD (src/lora/svd.ts) with one dense
 * matrix A (m × n) that stays packed in the module's memory for every product of one SVD (src/lora/svd-resident.ts
 * packs it once; the general product kernel of kernel-wat.ts would copy and pack it again for every product).
 *
 * Data layout (bytes, f32):
 *   P   [nTiles][mP][8]   A packed by 8-column tiles: A(i, 8·jt + c) at P + jt·ts + (i·8 + c)·4; rows i ≥ m and
 *                         columns ≥ n are zero (mP = m rounded up to 4, nTiles = ⌈n/8⌉). The tile stride ts is
 *                         mP·32 bytes plus a little, so that the right product's reads of one row tile in 32
 *                         consecutive tiles do not all fall in the same L1 cache sets (mP·32 is often a multiple
 *                         of 4 KiB)
 *   X   [rowTiles][mP][4] the left product's small operand (rows × m, 4 rows at a time, zero-padded)
 *   Y   [lTiles][nP][8]   the right product's small operand transposed (n × rows, 8 columns at a time, nP = 8·nTiles)
 *   C   f32, the functions ADD into it (the caller zeroes it first): left — row-major with row stride `ldc`
 *       bytes; right — by 8-column tiles like P ([lTiles][mP][8], tile stride ts, ldc = 32), so that the tiles of
 *       one column tile lt, visited row tile after row tile, are one sequential stream
 *
 *   left:  C (4·rowTiles × 8·nTiles) += X·A   — B operand: P's 8-column tiles, A operand: X (splat)
 *   right: C (mP × 8·lTiles)         += A·Y   — A operand: P itself, read with load32_splat (the four rows of a
 *                                               row tile lie 32 bytes apart in each 8-column tile), B operand: Y
 *
 * Register tile 4 × 8 (eight f32x4 accumulators), as in the fused-update kernel: per step two v128 loads of the
 * B operand, four load32_splat of the A operand, eight multiply-adds. The inner dimension runs in blocks of
 * `kc` steps (the B block of one tile, kc·32 bytes, stays in L1 across every row tile; the A block in L2); the
 * accumulators are loaded from C and stored back around each block, so the sum over the inner dimension is
 * accumulated in order, the same arithmetic as one unblocked pass.
 */
import { get, indent } from './simd.js';

const MADD = (a: string, b: string, c: string): string => `(f32x4.relaxed_madd ${get(a)} ${get(b)} ${get(c)})`;

/** One step of the 4×8 tile: B at $b + bOff, the four A values at $a + aOff + t·aStride. */
function step(aOff: number, aStride: number, bOff: number): string[] {
  const lines = [
    `(local.set $b0 (v128.load offset=${bOff} (local.get $b)))`,
    `(local.set $b1 (v128.load offset=${bOff + 16} (local.get $b)))`,
  ];
  for (let t = 0; t < 4; t++) {
    lines.push(`(local.set $av (v128.load32_splat offset=${aOff + t * aStride} (local.get $a)))`);
    lines.push(`(local.set $c${t}0 ${MADD('av', 'b0', `c${t}0`)})`);
    lines.push(`(local.set $c${t}1 ${MADD('av', 'b1', `c${t}1`)})`);
  }
  return lines;
}

/** Load (or store) the tile's accumulators from C at $pc, rows $ldc bytes apart. */
function tileIo(store: boolean): string[] {
  const lines: string[] = [`(local.set $p (local.get $pc))`];
  for (let t = 0; t < 4; t++) {
    if (t > 0) lines.push(`(local.set $p (i32.add (local.get $p) (local.get $ldc)))`);
    for (const j of [0, 1]) {
      lines.push(
        store
          ? `(v128.store offset=${16 * j} (local.get $p) (local.get $c${t}${j}))`
          : `(local.set $c${t}${j} (v128.load offset=${16 * j} (local.get $p)))`,
      );
    }
  }
  return lines;
}

const LOCALS = `(local $a i32) (local $b i32) (local $p i32) (local $pc i32) (local $end i32)
    (local $k0 i32) (local $k1 i32) (local $it i32) (local $jt i32)
    (local $b0 v128) (local $b1 v128) (local $av v128)
    (local $c00 v128) (local $c01 v128) (local $c10 v128) (local $c11 v128)
    (local $c20 v128) (local $c21 v128) (local $c30 v128) (local $c31 v128)`;

/**
 * left(px, pp, ts, mP, rowTiles, nTiles, pc0, ldc, kc): C += X·A. For each block [k0, k1) of A's rows (kc at a time),
 * each 8-column tile jt, each row tile it: the tile of C at pc0 + 4·it·ldc + 32·jt accumulates
 * Σ_k X[4it..4it+3, k] ⊗ A[k, 8jt..8jt+7].
 */
const left = `  (func (export "left") (param $px i32) (param $pp i32) (param $ts i32) (param $mP i32) (param $rowTiles i32)
    (param $nTiles i32) (param $pc0 i32) (param $ldc i32) (param $kc i32)
    ${LOCALS}
    (local.set $k0 (i32.const 0))
    (block $done (loop $kL
      (br_if $done (i32.ge_u (local.get $k0) (local.get $mP)))
      (local.set $k1 (select (local.get $mP) (i32.add (local.get $k0) (local.get $kc))
        (i32.gt_u (i32.add (local.get $k0) (local.get $kc)) (local.get $mP))))
      (local.set $jt (i32.const 0))
      (block $jDone (loop $jL
        (br_if $jDone (i32.ge_u (local.get $jt) (local.get $nTiles)))
        (local.set $it (i32.const 0))
        (block $iDone (loop $iL
          (br_if $iDone (i32.ge_u (local.get $it) (local.get $rowTiles)))
          (local.set $pc (i32.add (i32.add (local.get $pc0) (i32.mul (i32.shl (local.get $it) (i32.const 2)) (local.get $ldc)))
            (i32.shl (local.get $jt) (i32.const 5))))
${indent(tileIo(false), 10)}
          (local.set $a (i32.add (local.get $px) (i32.shl (i32.add (i32.mul (local.get $it) (local.get $mP)) (local.get $k0)) (i32.const 4))))
          (local.set $b (i32.add (i32.add (local.get $pp) (i32.mul (local.get $jt) (local.get $ts))) (i32.shl (local.get $k0) (i32.const 5))))
          (local.set $end (i32.add (local.get $a) (i32.shl (i32.sub (local.get $k1) (local.get $k0)) (i32.const 4))))
          (loop $kStep
${indent(step(0, 4, 0), 12)}
            (local.set $a (i32.add (local.get $a) (i32.const 16)))
            (local.set $b (i32.add (local.get $b) (i32.const 32)))
            (br_if $kStep (i32.lt_u (local.get $a) (local.get $end))))
${indent(tileIo(true), 10)}
          (local.set $it (i32.add (local.get $it) (i32.const 1)))
          (br $iL)))
        (local.set $jt (i32.add (local.get $jt) (i32.const 1)))
        (br $jL)))
      (local.set $k0 (local.get $k1))
      (br $kL))))`;

/**
 * right(pp, ts, py, mP, nTiles, lTiles, pc0, ldc, kcTiles): C += A·Y. For each block of A's 8-column tiles
 * [k0, k1) (kcTiles at a time), each 8-column tile lt of Y (its block, kcTiles·256 bytes, stays in L1), each row
 * tile it of A (read from kcTiles tiles of P as as many sequential streams): the tile of C at
 * pc0 + lt·ts + 4·it·ldc accumulates Σ_j A[4it..4it+3, j] ⊗ Y[j, 8lt..8lt+7], eight j per tile of P.
 */
function rightFunc(): string {
  const steps: string[] = [];
  for (let s = 0; s < 8; s++) steps.push(...step(4 * s, 32, 32 * s));
  return `  (func (export "right") (param $pp i32) (param $ts i32) (param $py i32) (param $mP i32) (param $nTiles i32)
    (param $lTiles i32) (param $pc0 i32) (param $ldc i32) (param $kcTiles i32)
    ${LOCALS} (local $lt i32)
    (local.set $k0 (i32.const 0))
    (block $done (loop $kL
      (br_if $done (i32.ge_u (local.get $k0) (local.get $nTiles)))
      (local.set $k1 (select (local.get $nTiles) (i32.add (local.get $k0) (local.get $kcTiles))
        (i32.gt_u (i32.add (local.get $k0) (local.get $kcTiles)) (local.get $nTiles))))
      (local.set $lt (i32.const 0))
      (block $lDone (loop $lL
        (br_if $lDone (i32.ge_u (local.get $lt) (local.get $lTiles)))
        (local.set $it (i32.const 0))
        (block $iDone (loop $iL
          (br_if $iDone (i32.ge_u (i32.shl (local.get $it) (i32.const 2)) (local.get $mP)))
          (local.set $pc (i32.add (i32.add (local.get $pc0) (i32.mul (i32.shl (local.get $it) (i32.const 2)) (local.get $ldc)))
            (i32.mul (local.get $lt) (local.get $ts))))
${indent(tileIo(false), 10)}
          (local.set $a (i32.add (local.get $pp) (i32.add (i32.mul (local.get $k0) (local.get $ts)) (i32.shl (local.get $it) (i32.const 7)))))
          (local.set $b (i32.add (local.get $py) (i32.shl (i32.add (i32.mul (local.get $lt) (local.get $nTiles)) (local.get $k0)) (i32.const 8))))
          (local.set $jt (local.get $k0))
          (loop $jStep
${indent(steps, 12)}
            (local.set $a (i32.add (local.get $a) (local.get $ts)))
            (local.set $b (i32.add (local.get $b) (i32.const 256)))
            (local.set $jt (i32.add (local.get $jt) (i32.const 1)))
            (br_if $jStep (i32.lt_u (local.get $jt) (local.get $k1))))
${indent(tileIo(true), 10)}
          (local.set $it (i32.add (local.get $it) (i32.const 1)))
          (br $iL)))
        (local.set $lt (i32.add (local.get $lt) (i32.const 1)))
        (br $lL)))
      (local.set $k0 (local.get $k1))
      (br $kL))))`;
}

/** The module source (relaxed_madd form). See `svdKernelVariant` for the mul+add build. */
export function svdKernelWat(): string {
  return `;; Generated by scripts/build-wasm.ts from scripts/wasm/svd-wat.ts: do not edit by hand.
;; The truncated SVD's products with a resident packed matrix A: left C += X.A, right C += A.Y. See svd-wat.ts.
;; This text is the relaxed-SIMD build; svdKernelVariant() derives the mul+add build.
(module
  (import "env" "memory" (memory 1 65536))
${left}
${rightFunc()}
)
`;
}

const MADD_RE = /\(f32x4\.relaxed_madd (\(local\.get \$\w+\)) (\(local\.get \$\w+\)) (\(local\.get \$\w+\))\)/g;

/** The relaxed build as generated, or the plain one (f32x4.mul + f32x4.add instead of relaxed_madd). */
export function svdKernelVariant(wat: string, relaxed: boolean): string {
  return relaxed ? wat : wat.replace(MADD_RE, '(f32x4.add (f32x4.mul $1 $2) $3)');
}
