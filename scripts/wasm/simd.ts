/**
 * WAT snippets shared by the conversion module and the fused-update kernel: SIMD f16/bf16 ⇄ f32 on i32x4 lanes.
 * Each helper returns folded-expression WAT statements that read and write named v128 locals, so the
 * generators can inline them (V8 does not inline wasm calls, and a call per 4 values would cost more than the
 * conversion itself).
 *
 * Bit-exact with src/core/dtype-scalar.ts (tested exhaustively for decode, on edge patterns + random for encode).
 */

/** An i32x4 constant with the same value in every lane. */
export function c32(v: number): string {
  const h = `0x${(v >>> 0).toString(16).padStart(8, '0')}`;
  return `(v128.const i32x4 ${h} ${h} ${h} ${h})`;
}

export const get = (name: string): string => `(local.get $${name})`;

/**
 * Splat constants hoisted into locals. V8 rebuilds a v128.const from immediates at every use (several
 * instructions); a local costs at most one load. `c(v)` names the constant, `decls()` / `init()` declare and
 * set the locals at the top of the function.
 */
export class Consts {
  private readonly used = new Set<number>();
  /** hoist = false writes the v128.const inline at each use instead. */
  constructor(private readonly hoist = true) {}
  c(v: number): string {
    if (!this.hoist) return c32(v);
    const u = v >>> 0;
    this.used.add(u);
    return `(local.get $k${u.toString(16)})`;
  }
  decls(): string {
    return [...this.used].map((u) => `(local $k${u.toString(16)} v128)`).join(' ');
  }
  init(): string[] {
    return [...this.used].map((u) => `(local.set $k${u.toString(16)} ${c32(u)})`);
  }
}

/**
 * f16 → f32. `src` holds one half per i32 lane (zero-extended). Writes the f32 bit pattern to `dst`.
 * Normals: rebias the exponent. Subnormals: renormalise with one exact f32 subtraction (no f32 denormals are
 * touched, so no slow microcode paths). Inf/NaN: exponent forced to 255, payload kept.
 */
export function decodeF16(k: Consts, dst: string, src: string, t1: string, t2: string): string[] {
  return [
    // t1 = (h & 0x7fff) << 13 ; t2 = its exponent field
    `(local.set $${t1} (i32x4.shl (v128.and ${get(src)} ${k.c(0x7fff)}) (i32.const 13)))`,
    `(local.set $${t2} (v128.and ${get(t1)} ${k.c(0x0f800000)}))`,
    `(local.set $${t1} (i32x4.add ${get(t1)} ${k.c(0x38000000)}))`,
    // Inf/NaN: one more +0x38000000 brings the exponent to 255
    `(local.set $${t1} (v128.bitselect (i32x4.add ${get(t1)} ${k.c(0x38000000)}) ${get(t1)} (i32x4.eq ${get(t2)} ${k.c(0x0f800000)})))`,
    // zero/subnormal: (2^-14 · (1 + m/1024)) − 2^-14 = m · 2^-24, exact
    `(local.set $${t1} (v128.bitselect (f32x4.sub (i32x4.add ${get(t1)} ${k.c(0x00800000)}) ${k.c(0x38800000)}) ${get(t1)} (i32x4.eq ${get(t2)} ${k.c(0)})))`,
    `(local.set $${dst} (v128.or ${get(t1)} (i32x4.shl (v128.and ${get(src)} ${k.c(0x8000)}) (i32.const 16))))`,
  ];
}

/**
 * Expression: true when any of the 8 halves in `h` (i16x8) is zero, subnormal, Inf or NaN — the cases the
 * fast decoder below does not handle.
 */
export function f16x8AnySpecial(k: Consts, h: string): string {
  return `(v128.any_true (v128.or (i16x8.eq (v128.and ${get(h)} ${k.c(0x7c007c00)}) ${k.c(0)}) (i16x8.eq (v128.and ${get(h)} ${k.c(0x7c007c00)}) ${k.c(0x7c007c00)})))`;
}

/**
 * f16 → f32 for 8 normal halves in `h` (i16x8): builds the upper 16 bits of each f32 (sign, rebiased exponent,
 * top 7 mantissa bits) and the lower 16 bits (last 3 mantissa bits) in 16-bit lanes, then interleaves them.
 * Writes lanes 0–3 to `d0` and 4–7 to `d1`. Same bits as decodeF16 for normal halves.
 */
export function decodeF16x8Normal(k: Consts, d0: string, d1: string, h: string, hi: string, lo: string): string[] {
  return [
    `(local.set $${hi} (v128.or (i16x8.add (i16x8.shr_u (v128.and ${get(h)} ${k.c(0x7fff7fff)}) (i32.const 3)) ${k.c(0x38003800)}) (v128.and ${get(h)} ${k.c(0x80008000)})))`,
    `(local.set $${lo} (i16x8.shl ${get(h)} (i32.const 13)))`,
    `(local.set $${d0} (i8x16.shuffle 0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23 ${get(lo)} ${get(hi)}))`,
    `(local.set $${d1} (i8x16.shuffle 8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31 ${get(lo)} ${get(hi)}))`,
  ];
}

