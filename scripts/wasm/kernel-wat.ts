/**
 * Generates src/kernels/kernel.wat: the fused low-rank update W' = W + A·B with f32 math.
 *
 * Data layout (prepared by src/kernels/wasm-engine.ts):
 *   packed A  [rowTiles][r][4]  f32   (rows of U, 4 at a time, zero-padded; scales already folded in)
 *   packed B  [colTiles][r][8]  f32   (columns of D, 8 at a time, zero-padded)
 *   W source  row-major, row stride `ldsrc` bytes, in the stored dtype (F32/F16/BF16)
 *   W dest    row-major, row stride `lddst` bytes, in the output dtype (may alias the source)
 *
 * Register tile: 4 rows × 8 columns = 8 f32x4 accumulators. Per k: two v128 loads of B, four
 * load32_splat of A, eight multiply-adds (f32x4.relaxed_madd in the relaxed build, mul+add otherwise).
 * The epilogue reads W in its stored dtype, adds the accumulators, counts non-finite inputs and overflows,
 * optionally clamps, rounds once (RNE) to the output dtype and stores.
 *
 * Loop order: column panels of `nc` tiles (the B panel, r·nc·32 bytes, stays in L2), then row tiles (the
 * A strip of 16·r bytes stays in L1), then column tiles in the panel.
 */
import {
  c32,
  Consts,
  decodeF16,
  decodeF16x8Normal,
  encodeBf16,
  encodeBf16NotNaN,
  encodeF16,
  encodeF16Finite,
  f16x8AnySpecial,
  f32NonFinite,
  get,
  indent,
} from './simd.js';

export type Dt = 'f32' | 'f16' | 'bf16';
export const DTYPES: readonly Dt[] = ['f32', 'f16', 'bf16'];
const SIZE: Record<Dt, number> = { f32: 4, f16: 2, bf16: 2 };

/** k-loop unroll factor of the generated micro-kernel. */
export const K_UNROLL = 1;
/** Keep the epilogue's splat constants in locals (true) or rebuild them at each use (false). */
export const HOIST_CONSTS = true;

const MADD = (a: string, b: string, c: string): string => `(f32x4.relaxed_madd ${get(a)} ${get(b)} ${get(c)})`;

/**
 * One k step of the 4×8 tile, reading A at byte offset aOff and B at bOff from the running pointers, into the
 * accumulators `${acc}00` … `${acc}31`.
 */
function kStep(aOff: number, bOff: number, acc = 'c'): string[] {
  const lines = [
    `(local.set $b0 (v128.load offset=${bOff} (local.get $b)))`,
    `(local.set $b1 (v128.load offset=${bOff + 16} (local.get $b)))`,
  ];
  for (let i = 0; i < 4; i++) {
    lines.push(`(local.set $av (v128.load32_splat offset=${aOff + 4 * i} (local.get $a)))`);
    lines.push(`(local.set $${acc}${i}0 ${MADD('av', 'b0', `${acc}${i}0`)})`);
    lines.push(`(local.set $${acc}${i}1 ${MADD('av', 'b1', `${acc}${i}1`)})`);
  }
  return lines;
}

/** Load 8 stored values at pointer local `p` into f32x4 locals x0, x1. */
function loadRow(k: Consts, dt: Dt, p: string): string[] {
  switch (dt) {
    case 'f32':
      return [`(local.set $x0 (v128.load ${get(p)}))`, `(local.set $x1 (v128.load offset=16 ${get(p)}))`];
    case 'f16':
      // fast path for 8 normal halves; the full decoder when one is zero, subnormal, Inf or NaN
      return [
        `(local.set $h (v128.load ${get(p)}))`,
        `(if ${f16x8AnySpecial(k, 'h')} (then`,
        indent(
          [
            `(local.set $o0 (i32x4.extend_low_i16x8_u (local.get $h)))`,
            ...decodeF16(k, 'x0', 'o0', 't1', 't2'),
            `(local.set $o0 (i32x4.extend_high_i16x8_u (local.get $h)))`,
            ...decodeF16(k, 'x1', 'o0', 't1', 't2'),
          ],
          2,
        ),
        `) (else`,
        indent(decodeF16x8Normal(k, 'x0', 'x1', 'h', 't1', 't2'), 2),
        `))`,
      ];
    case 'bf16':
      return [
        `(local.set $h (v128.load ${get(p)}))`,
        `(local.set $x0 (i8x16.shuffle 16 16 0 1 16 16 2 3 16 16 4 5 16 16 6 7 (local.get $h) ${k.c(0)}))`,
        `(local.set $x1 (i8x16.shuffle 16 16 8 9 16 16 10 11 16 16 12 13 16 16 14 15 (local.get $h) ${k.c(0)}))`,
      ];
  }
}

/**
 * Largest |y| bit pattern (f32) that is still finite in the output dtype after rounding: above it the stored
 * value is ±Inf (or NaN when y is NaN).
 */
