/**
 * Generates src/lora/factor-f16.wat: the exact factors of `convert` formed and encoded to F16 in one module, so a
 * worker thread hands the writer finished bytes (src/lora/factor-f16.ts drives it block by block).
 *
 * - kr_up: rows of the Khatri–Rao up factor of a LoHa, U[o, p·rb + q] = f32(f64(s·A[o, p]) · B[o, q]) — the same
 *   f64 arithmetic and one rounding to f32 as the JS loop of src/lora/terms/hadamard.ts (f64x2 lanes).
 * - mul_row: one row of the face-splitting down factor, D[j] = A[j]·B[j] in f32 (the exact product of two f32
 *   values rounded once, as JS's f64 product stored into a Float32Array).
 * - encode_f16: f32 → F16 bits, round to nearest even (the helpers of ./simd.ts, bit-exact with
 *   src/core/dtype-scalar.ts), returning how many non-zero values became ±0 (the writer's flushedToZero count) and
 *   adding to a global how many were at or above 65520 in magnitude, Inf or NaN (take_special): the caller then
 *   leaves those values to the writer's f32 path, which reports them as errors.
 */
import { Consts, encodeF16, encodeF16Finite, get, indent } from './simd.js';

/** Initial pages (512 KiB): the f32 block, the F16 block and room; the JS side grows it for the inputs. */
export const FACTOR_F16_PAGES = 8;

function krUp(): string {
  return `  (func (export "kr_up") (param $a i32) (param $b i32) (param $ra i32) (param $rb i32) (param $rows i32) (param $scale f64) (param $dst i32)
    (local $p i32) (local $q i32) (local $rb4 i32) (local $brow i32) (local $x f64) (local $vx v128) (local $v v128)
    (local.set $rb4 (i32.and (local.get $rb) (i32.const -4)))
    (block $rows_done
      (br_if $rows_done (i32.eqz (local.get $rows)))
      (loop $row
        (local.set $p (local.get $ra))
        (block $p_done
          (br_if $p_done (i32.eqz (local.get $p)))
          (loop $pp
            (local.set $x (f64.mul (local.get $scale) (f64.promote_f32 (f32.load (local.get $a)))))
            (local.set $vx (f64x2.splat (local.get $x)))
            (local.set $brow (local.get $b))
            (local.set $q (i32.const 0))
            (block $v_done
              (br_if $v_done (i32.ge_u (local.get $q) (local.get $rb4)))
              (loop $vq
                (local.set $v (v128.load (local.get $brow)))
                (v128.store (local.get $dst)
                  (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
                    (f32x4.demote_f64x2_zero (f64x2.mul (local.get $vx) (f64x2.promote_low_f32x4 (local.get $v))))
                    (f32x4.demote_f64x2_zero (f64x2.mul (local.get $vx)
                      (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $v) (local.get $v)))))))
                (local.set $brow (i32.add (local.get $brow) (i32.const 16)))
                (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
                (local.set $q (i32.add (local.get $q) (i32.const 4)))
                (br_if $vq (i32.lt_u (local.get $q) (local.get $rb4)))))
            (block $s_done
              (br_if $s_done (i32.ge_u (local.get $q) (local.get $rb)))
              (loop $sq
                (f32.store (local.get $dst) (f32.demote_f64 (f64.mul (local.get $x) (f64.promote_f32 (f32.load (local.get $brow))))))
                (local.set $brow (i32.add (local.get $brow) (i32.const 4)))
                (local.set $dst (i32.add (local.get $dst) (i32.const 4)))
                (local.set $q (i32.add (local.get $q) (i32.const 1)))
                (br_if $sq (i32.lt_u (local.get $q) (local.get $rb)))))
            (local.set $a (i32.add (local.get $a) (i32.const 4)))
            (local.set $p (i32.sub (local.get $p) (i32.const 1)))
            (br_if $pp (local.get $p))))
        (local.set $b (i32.add (local.get $b) (i32.shl (local.get $rb) (i32.const 2))))
        (local.set $rows (i32.sub (local.get $rows) (i32.const 1)))
        (br_if $row (local.get $rows))))
  )`;
}