/**
 * f32 → f16, round to nearest even. `src` holds f32 bit patterns; `dst` receives one half per i32 lane
 * (upper 16 bits zero). Overflow (|x| ≥ 65520) gives ±Inf, NaN gives a quiet NaN with the top payload bits.
 * Uses `abs`, `t1`, `t2` as temporaries (`abs` keeps |x| bits on return, handy for overflow tests).
 */
export function encodeF16(k: Consts, dst: string, src: string, abs: string, t1: string, t2: string): string[] {
  return [
    `(local.set $${abs} (v128.and ${get(src)} ${k.c(0x7fffffff)}))`,
    // normal range: rebias (−0x38000000), round the 13 dropped bits to nearest even, shift
    `(local.set $${t1} (i32x4.shr_u (i32x4.add (i32x4.add ${get(abs)} ${k.c(0xc8000fff)}) (v128.and (i32x4.shr_u ${get(abs)} (i32.const 13)) ${k.c(1)})) (i32.const 13)))`,
    // below 2^-14: let an f32 add against 0.5 do the rounding, then take the low bits
    `(local.set $${t2} (i32x4.sub (f32x4.add ${get(abs)} ${k.c(0x3f000000)}) ${k.c(0x3f000000)}))`,
    `(local.set $${t1} (v128.bitselect ${get(t2)} ${get(t1)} (i32x4.gt_s ${k.c(0x38800000)} ${get(abs)})))`,
    // ≥ 65536 (or Inf/NaN): Inf, or quiet NaN with payload
    `(local.set $${t2} (v128.bitselect (v128.or ${k.c(0x7e00)} (v128.and (i32x4.shr_u ${get(abs)} (i32.const 13)) ${k.c(0x3ff)})) ${k.c(0x7c00)} (i32x4.gt_s ${get(abs)} ${k.c(0x7f800000)})))`,
    `(local.set $${t1} (v128.bitselect ${get(t2)} ${get(t1)} (i32x4.gt_s ${get(abs)} ${k.c(0x477fffff)})))`,
    `(local.set $${dst} (v128.or ${get(t1)} (i32x4.shr_u (v128.and ${get(src)} ${k.c(0x80000000)}) (i32.const 16))))`,
  ];
}

/**
 * f32 → f16 for values known to be finite and below 65520 in magnitude (no Inf/NaN/overflow handling).
 * `abs` must already hold |src| bits. Same bits as encodeF16 for those inputs.
 */
export function encodeF16Finite(k: Consts, dst: string, src: string, abs: string, t1: string, t2: string): string[] {
  return [
    `(local.set $${t1} (i32x4.shr_u (i32x4.add (i32x4.add ${get(abs)} ${k.c(0xc8000fff)}) (v128.and (i32x4.shr_u ${get(abs)} (i32.const 13)) ${k.c(1)})) (i32.const 13)))`,
    `(local.set $${t2} (i32x4.sub (f32x4.add ${get(abs)} ${k.c(0x3f000000)}) ${k.c(0x3f000000)}))`,
    `(local.set $${t1} (v128.bitselect ${get(t2)} ${get(t1)} (i32x4.gt_s ${k.c(0x38800000)} ${get(abs)})))`,
    `(local.set $${dst} (v128.or ${get(t1)} (i32x4.shr_u (v128.and ${get(src)} ${k.c(0x80000000)}) (i32.const 16))))`,
  ];
}

/** f32 → bf16 for values known not to be NaN (same bits as encodeBf16 for those inputs). */
export function encodeBf16NotNaN(k: Consts, dst: string, src: string): string[] {
  return [
    `(local.set $${dst} (i32x4.shr_u (i32x4.add (i32x4.add ${get(src)} ${k.c(0x7fff)}) (v128.and (i32x4.shr_u ${get(src)} (i32.const 16)) ${k.c(1)})) (i32.const 16)))`,
  ];
}

/**
 * f32 → bf16, round to nearest even; NaN → quiet NaN keeping sign and top payload. `dst` gets one bf16 per
 * i32 lane (upper bits zero). Overflow to ±Inf happens through the rounding carry.
 */
export function encodeBf16(k: Consts, dst: string, src: string, t1: string): string[] {
  return [
    `(local.set $${t1} (i32x4.shr_u (i32x4.add (i32x4.add ${get(src)} ${k.c(0x7fff)}) (v128.and (i32x4.shr_u ${get(src)} (i32.const 16)) ${k.c(1)})) (i32.const 16)))`,
    `(local.set $${dst} (v128.bitselect (v128.or (i32x4.shr_u ${get(src)} (i32.const 16)) ${k.c(0x40)}) ${get(t1)} (i32x4.gt_s (v128.and ${get(src)} ${k.c(0x7fffffff)}) ${k.c(0x7f800000)})))`,
  ];
}

/** Lanes (all ones) where an f32 bit pattern is ±Inf or NaN. */
export function f32NonFinite(k: Consts, v: string): string {
  return `(i32x4.eq (v128.and ${v} ${k.c(0x7f800000)}) ${k.c(0x7f800000)})`;
}

/** Indent a list of statements. */
export function indent(lines: string[], n: number): string {
  const pad = ' '.repeat(n);
  return lines.map((l) => pad + l).join('\n');
}