const LIMIT: Record<Dt, number> = { f32: 0x7f7fffff, f16: 0x477fefff, bf16: 0x7f7f7fff };
/** Largest finite value of the output dtype, as f32 bits (what clamping writes, with the sign of y). */
const MAXF: Record<Dt, number> = { f32: 0x7f7fffff, f16: 0x477fe000, bf16: 0x7f7f0000 };

/**
 * Special cases of one row (rare): count non-finite inputs and overflows, clamp ±Inf results when asked.
 * Runs only when some |y| exceeds LIMIT, which covers every non-finite input too (Inf/NaN input ⇒ y Inf/NaN).
 */
function special(k: Consts, dt: Dt): string[] {
  const lines: string[] = [];
  for (const j of [0, 1]) {
    const x = `x${j}`;
    const y = `y${j}`;
    lines.push(
      `(local.set $n0 ${f32NonFinite(k, get(x))})`,
      `(local.set $cntIn (i32x4.sub (local.get $cntIn) (local.get $n0)))`,
      `(local.set $abs (v128.and ${get(y)} ${k.c(0x7fffffff)}))`,
      // overflow: finite input, result beyond the output dtype
      `(local.set $m (v128.andnot (i32x4.gt_s (local.get $abs) ${k.c(LIMIT[dt])}) (local.get $n0)))`,
      `(local.set $cntOv (i32x4.sub (local.get $cntOv) (local.get $m)))`,
      // clamp (when requested) the overflowed lanes that are not NaN to ±max
      `(local.set $${y} (v128.bitselect (v128.or (v128.and ${get(y)} ${k.c(0x80000000)}) ${k.c(MAXF[dt])}) ${get(y)} ` +
        `(v128.and (v128.and (local.get $m) (local.get $clampv)) (i32x4.gt_s ${k.c(0x7f800001)} (local.get $abs)))))`,
    );
  }
  return lines;
}

/**
 * Round y0,y1 (f32) to the output dtype and store 8 values at pointer local `p`. `fast`: every |y| ≤ LIMIT
 * (finite, no overflow), with |y0|,|y1| bits in a0,a1, so the Inf/NaN handling of the encoders can be skipped.
 */
function storeRow(k: Consts, dt: Dt, p: string, fast: boolean): string[] {
  switch (dt) {
    case 'f32':
      return [`(v128.store ${get(p)} (local.get $y0))`, `(v128.store offset=16 ${get(p)} (local.get $y1))`];
    case 'f16':
      return [
        ...(fast ? encodeF16Finite(k, 'o0', 'y0', 'a0', 't1', 't2') : encodeF16(k, 'o0', 'y0', 'abs', 't1', 't2')),
        ...(fast ? encodeF16Finite(k, 'o1', 'y1', 'a1', 't1', 't2') : encodeF16(k, 'o1', 'y1', 'abs', 't1', 't2')),
        `(v128.store ${get(p)} (i16x8.narrow_i32x4_u (local.get $o0) (local.get $o1)))`,
      ];
    case 'bf16':
      return [
        ...(fast ? encodeBf16NotNaN(k, 'o0', 'y0') : encodeBf16(k, 'o0', 'y0', 't1')),
        ...(fast ? encodeBf16NotNaN(k, 'o1', 'y1') : encodeBf16(k, 'o1', 'y1', 't1')),
        `(v128.store ${get(p)} (i16x8.narrow_i32x4_u (local.get $o0) (local.get $o1)))`,
      ];
  }
}

/** ps = psrc + it·4·ldsrc + jt·8·size: the tile's first stored W value. */
const tileSrc = (src: Dt): string =>
  `(local.set $ps (i32.add (i32.add (local.get $psrc) (i32.mul (i32.shl (local.get $it) (i32.const 2)) (local.get $ldsrc))) (i32.mul (local.get $jt) (i32.const ${8 * SIZE[src]}))))`;

/**
 * The tile's epilogue: y = x + acc per row, counted, clamped when asked, rounded once and stored. x is the stored
 * W row (update functions) or, for the Hadamard and Kronecker functions (`hadamard`), W' from the thread's tile
 * scratch.
 */