function mulRow(): string {
  return `  (func (export "mul_row") (param $a i32) (param $b i32) (param $n i32) (param $dst i32)
    (local $n4 i32) (local $j i32)
    (local.set $n4 (i32.and (local.get $n) (i32.const -4)))
    (block $v_done
      (br_if $v_done (i32.ge_u (local.get $j) (local.get $n4)))
      (loop $v
        (v128.store (local.get $dst) (f32x4.mul (v128.load (local.get $a)) (v128.load (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 16)))
        (local.set $b (i32.add (local.get $b) (i32.const 16)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
        (local.set $j (i32.add (local.get $j) (i32.const 4)))
        (br_if $v (i32.lt_u (local.get $j) (local.get $n4)))))
    (block $s_done
      (br_if $s_done (i32.ge_u (local.get $j) (local.get $n)))
      (loop $s
        (f32.store (local.get $dst) (f32.mul (f32.load (local.get $a)) (f32.load (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 4)))
        (local.set $b (i32.add (local.get $b) (i32.const 4)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 4)))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br_if $s (i32.lt_u (local.get $j) (local.get $n)))))
  )`;
}

function encode(): string {
  const k = new Consts();
  // lanes at or above 65520 (they round to Inf), Inf or NaN
  const big = (abs: string) => `(i32x4.gt_s ${get(abs)} ${k.c(0x477fefff)})`;
  // non-zero inputs whose F16 bits are ±0
  const flushed = (h: string, abs: string) =>
    `(local.set $cnt (i32x4.sub (local.get $cnt) (v128.andnot (i32x4.eq (v128.and ${get(h)} ${k.c(0x7fff)}) ${k.c(0)}) (i32x4.eq ${get(abs)} ${k.c(0)}))))`;
  const body = [
    `(local.set $x (v128.load (local.get $src)))`,
    `(local.set $w (v128.load offset=16 (local.get $src)))`,
    `(local.set $abs (v128.and (local.get $x) ${k.c(0x7fffffff)}))`,
    `(local.set $abs2 (v128.and (local.get $w) ${k.c(0x7fffffff)}))`,
    `(if (v128.any_true (v128.or ${big('abs')} ${big('abs2')})) (then`,
    indent(
      [
        `(local.set $spc (i32x4.sub (i32x4.sub (local.get $spc) ${big('abs')}) ${big('abs2')}))`,
        ...encodeF16(k, 'y', 'x', 'abs', 't1', 't2'),
        ...encodeF16(k, 'z', 'w', 'abs2', 't1', 't2'),
      ],
      2,
    ),
    `) (else`,
    indent(
      [...encodeF16Finite(k, 'y', 'x', 'abs', 't1', 't2'), ...encodeF16Finite(k, 'z', 'w', 'abs2', 't1', 't2')],
      2,
    ),
    `))`,
    flushed('y', 'abs'),
    flushed('z', 'abs2'),
    `(v128.store (local.get $dst) (i16x8.narrow_i32x4_u (local.get $y) (local.get $z)))`,
  ];
  const sum = (v: string) =>
    `(i32.add (i32.add (i32x4.extract_lane 0 (local.get $${v})) (i32x4.extract_lane 1 (local.get $${v}))) (i32.add (i32x4.extract_lane 2 (local.get $${v})) (i32x4.extract_lane 3 (local.get $${v}))))`;
  const lines = [
    ...k.init(),
    `(block $done`,
    `  (br_if $done (i32.eqz (local.get $n)))`,
    `  (loop $next`,
    indent(body, 4),
    `    (local.set $src (i32.add (local.get $src) (i32.const 32)))`,
    `    (local.set $dst (i32.add (local.get $dst) (i32.const 16)))`,
    `    (local.set $n (i32.sub (local.get $n) (i32.const 8)))`,
    `    (br_if $next (local.get $n))))`,
    `(global.set $special (i32.add (global.get $special) ${sum('spc')}))`,
    sum('cnt'),
  ];
  return [
    `  (func (export "encode_f16") (param $src i32) (param $dst i32) (param $n i32) (result i32)`,
    `    (local $x v128) (local $w v128) (local $y v128) (local $z v128) (local $abs v128) (local $abs2 v128) (local $t1 v128) (local $t2 v128) (local $cnt v128) (local $spc v128)`,
    `    ${k.decls()}`,
    `${indent(lines, 4)})`,
  ].join('\n');
}

export function factorF16Wat(): string {
  return `;; Generated by scripts/build-wasm.ts from scripts/wasm/factor-f16-wat.ts: do not edit by hand.
;; The exact factors of a LoHa (Khatri-Rao up, face-splitting down) formed in f32 exactly as the JS reference does,
;; and f32 -> F16 encoding with the flush-to-zero count and a count of values F16 cannot hold.
;; encode_f16 (src, dst, n): n a multiple of 8.
(module
  (memory (export "memory") ${FACTOR_F16_PAGES})
  (global $special (mut i32) (i32.const 0))

${krUp()}

${mulRow()}

${encode()}

  (func (export "take_special") (result i32) (local $s i32)
    (local.set $s (global.get $special))
    (global.set $special (i32.const 0))
    (local.get $s))
)
`;
}
