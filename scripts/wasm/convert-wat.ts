/**
 * Generates src/core/dtype-wasm.wat: SIMD conversions between f32 and f16/bf16 over arrays in the module's own
 * memory. Every function takes (src, dst, n) with n a multiple of 8 and 16-byte aligned pointers; the JS side
 * (src/core/dtype-wasm.ts) copies chunks through a fixed scratch region and pads the tail.
 */
import {
  Consts,
  decodeF16,
  decodeF16x8Normal,
  encodeBf16,
  encodeF16,
  encodeF16Finite,
  f16x8AnySpecial,
  get,
  indent,
} from './simd.js';

export const CONVERT_PAGES = 8; // 512 KiB: two 128 KiB chunks + room

function loop(body: string[], srcStep: number, dstStep: number): string[] {
  return [
    `(block $done`,
    `  (br_if $done (i32.eqz (local.get $n)))`,
    `  (loop $next`,
    indent(body, 4),
    `    (local.set $src (i32.add (local.get $src) (i32.const ${srcStep})))`,
    `    (local.set $dst (i32.add (local.get $dst) (i32.const ${dstStep})))`,
    `    (local.set $n (i32.sub (local.get $n) (i32.const 8)))`,
    `    (br_if $next (local.get $n))))`,
  ];
}

const PARAMS = `(param $src i32) (param $dst i32) (param $n i32)`;
const LOCALS = `(local $h v128) (local $x v128) (local $w v128) (local $y v128) (local $z v128) (local $abs v128) (local $abs2 v128) (local $t1 v128) (local $t2 v128) (local $cnt v128)`;

function func(name: string, counts: boolean, build: (k: Consts) => string[], srcStep: number, dstStep: number): string {
  const k = new Consts();
  const body = build(k);
  const lines = [...k.init(), ...loop(body, srcStep, dstStep)];
  if (counts) {
    lines.push(
      `(i32.add (i32.add (i32x4.extract_lane 0 (local.get $cnt)) (i32x4.extract_lane 1 (local.get $cnt))) (i32.add (i32x4.extract_lane 2 (local.get $cnt)) (i32x4.extract_lane 3 (local.get $cnt))))`,
    );
  }
  return [
    `  (func (export "${name}") ${PARAMS}${counts ? ' (result i32)' : ''}`,
    `    ${LOCALS}`,
    `    ${k.decls()}`,
    `${indent(lines, 4)})`,
  ].join('\n');
}

export function convertWat(): string {
  // 8 halves per step: a fast path for normal halves (16-bit lane arithmetic + interleave), the full decoder
  // when any of the 8 is zero, subnormal, Inf or NaN
  const f16ToF32 = (k: Consts) => [
    `(local.set $h (v128.load (local.get $src)))`,
    `(if ${f16x8AnySpecial(k, 'h')} (then`,
    indent(
      [
        `(local.set $x (i32x4.extend_low_i16x8_u (local.get $h)))`,
        ...decodeF16(k, 'y', 'x', 't1', 't2'),
        `(v128.store (local.get $dst) (local.get $y))`,
        `(local.set $x (i32x4.extend_high_i16x8_u (local.get $h)))`,
        ...decodeF16(k, 'y', 'x', 't1', 't2'),
        `(v128.store offset=16 (local.get $dst) (local.get $y))`,
      ],
      2,
    ),
    `) (else`,
    indent(
      [
        ...decodeF16x8Normal(k, 'y', 'z', 'h', 't1', 't2'),
        `(v128.store (local.get $dst) (local.get $y))`,
        `(v128.store offset=16 (local.get $dst) (local.get $z))`,
      ],
      2,
    ),
    `))`,
  ];
  const bf16ToF32 = (k: Consts) => [
    `(local.set $h (v128.load (local.get $src)))`,
    // interleave zero low halves: lane i = h[i] << 16
    `(v128.store (local.get $dst) (i8x16.shuffle 16 16 0 1 16 16 2 3 16 16 4 5 16 16 6 7 (local.get $h) ${k.c(0)}))`,
    `(v128.store offset=16 (local.get $dst) (i8x16.shuffle 16 16 8 9 16 16 10 11 16 16 12 13 16 16 14 15 (local.get $h) ${k.c(0)}))`,
  ];
  // overflow: finite input that rounds to Inf: |x| ≥ 65520 (f16), |x| ≥ 0x7f7f8000 (bf16)
  const count = (k: Consts, abs: string, limit: number) =>
    `(local.set $cnt (i32x4.sub (local.get $cnt) (v128.andnot (i32x4.gt_s ${get(abs)} ${k.c(limit)}) (i32x4.gt_s ${get(abs)} ${k.c(0x7f7fffff)}))))`;
  // fast path when none of the 8 values overflows or is Inf/NaN (|x| < 65520): no special cases, no counting
  const f32ToF16 = (k: Consts) => [
    `(local.set $x (v128.load (local.get $src)))`,
    `(local.set $w (v128.load offset=16 (local.get $src)))`,
    `(local.set $abs (v128.and (local.get $x) ${k.c(0x7fffffff)}))`,
    `(local.set $abs2 (v128.and (local.get $w) ${k.c(0x7fffffff)}))`,
    `(if (v128.any_true (v128.or (i32x4.gt_s (local.get $abs) ${k.c(0x477fefff)}) (i32x4.gt_s (local.get $abs2) ${k.c(0x477fefff)}))) (then`,
    indent(
      [
        ...encodeF16(k, 'y', 'x', 'abs', 't1', 't2'),
        count(k, 'abs', 0x477fefff),
        ...encodeF16(k, 'z', 'w', 'abs', 't1', 't2'),
        count(k, 'abs', 0x477fefff),
      ],
      2,
    ),
    `) (else`,
    indent(
      [...encodeF16Finite(k, 'y', 'x', 'abs', 't1', 't2'), ...encodeF16Finite(k, 'z', 'w', 'abs2', 't1', 't2')],
      2,
    ),
    `))`,
    `(v128.store (local.get $dst) (i16x8.narrow_i32x4_u (local.get $y) (local.get $z)))`,
  ];
  const f32ToBf16 = (k: Consts) => [
    `(local.set $x (v128.load (local.get $src)))`,
    `(local.set $abs (v128.and (local.get $x) ${k.c(0x7fffffff)}))`,
    count(k, 'abs', 0x7f7f7fff),
    ...encodeBf16(k, 'y', 'x', 't1'),
    `(local.set $x (v128.load offset=16 (local.get $src)))`,
    `(local.set $abs (v128.and (local.get $x) ${k.c(0x7fffffff)}))`,
    count(k, 'abs', 0x7f7f7fff),
    ...encodeBf16(k, 'z', 'x', 't1'),
    `(v128.store (local.get $dst) (i16x8.narrow_i32x4_u (local.get $y) (local.get $z)))`,
  ];
  return `;; Generated by scripts/build-wasm.ts from scripts/wasm/convert-wat.ts: do not edit by hand.
;; SIMD conversions f16/bf16 <-> f32. (src, dst, n): n a multiple of 8, pointers 16-byte aligned.
;; f32_to_f16 / f32_to_bf16 return how many finite inputs became +-Inf.
;; Splat constants live in locals ($k<hex>): V8 rebuilds a v128.const at every use.
(module
  (memory (export "memory") ${CONVERT_PAGES})

${func('f16_to_f32', false, f16ToF32, 16, 32)}

${func('bf16_to_f32', false, bf16ToF32, 16, 32)}

${func('f32_to_f16', true, f32ToF16, 32, 16)}

${func('f32_to_bf16', true, f32ToBf16, 32, 16)}
)
`;
}