function epilogue(k: Consts, src: Dt, dst: Dt, hadamard = false): string[] {
  const lines: string[] = [
    ...(hadamard ? [] : [tileSrc(src)]),
    `(local.set $pd (i32.add (i32.add (local.get $pdst) (i32.mul (i32.shl (local.get $it) (i32.const 2)) (local.get $lddst))) (i32.mul (local.get $jt) (i32.const ${8 * SIZE[dst]}))))`,
  ];
  const sp = special(k, dst);
  for (let i = 0; i < 4; i++) {
    if (i > 0) {
      if (!hadamard) lines.push(`(local.set $ps (i32.add (local.get $ps) (local.get $ldsrc)))`);
      lines.push(`(local.set $pd (i32.add (local.get $pd) (local.get $lddst)))`);
    }
    if (hadamard)
      lines.push(
        `(local.set $x0 (v128.load offset=${32 * i} (local.get $pt)))`,
        `(local.set $x1 (v128.load offset=${32 * i + 16} (local.get $pt)))`,
      );
    else lines.push(...loadRow(k, src, 'ps'));
    lines.push(`(local.set $y0 (f32x4.add (local.get $x0) (local.get $c${i}0)))`);
    lines.push(`(local.set $y1 (f32x4.add (local.get $x1) (local.get $c${i}1)))`);
    lines.push(`(local.set $a0 (v128.and (local.get $y0) ${k.c(0x7fffffff)}))`);
    lines.push(`(local.set $a1 (v128.and (local.get $y1) ${k.c(0x7fffffff)}))`);
    if (dst === 'f32') {
      lines.push(
        `(if (v128.any_true (v128.or (i32x4.gt_s (local.get $a0) ${k.c(LIMIT[dst])}) (i32x4.gt_s (local.get $a1) ${k.c(LIMIT[dst])}))) (then`,
        indent(sp, 2),
        `))`,
        ...storeRow(k, dst, 'pd', true),
      );
    } else {
      lines.push(
        `(if (v128.any_true (v128.or (i32x4.gt_s (local.get $a0) ${k.c(LIMIT[dst])}) (i32x4.gt_s (local.get $a1) ${k.c(LIMIT[dst])}))) (then`,
        indent([...sp, ...storeRow(k, dst, 'pd', false)], 2),
        `) (else`,
        indent(storeRow(k, dst, 'pd', true), 2),
        `))`,
      );
    }
  }
  return lines;
}

/**
 * Where the Hadamard functions read their two factor pairs and the tile scratch: seven i32 (pa1, pb1, r1, pa2, pb2,
 * r2, scratch; the scratch holds 128 bytes per count slot).
 */
export const HADAMARD_PARAMS_OFFSET = 952;
/** Where the count slots start (8 bytes per thread; src/kernels/wasm-engine.ts). */
const COUNTS_OFFSET = 0;
/** Where the Hadamard and Kronecker functions read their two f64 coefficients (s, then c): the end of the count area (threads use 8·64 bytes). */
export const HADAMARD_COEF_OFFSET = 1008;
/**
 * Where the Kronecker functions read their sides and the block's rows: five i32 (L, R, o2, first row, end row) —
 * L and R are the expanded sides (see kroneckerStage), the rows are the block's global rows [first, end). Their tile
 * scratch is the Hadamard functions' (the seventh i32 at HADAMARD_PARAMS_OFFSET).
 */
export const KRONECKER_PARAMS_OFFSET = 984;

/**
 * The 4×8 product tile of one packed factor pair into the accumulators `${acc}00` … `${acc}31` (zeroed first):
 * A strip at pa + it·16·r, B strip at pb + jt·32·r, r steps (none when r is 0).
 */
function productTile(pa: string, pb: string, r: string, acc: string, label: string): string[] {
  const zero: string[] = [];
  for (let i = 0; i < 4; i++) for (let j = 0; j < 2; j++) zero.push(`(local.set $${acc}${i}${j} ${c32(0)})`);
  return [
    ...zero,
    `(local.set $a (i32.add ${get(pa)} (i32.mul (local.get $it) (i32.shl ${get(r)} (i32.const 4)))))`,
    `(local.set $b (i32.add ${get(pb)} (i32.mul (local.get $jt) (i32.shl ${get(r)} (i32.const 5)))))`,
    `(local.set $aEnd (i32.add (local.get $a) (i32.shl ${get(r)} (i32.const 4))))`,
    `(if ${get(r)} (then`,
    `  (loop $${label}`,
    indent(kStep(0, 0, acc), 4),
    `    (local.set $a (i32.add (local.get $a) (i32.const 16)))`,
    `    (local.set $b (i32.add (local.get $b) (i32.const 32)))`,
    `    (br_if $${label} (i32.lt_u (local.get $a) (local.get $aEnd))))))`,
  ];
}

/** The f64 lanes 0, 1 of an f32x4 (`high`: lanes 2, 3). */
const promote = (v: string, high: boolean): string =>
  high
    ? `(f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 ${get(v)} ${get(v)}))`
    : `(f64x2.promote_low_f32x4 ${get(v)})`;

/**
 * out = f32(w + c·f32(s·p1·p2)) on four lanes, two at a time in f64: the arithmetic and the two f32 roundings of
 * adding a LoHa's dense delta in JS (view[i] + c·Δ[i], Δ = s·p1·p2 rounded to f32).
 */
function hadamardLanes(out: string, w: string, p1: string, p2: string): string[] {
  const half = (high: boolean, to: string): string =>
    `(local.set $${to} (f32x4.demote_f64x2_zero (f64x2.add ${promote(w, high)} (f64x2.mul (local.get $cv) ` +
    `(f64x2.promote_low_f32x4 (f32x4.demote_f64x2_zero (f64x2.mul (f64x2.mul (local.get $sv) ${promote(p1, high)}) ${promote(p2, high)})))))))`;
  return [
    half(false, 'lo'),
    half(true, 'hi'),
    `(local.set $${out} (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $lo) (local.get $hi)))`,
  ];
}

