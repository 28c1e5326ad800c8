/**
 * The F16 factors of `convert` formed in WASM (src/lora/factor-f16.ts, exactOutcomeF16) against the reference: the
 * JS Khatri–Rao factors (hadamardFactors) or exactOutcome's f32 factors, encoded by the scalar F16 encoder — the
 * same bits, the same count of non-zero values flushed to ±0, and null (the f32 path) for values F16 cannot hold.
 */
import ndarray from 'ndarray';
import { describe, expect, it } from 'vitest';
import { f32ToF16Scalar } from '../src/core/dtype-scalar.js';
import { convertModule, exactOutcomeF16 } from '../src/lora/convert-module.js';
import { factorF16 } from '../src/lora/factor-f16.js';
import { hadamardFactors } from '../src/lora/terms/index.js';
import type { HadamardTerm, LoraModule, Term } from '../src/lora/types.js';

let seed = 12345;
function rand(n: number, scale: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    // every 13th value tiny, so that products fall below F16's smallest subnormal (flushed) or into its subnormals
    a[i] = (seed / 2147483648 - 0.5) * scale * (i % 13 === 0 ? 1e-4 : 1);
  }
  return a;
}

/** The writer's F16 encoding: scalar reference bits and its flush count. */
function reference(src: Float32Array): { bits: Uint16Array; flushed: number } {
  const bits = new Uint16Array(src.length);
  f32ToF16Scalar(src, bits);
  let flushed = 0;
  for (let i = 0; i < src.length; i++) if ((bits[i]! & 0x7fff) === 0 && src[i] !== 0) flushed++;
  return { bits, flushed };
}

function loha(out: number, fanIn: number, ra: number, rb: number, scale: number, magnitude: number): HadamardTerm {
  return {
    kind: 'hadamard',
    shape: [out, fanIn],
    scale,
    a: { up: ndarray(rand(out * ra, magnitude), [out, ra]), down: ndarray(rand(ra * fanIn, magnitude), [ra, fanIn]) },
    b: { up: ndarray(rand(out * rb, magnitude), [out, rb]), down: ndarray(rand(rb * fanIn, magnitude), [rb, fanIn]) },
  };
}

const enc = factorF16();

describe.skipIf(!enc)('F16 factors formed in WASM = the JS factors encoded by the writer', () => {
  // odd ranks and widths (vector tails), a scale that is not a power of two (f64 rounding), blocks split across rows
  for (const [out, fanIn, ra, rb, scale, magnitude] of [
    [37, 53, 3, 5, 7 / 3, 1],
    [300, 301, 16, 17, 123.4567, 0.3],
    [65, 9, 7, 1, 1e-3, 1e-2],
    [640, 1280, 32, 32, 0.5, 0.1],
  ] as const) {
    it(`Khatri–Rao factors of a ${out}×${fanIn} LoHa, ranks ${ra} and ${rb}, scale ${scale}`, () => {
      const t = loha(out, fanIn, ra, rb, scale, magnitude);
      const js = hadamardFactors(t, 'm');
      const up = enc!.khatriRaoUp(t.a.up.data, t.b.up.data, out, ra, rb, scale)!;
      const down = enc!.khatriRaoDown(t.a.down.data, t.b.down.data, fanIn, ra, rb)!;
      const ru = reference(js.up);
      const rd = reference(js.down);
      expect(Buffer.compare(Buffer.from(up.bits.buffer), Buffer.from(ru.bits.buffer))).toBe(0);
      expect(Buffer.compare(Buffer.from(down.bits.buffer), Buffer.from(rd.bits.buffer))).toBe(0);
      expect([up.flushed, down.flushed]).toEqual([ru.flushed, rd.flushed]);
      expect(ru.flushed + rd.flushed).toBeGreaterThan(0);
      // and the plain encoder on the same f32 values
      const e = enc!.encode(js.up)!;
      expect(Buffer.compare(Buffer.from(e.bits.buffer), Buffer.from(ru.bits.buffer))).toBe(0);
      expect(e.flushed).toBe(ru.flushed);
    });
  }

  it('a value F16 cannot hold (≥ 65520, Inf, NaN) gives null; the next call starts clean', () => {
    for (const bad of [65520, -7e4, Number.POSITIVE_INFINITY, Number.NaN]) {
      const v = rand(101, 1);
      v[77] = bad;
      expect(enc!.encode(v)).toBeNull();
      expect(enc!.encode(rand(9, 1))).not.toBeNull();
    }
    // 65519 rounds to 65504, the largest F16: still encodable
    expect(enc!.encode(Float32Array.of(65519, -65519))?.bits).toEqual(Uint16Array.of(0x7bff, 0xfbff));
    const t = loha(24, 40, 4, 4, 1, 1);
    t.a.up.data[5] = 3e4;
    t.b.up.data[5] = 3e4;
    expect(enc!.khatriRaoUp(t.a.up.data, t.b.up.data, 24, 4, 4, 1)).toBeNull();
  });

  const kinds: [string, Term][] = [
    ['a LoHa written as Khatri–Rao factors', loha(48, 72, 4, 5, 0.75, 1)],
    ['a LoHa written as its dense delta (r1·r2 ≥ min(out, in))', loha(12, 30, 4, 4, 0.5, 1)],
    ['a conv LoHa', { ...loha(16, 9 * 8, 3, 3, 1, 1), shape: [16, 8, 3, 3] }],
    [
      'a plain LoRA module',
      { up: ndarray(rand(20 * 3, 1), [20, 3]), down: ndarray(rand(3 * 11, 1), [3, 11]), alpha: 2 } as LoraModule,
    ],
  ];
  for (const [what, t] of kinds) {
    it(`exactOutcomeF16 of ${what} = exactOutcome's factors encoded, with the same shapes`, () => {
      const ref = convertModule(t, 'm', undefined);
      const o = exactOutcomeF16(t, 'm');
      expect(o.f16).toBeDefined();
      expect(o.up).toBeUndefined();
      expect([o.rank, o.alpha, o.upShape, o.downShape]).toEqual([ref.rank, ref.alpha, ref.upShape, ref.downShape]);
      for (const f of ['up', 'down'] as const) {
        const r = reference(ref[f]!);
        expect(Buffer.compare(Buffer.from(o.f16![f].bits.buffer), Buffer.from(r.bits.buffer)), f).toBe(0);
        expect(o.f16![f].flushed).toBe(r.flushed);
      }
    });
  }

  it('exactOutcomeF16 leaves factors F16 cannot hold as f32 (the writer reports them)', () => {
    const t = loha(24, 40, 4, 4, 1, 1);
    t.a.up.data.fill(300);
    t.b.up.data.fill(300);
    const o = exactOutcomeF16(t, 'm');
    expect(o.f16).toBeUndefined();
    expect(o.up).toEqual(convertModule(t, 'm', undefined).up);
  });
});