/**
 * The Hadamard stage of a tile: with P1 in the thread's tile scratch ($pt, 4 rows × 32 bytes) and P2 in `c`, each
 * row's W' = f32(W + c·f32(s·P1·P2)) replaces P1 there, in the values of the passes it replaces: W32 = W + 0 (a
 * rank-0 update to f32), Pk = 0 + Ak·Bk (the update kernel's product over a zero region), then the f64 combine.
 */
function hadamardStage(k: Consts, src: Dt): string[] {
  const lines = [tileSrc(src)];
  for (let i = 0; i < 4; i++) {
    if (i > 0) lines.push(`(local.set $ps (i32.add (local.get $ps) (local.get $ldsrc)))`);
    lines.push(...loadRow(k, src, 'ps'));
    for (const j of [0, 1]) {
      lines.push(
        `(local.set $x${j} (f32x4.add (local.get $x${j}) ${k.c(0)}))`,
        `(local.set $p1 (f32x4.add ${k.c(0)} (v128.load offset=${32 * i + 16 * j} (local.get $pt))))`,
        `(local.set $p2 (f32x4.add ${k.c(0)} (local.get $c${i}${j})))`,
        ...hadamardLanes('p1', `x${j}`, 'p1', 'p2'),
        `(v128.store offset=${32 * i + 16 * j} (local.get $pt) (local.get $p1))`,
      );
    }
  }
  return lines;
}

/**
 * out = f32(w + c·Δ) on four lanes, two at a time in f64, with Δ = f32(x·r), x = s·left[a, c] (f64, two lanes at
 * byte `xo` from the pointer local `xp`), and Δ = +0 where x is 0 (whatever r is): the arithmetic, the two f32
 * roundings and the zero rule of the Kronecker product written into the f32 rows in JS
 * (src/lora/terms/kronecker.ts addKronecker; before, the kernel's kronecker_add pass) — where x is 0 that code adds
 * c·0, which is c·(+0) here.
 */
function kroneckerLanes(out: string, w: string, xp: string, xo: number, r: string): string[] {
  const half = (high: boolean, to: string): string[] => [
    `(local.set $x64 (v128.load offset=${xo + (high ? 16 : 0)} ${get(xp)}))`,
    `(local.set $${to} (f32x4.demote_f64x2_zero (f64x2.add ${promote(w, high)} (f64x2.mul (local.get $cv) ` +
      `(v128.andnot (f64x2.promote_low_f32x4 (f32x4.demote_f64x2_zero (f64x2.mul (local.get $x64) ${promote(r, high)}))) ` +
      `(f64x2.eq (local.get $x64) (local.get $z64)))))))`,
  ];
  return [
    ...half(false, 'lo'),
    ...half(true, 'hi'),
    `(local.set $${out} (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $lo) (local.get $hi)))`,
  ];
}

/**
 * The row pointers of a Kronecker row tile: for tile row i, global row g = first + 4·it + i (a padding row past
 * the block's end uses the first row: its W is NaN, so is its result), a = g / o2, b = g mod o2, and
 * ql_i / qr_i point at row a of L (row stride 2·ldk when L is f64, `lf64`, else ldk) / row b of R (row stride
 * ldk = colsP·4 bytes).
 */
function kroneckerRows(lf64: boolean): string[] {
  const lines = [`(local.set $g (i32.add (local.get $g0) (i32.shl (local.get $it) (i32.const 2))))`];
  for (let i = 0; i < 4; i++) {
    lines.push(
      `(local.set $gi (i32.add (local.get $g) (i32.const ${i})))`,
      `(if (i32.ge_u (local.get $gi) (local.get $gEnd)) (then (local.set $gi (local.get $g0))))`,
      `(local.set $ka (i32.div_u (local.get $gi) (local.get $o2)))`,
      `(local.set $ql${i} (i32.add (local.get $pl) (i32.shl (i32.mul (local.get $ka) (local.get $ldk)) (i32.const ${lf64 ? 1 : 0}))))`,
      `(local.set $qr${i} (i32.add (local.get $pr) (i32.mul (i32.sub (local.get $gi) (i32.mul (local.get $ka) (local.get $o2))) (local.get $ldk))))`,
    );
  }
  return lines;
}

/**
 * The Kronecker stage of a kronunit_* tile: W' = f32(W32 + f32(L·R)) in f32, L = c·s·left expanded in f32. run()
 * picks these functions only where that is the f64 stage's arithmetic exactly: c = ±1 and every c·s·left[a, c] an
 * f32 (finite): then x·r is exact in f64, so f32(x·r) is the f32 product; c·Δ = ±Δ; and f32(w + Δ) computed in f64
 * is the f32 sum (f64 has more than 2·24 + 2 bits); every right[b, d] finite: then x = 0 gives ±0, and w + ±0 = w
 * (w is never −0 after W + 0), the value the zero rule gives.
 */
function kroneckerUnitStage(k: Consts, src: Dt): string[] {
  const lines = [tileSrc(src), `(local.set $jo (i32.shl (local.get $jt) (i32.const 5)))`];
  for (let i = 0; i < 4; i++) {
    if (i > 0) lines.push(`(local.set $ps (i32.add (local.get $ps) (local.get $ldsrc)))`);
    lines.push(...loadRow(k, src, 'ps'));
    for (const j of [0, 1]) {
      lines.push(
        `(local.set $x${j} (f32x4.add (local.get $x${j}) ${k.c(0)}))`,
        `(local.set $p1 (v128.load offset=${16 * j} (i32.add (local.get $ql${i}) (local.get $jo))))`,
        `(local.set $p2 (v128.load offset=${16 * j} (i32.add (local.get $qr${i}) (local.get $jo))))`,
        `(v128.store offset=${32 * i + 16 * j} (local.get $pt) (f32x4.add (local.get $x${j}) (f32x4.mul (local.get $p1) (local.get $p2))))`,
      );
    }
  }
  return lines;
}

/**
 * The Kronecker stage of a tile: each row's W' = f32(W + c·Δ) into the thread's tile scratch ($pt), in the values
 * of the passes it replaces: W32 = W + 0 (a rank-0 update to f32), then Δ[g, j] = L[a, j]·R[b, j] added in f64.
 * L [o1, colsP] (f64) and R [o2, colsP] (f32) are the sides expanded along the columns (L[a, c·n2 + d] =
 * s·left[a, c] in f64, R[b, c·n2 + d] = right[b, d], zero in the padding columns), so a tile's 8 columns are four
 * v128 loads of L and two of R.
 */
function kroneckerStage(k: Consts, src: Dt): string[] {
  const lines = [tileSrc(src), `(local.set $jo (i32.shl (local.get $jt) (i32.const 5)))`];
  for (let i = 0; i < 4; i++) {
    if (i > 0) lines.push(`(local.set $ps (i32.add (local.get $ps) (local.get $ldsrc)))`);
    lines.push(
      ...loadRow(k, src, 'ps'),
      `(local.set $xp (i32.add (local.get $ql${i}) (i32.shl (local.get $jo) (i32.const 1))))`,
    );
    for (const j of [0, 1]) {
      lines.push(
        `(local.set $x${j} (f32x4.add (local.get $x${j}) ${k.c(0)}))`,
        `(local.set $p2 (v128.load offset=${16 * j} (i32.add (local.get $qr${i}) (local.get $jo))))`,
        ...kroneckerLanes('p1', `x${j}`, 'xp', 32 * j, 'p2'),
        `(v128.store offset=${32 * i + 16 * j} (local.get $pt) (local.get $p1))`,
      );
    }
  }
  return lines;
}

/** The generated update functions: the plain update, and the LoHa and LoKr forms that add a term first. */
type FuncKind = 'update' | 'hadamard' | 'kronecker' | 'kronunit';

/**
 * update_{src}_{dst}: W' = W + U·D over row tiles [it0, it1), column tiles [jt0, jt1).
 * hadamard_{src}_{dst}: W' = f32(W + c·f32(s·(A1·B1)⊙(A2·B2))) + U·D per tile, both products in
 * registers (pairs and coefficients read from HADAMARD_PARAMS_OFFSET / HADAMARD_COEF_OFFSET), then the same
 * epilogue: one rounding to the output dtype. Same values as the passes update(W→f32), two products over a zero
 * region, the f64 combine and update(f32→dst) run one after the other, without their memory traffic.
 * kronecker_{src}_{dst}: W' = f32(W + c·f32(s·left[a, c]·right[b, d])) + U·D per tile (sides and rows read from
 * KRONECKER_PARAMS_OFFSET, see kroneckerStage), then the same epilogue: the values of the passes update(W→f32),
 * the Kronecker add into the f32 rows and update(f32→dst), in one pass over W.
 */
function updateFunc(src: Dt, dst: Dt, kind: FuncKind = 'update'): string {
  const hadamard = kind === 'hadamard';
  const kronecker = kind === 'kronecker' || kind === 'kronunit';
  const k = new Consts(HOIST_CONSTS);
  const epi = epilogue(k, src, dst, kind !== 'update');
  const stage = hadamard
    ? hadamardStage(k, src)
    : kind === 'kronecker'
      ? kroneckerStage(k, src)
      : kind === 'kronunit'
        ? kroneckerUnitStage(k, src)
        : [];
  const accs: string[] = [];
  for (let i = 0; i < 4; i++) for (let j = 0; j < 2; j++) accs.push(`c${i}${j}`);
  const zero = accs.map((c) => `(local.set $${c} ${c32(0)})`);
  const unrolled: string[] = [];
  for (let u = 0; u < K_UNROLL; u++) unrolled.push(...kStep(16 * u, 32 * u));
  const v128Locals = [
    ...accs,
    'b0',
    'b1',
    'av',
    'cntIn',
    'cntOv',
    'clampv',
    'x0',
    'x1',
    'y0',
    'y1',
    'a0',
    'a1',
    'h',
    'n0',
    'o0',
    'o1',
    'abs',
    't1',
    't2',
    'm',
    ...(kind !== 'update' ? ['sv', 'cv', 'p1', 'p2', 'lo', 'hi'] : []),
    ...(kronecker ? ['x64', 'z64'] : []),
  ];
  const plainTile = [
    indent(zero, 6),
    `      (local.set $a (i32.add (local.get $pa) (i32.mul (local.get $it) (local.get $astride))))`,
    `      (local.set $b (i32.add (local.get $pb) (i32.mul (local.get $jt) (local.get $bstride))))`,
    `      (local.set $aEnd (i32.add (local.get $a) (i32.shl (local.get $rmain) (i32.const 4))))`,
    `      (if (local.get $rmain) (then`,
    `        (loop $k`,
    indent(unrolled, 10),
    `          (local.set $a (i32.add (local.get $a) (i32.const ${16 * K_UNROLL})))`,
    `          (local.set $b (i32.add (local.get $b) (i32.const ${32 * K_UNROLL})))`,
    `          (br_if $k (i32.lt_u (local.get $a) (local.get $aEnd))))))`,
    // remainder k steps (r mod K_UNROLL)
    ...Array.from({ length: K_UNROLL - 1 }, (_, u) => [
      `      (if (i32.gt_u (i32.and (local.get $r) (i32.const ${K_UNROLL - 1})) (i32.const ${u})) (then`,
      indent(kStep(16 * u, 32 * u), 8),
      `      ))`,
    ]).flat(),
  ];
  // one set of accumulators at a time (more would not fit the registers): P1 and then W' wait in the tile scratch
  const hadamardTile = [
    indent(productTile('pa1', 'pb1', 'r1', 'c', 'k1'), 6),
    ...[0, 1, 2, 3].flatMap((i) =>
      [0, 1].map((j) => `      (v128.store offset=${32 * i + 16 * j} (local.get $pt) (local.get $c${i}${j}))`),
    ),
    indent(productTile('pa2', 'pb2', 'r2', 'c', 'k2'), 6),
    indent(stage, 6),
    indent(productTile('pa', 'pb', 'r', 'c', 'k'), 6),
  ];
  // W' waits in the tile scratch while U·D runs in the accumulators
  const kroneckerTile = [indent(stage, 6), indent(productTile('pa', 'pb', 'r', 'c', 'k'), 6)];
  /** This thread's tile scratch: 128 bytes per count slot (pcount = counts + 8·slot). */
  const scratchInit = `(local.set $pt (i32.add (i32.load (i32.const ${HADAMARD_PARAMS_OFFSET + 24})) (i32.shl (i32.sub (local.get $pcount) (i32.const ${COUNTS_OFFSET})) (i32.const 4))))`;
  const coefInit = [
    `(local.set $sv (f64x2.splat (f64.load (i32.const ${HADAMARD_COEF_OFFSET}))))`,
    `(local.set $cv (f64x2.splat (f64.load (i32.const ${HADAMARD_COEF_OFFSET + 8}))))`,
  ];
  const hadamardInit = [
    `(local.set $pa1 (i32.load (i32.const ${HADAMARD_PARAMS_OFFSET})))`,
    `(local.set $pb1 (i32.load (i32.const ${HADAMARD_PARAMS_OFFSET + 4})))`,
    `(local.set $r1 (i32.load (i32.const ${HADAMARD_PARAMS_OFFSET + 8})))`,
    `(local.set $pa2 (i32.load (i32.const ${HADAMARD_PARAMS_OFFSET + 12})))`,
    `(local.set $pb2 (i32.load (i32.const ${HADAMARD_PARAMS_OFFSET + 16})))`,
    `(local.set $r2 (i32.load (i32.const ${HADAMARD_PARAMS_OFFSET + 20})))`,
    scratchInit,
    ...coefInit,
  ];
  const kroneckerInit = [
    `(local.set $pl (i32.load (i32.const ${KRONECKER_PARAMS_OFFSET})))`,
    `(local.set $pr (i32.load (i32.const ${KRONECKER_PARAMS_OFFSET + 4})))`,
    `(local.set $o2 (i32.load (i32.const ${KRONECKER_PARAMS_OFFSET + 8})))`,
    `(local.set $g0 (i32.load (i32.const ${KRONECKER_PARAMS_OFFSET + 12})))`,
    `(local.set $gEnd (i32.load (i32.const ${KRONECKER_PARAMS_OFFSET + 16})))`,
    // the sides' row stride: colsP f32 values (ldsrc is colsP stored values)
    `(local.set $ldk (i32.shl (local.get $ldsrc) (i32.const ${Math.log2(4 / SIZE[src])})))`,
    scratchInit,
    // s is already in L
    coefInit[1]!,
    `(local.set $z64 ${c32(0)})`,
  ];
  const body = [
    `(if (i32.or (i32.ge_u (local.get $it0) (local.get $it1)) (i32.ge_u (local.get $jt0) (local.get $jt1))) (then (return)))`,
    ...k.init(),
    ...(hadamard ? hadamardInit : kronecker ? kroneckerInit : []),
    `(local.set $clampv (i32x4.splat (i32.sub (i32.const 0) (local.get $clamp))))`,
    `(local.set $cntIn ${c32(0)})`,
    `(local.set $cntOv ${c32(0)})`,
    // bytes of one A strip / B strip, and the unrolled part of r
    `(local.set $astride (i32.shl (local.get $r) (i32.const 4)))`,
    `(local.set $bstride (i32.shl (local.get $r) (i32.const 5)))`,
    `(local.set $rmain (i32.and (local.get $r) (i32.const ${-K_UNROLL})))`,
    `(local.set $jc (local.get $jt0))`,
    `(loop $panels`,
    `  (local.set $jcEnd (select (i32.add (local.get $jc) (local.get $nc)) (local.get $jt1) (i32.lt_u (i32.add (local.get $jc) (local.get $nc)) (local.get $jt1))))`,
    `  (local.set $it (local.get $it0))`,
    `  (loop $rowtiles`,
    `    (local.set $jt (local.get $jc))`,
    ...(kronecker ? [indent(kroneckerRows(kind === 'kronecker'), 4)] : []),
    `    (loop $coltiles`,
    ...(hadamard ? hadamardTile : kronecker ? kroneckerTile : plainTile),
    indent(epi, 6),
    `      (local.set $jt (i32.add (local.get $jt) (i32.const 1)))`,
    `      (br_if $coltiles (i32.lt_u (local.get $jt) (local.get $jcEnd))))`,
    `    (local.set $it (i32.add (local.get $it) (i32.const 1)))`,
    `    (br_if $rowtiles (i32.lt_u (local.get $it) (local.get $it1))))`,
    `  (local.set $jc (local.get $jcEnd))`,
    `  (br_if $panels (i32.lt_u (local.get $jc) (local.get $jt1))))`,
    // counts[0] += Σ cntIn lanes ; counts[1] += Σ cntOv lanes
    `(i32.store (local.get $pcount) (i32.add (i32.load (local.get $pcount)) (i32.add (i32.add (i32x4.extract_lane 0 (local.get $cntIn)) (i32x4.extract_lane 1 (local.get $cntIn))) (i32.add (i32x4.extract_lane 2 (local.get $cntIn)) (i32x4.extract_lane 3 (local.get $cntIn))))))`,
    `(i32.store offset=4 (local.get $pcount) (i32.add (i32.load offset=4 (local.get $pcount)) (i32.add (i32.add (i32x4.extract_lane 0 (local.get $cntOv)) (i32x4.extract_lane 1 (local.get $cntOv))) (i32.add (i32x4.extract_lane 2 (local.get $cntOv)) (i32x4.extract_lane 3 (local.get $cntOv))))))`,
  ];
  const params = [
    'pa',
    'pb',
    'r',
    'psrc',
    'ldsrc',
    'pdst',
    'lddst',
    'it0',
    'it1',
    'jt0',
    'jt1',
    'nc',
    'clamp',
    'pcount',
  ]
    .map((p) => `(param $${p} i32)`)
    .join(' ');
  const i32Locals = [
    'jc',
    'jcEnd',
    'it',
    'jt',
    'a',
    'b',
    'aEnd',
    'astride',
    'bstride',
    'rmain',
    'ps',
    'pd',
    ...(hadamard ? ['pa1', 'pb1', 'r1', 'pa2', 'pb2', 'r2', 'pt'] : []),
    ...(kronecker
      ? [
          'pl',
          'pr',
          'o2',
          'g0',
          'gEnd',
          'ldk',
          'pt',
          'jo',
          'xp',
          'g',
          'gi',
          'ka',
          'ql0',
          'ql1',
          'ql2',
          'ql3',
          'qr0',
          'qr1',
          'qr2',
          'qr3',
        ]
      : []),
  ]
    .map((l) => `(local $${l} i32)`)
    .join(' ');
  return [
    `  (func (export "${kind}_${src}_${dst}") ${params}`,
    `    ${i32Locals}`,
    `    ${v128Locals.map((l) => `(local $${l} v128)`).join(' ')}`,
    `    ${k.decls()}`,
    indent(body, 4),
    `  )`,
  ].join('\n');
}

/** pack_a(src, dst, rows, r): U [rows][r] → [ceil(rows/4)][r][4], zero padded. */
const packA = `  (func (export "pack_a") (param $src i32) (param $dst i32) (param $rows i32) (param $r i32)
    (local $i i32) (local $k i32) (local $rowsP i32) (local $v f32)
    (local.set $rowsP (i32.and (i32.add (local.get $rows) (i32.const 3)) (i32.const -4)))
    (if (i32.eqz (local.get $r)) (then (return)))
    (block $done
      (br_if $done (i32.eqz (local.get $rowsP)))
      (loop $rowsL
        (local.set $k (i32.const 0))
        (loop $ks
          (local.set $v (f32.const 0))
          (if (i32.lt_u (local.get $i) (local.get $rows)) (then
            (local.set $v (f32.load (i32.add (local.get $src) (i32.shl (i32.add (i32.mul (local.get $i) (local.get $r)) (local.get $k)) (i32.const 2)))))))
          ;; dst[(i>>2)*r*4 + k*4 + (i&3)]
          (f32.store (i32.add (local.get $dst) (i32.shl (i32.add (i32.add (i32.mul (i32.shr_u (local.get $i) (i32.const 2)) (i32.shl (local.get $r) (i32.const 2))) (i32.shl (local.get $k) (i32.const 2))) (i32.and (local.get $i) (i32.const 3))) (i32.const 2))) (local.get $v))
          (local.set $k (i32.add (local.get $k) (i32.const 1)))
          (br_if $ks (i32.lt_u (local.get $k) (local.get $r))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $rowsL (i32.lt_u (local.get $i) (local.get $rowsP))))))`;

/** pack_b(src, dst, cols, r): D [r][cols] → [ceil(cols/8)][r][8], zero padded (src rows 16-byte aligned or not). */
const packB = `  (func (export "pack_b") (param $src i32) (param $dst i32) (param $cols i32) (param $r i32)
    (local $k i32) (local $j i32) (local $full i32) (local $s i32) (local $d i32) (local $tile i32) (local $rem i32)
    (local.set $full (i32.shr_u (local.get $cols) (i32.const 3)))
    (local.set $rem (i32.and (local.get $cols) (i32.const 7)))
    (local.set $tile (i32.shl (local.get $r) (i32.const 5)))
    (block $done
      (br_if $done (i32.eqz (local.get $r)))
      (loop $ks
        (local.set $s (i32.add (local.get $src) (i32.shl (i32.mul (local.get $k) (local.get $cols)) (i32.const 2))))
        (local.set $d (i32.add (local.get $dst) (i32.shl (local.get $k) (i32.const 5))))
        (local.set $j (i32.const 0))
        (block $fullDone
          (br_if $fullDone (i32.eqz (local.get $full)))
          (loop $tiles
            (v128.store (local.get $d) (v128.load (local.get $s)))
            (v128.store offset=16 (local.get $d) (v128.load offset=16 (local.get $s)))
            (local.set $s (i32.add (local.get $s) (i32.const 32)))
            (local.set $d (i32.add (local.get $d) (local.get $tile)))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br_if $tiles (i32.lt_u (local.get $j) (local.get $full)))))
        (if (local.get $rem) (then
          (v128.store (local.get $d) ${c32(0)})
          (v128.store offset=16 (local.get $d) ${c32(0)})
          (local.set $j (i32.const 0))
          (loop $tail
            (f32.store (i32.add (local.get $d) (i32.shl (local.get $j) (i32.const 2))) (f32.load (i32.add (local.get $s) (i32.shl (local.get $j) (i32.const 2)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br_if $tail (i32.lt_u (local.get $j) (local.get $rem))))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br_if $ks (i32.lt_u (local.get $k) (local.get $r))))))`;

/** The kernel module source (relaxed_madd form, non-shared memory). See `kernelVariant` for the others. */
export function kernelWat(): string {
  const funcs: string[] = [];
  for (const s of DTYPES) for (const d of DTYPES) funcs.push(updateFunc(s, d));
  for (const s of DTYPES) for (const d of DTYPES) funcs.push(updateFunc(s, d, 'hadamard'));
  for (const s of DTYPES) for (const d of DTYPES) funcs.push(updateFunc(s, d, 'kronecker'));
  for (const s of DTYPES) for (const d of DTYPES) funcs.push(updateFunc(s, d, 'kronunit'));
  return `;; Generated by scripts/build-wasm.ts from scripts/wasm/kernel-wat.ts: do not edit by hand.
;; Fused low-rank update W' = W + A.B (f32 math, one rounding to the output dtype). See kernel-wat.ts.
;; This text is the relaxed-SIMD, private-memory build; the other builds are derived by kernelVariant():
;; mul+add replaces f32x4.relaxed_madd, and the memory import gains "shared".
(module
  (import "env" "memory" (memory 1 65536))
${packA}
${packB}
${funcs.join('\n')}
)
`;
}

const MADD_RE = /\(f32x4\.relaxed_madd (\(local\.get \$\w+\)) (\(local\.get \$\w+\)) (\(local\.get \$\w+\))\)/g;

/** Derive a build: relaxed (f32x4.relaxed_madd) or not (f32x4.mul + f32x4.add), shared memory or not. */
export function kernelVariant(wat: string, relaxed: boolean, shared: boolean): string {
  let out = wat;
  if (!relaxed) out = out.replace(MADD_RE, '(f32x4.add (f32x4.mul $1 $2) $3)');
  if (shared) out = out.replace('(memory 1 65536))', '(memory 1 65536 shared))');
  return out;
}
