import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ArgumentError } from '../src/core/errors.js';
import { CONVERT_CHUNK, getConvert, getWasmConvert, scalarConvert, type WasmConvert } from '../src/core/dtype-wasm.js';
import {
  f16BitsToF32Bits,
  f32BitsToBf16Bits,
  f32BitsToF16Bits,
  f32FromBits,
  numberToBf16Bits,
  numberToBf16BitsExact,
  numberToF16Bits,
  numberToF16BitsExact,
} from '../src/core/dtype-scalar.js';

const wasm = getWasmConvert() as WasmConvert;

const ALL_HALVES = Uint16Array.from({ length: 65536 }, (_, i) => i);

/** binary16 value by the textbook formula (independent of the bit tricks in scalar.ts). */
function f16Formula(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 31) return m ? NaN : s * Infinity;
  if (e === 0) return s * m * 2 ** -24;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

function bits(f: Float32Array): Uint32Array {
  return new Uint32Array(f.buffer, f.byteOffset, f.length);
}

/** Encoder edge cases: around every binary16 / bfloat16 rounding boundary, specials, extremes. */
function edgePatterns(): Uint32Array {
  const out: number[] = [
    0,
    0x80000000,
    0x7f800000,
    0xff800000,
    0x7fc00000,
    0xffc00000,
    0x7f800001,
    0x7fbfffff,
    0xff800001,
    0x7f7fffff,
    0xff7fffff,
    0x00000001,
    0x80000001,
    0x007fffff,
    0x00800000,
    0x477fe000,
    0x477fefff,
    0x477ff000,
    0x477ff001,
    0x47800000, // 65504, below/at/above the Inf tie, 65536
    0x33000000,
    0x33000001,
    0x32ffffff,
    0x33800000,
    0x33c00000, // 2^-25 (tie → 0), just above, 2^-24, 1.5·2^-24
    0x387fe000,
    0x387ff000,
    0x38800000,
    0x38801000, // around the smallest normal half
    0x7f7f7fff,
    0x7f7f8000,
    0x7f7f8001,
    0x7f7fc000, // bfloat16 overflow boundary
  ];
  // for every half h: its exact value, and values a hair above/below and exactly half-way to the next half
  for (let h = 0; h < 0x7c00; h += 7) {
    const b = f16BitsToF32Bits(h);
    const next = f16BitsToF32Bits(h + 1);
    const mid = (b + next) >>> 1; // the tie in f32 bits (same binade) — ties are exact in f32
    for (const v of [b, mid, mid - 1, mid + 1]) {
      out.push(v >>> 0, (v | 0x80000000) >>> 0);
    }
  }
  // bfloat16 ties: low 16 bits exactly 0x8000, with even and odd kept parts
  for (let k = 0; k < 2000; k++) {
    const hi = (k * 977) & 0x7fff;
    out.push(((hi << 16) | 0x8000) >>> 0, ((hi << 16) | 0x7fff) >>> 0, ((hi << 16) | 0x8001) >>> 0);
  }
  return Uint32Array.from(out);
}

describe('f16 / bf16 decode', () => {
  it('scalar f16 decode matches the textbook formula for all 65,536 halves', () => {
    for (let h = 0; h < 65536; h++) {
      const v = f32FromBits(f16BitsToF32Bits(h));
      const ref = f16Formula(h);
      if (Number.isNaN(ref)) {
        expect(Number.isNaN(v)).toBe(true);
        // quiet bit and payload carried into the top of the f32 mantissa
        expect((f16BitsToF32Bits(h) >>> 13) & 0x3ff).toBe(h & 0x3ff);
      } else {
        expect(Object.is(v, ref)).toBe(true);
      }
    }
  });

  it('WASM f16ToF32 is bit-exact with the scalar reference over all 65,536 halves', () => {
    const a = new Float32Array(65536);
    const b = new Float32Array(65536);
    wasm.f16ToF32(ALL_HALVES, a);
    scalarConvert.f16ToF32(ALL_HALVES, b);
    expect(bits(a)).toEqual(bits(b));
  });

  it('WASM bf16ToF32 is bit-exact with the scalar reference over all 65,536 patterns', () => {
    const a = new Float32Array(65536);
    const b = new Float32Array(65536);
    wasm.bf16ToF32(ALL_HALVES, a);
    scalarConvert.bf16ToF32(ALL_HALVES, b);
    expect(bits(a)).toEqual(bits(b));
    expect(bits(a)[0x3f80]).toBe(0x3f800000);
  });
});

describe('f16 / bf16 encode', () => {
  it('scalar f32→f16 equals a single correct rounding of the f32 value (edge patterns)', () => {
    for (const p of edgePatterns()) {
      const x = f32FromBits(p);
      const h = f32BitsToF16Bits(p);
      if (Number.isNaN(x)) {
        expect(h & 0x7c00).toBe(0x7c00);
        expect(h & 0x3ff).not.toBe(0);
        expect(h & 0x8000).toBe((p >>> 16) & 0x8000);
      } else {
        expect(h).toBe(numberToF16BitsExact(x));
      }
    }
  });

  it('scalar f32→bf16 equals a single correct rounding of the f32 value (edge patterns)', () => {
    for (const p of edgePatterns()) {
      const x = f32FromBits(p);
      const h = f32BitsToBf16Bits(p);
      if (Number.isNaN(x)) {
        expect(h & 0x7f80).toBe(0x7f80);
        expect(h & 0x7f).not.toBe(0);
      } else {
        expect(h).toBe(numberToBf16BitsExact(x));
      }
    }
  });

  it('WASM encoders are bit-exact with the scalar reference on edge patterns, and count the same overflows', () => {
    const p = edgePatterns();
    const x = new Float32Array(p.buffer);
    for (const [w, s] of [
      [wasm.f32ToF16.bind(wasm), scalarConvert.f32ToF16],
      [wasm.f32ToBf16.bind(wasm), scalarConvert.f32ToBf16],
    ] as const) {
      const a = new Uint16Array(x.length);
      const b = new Uint16Array(x.length);
      const ca = w(x, a);
      const cb = s(x, b);
      expect(a).toEqual(b);
      expect(ca).toBe(cb);
    }
  });

  it('overflow counts: finite values that become ±Inf, not the Infs already there', () => {
    const x = new Float32Array([65504, 65519.99, 65520, -70000, Infinity, -Infinity, NaN, 1e38, 3.4e38]);
    const h = new Uint16Array(x.length);
    expect(wasm.f32ToF16(x, h)).toBe(4); // 65520, -70000, 1e38, 3.4e38
    expect(Array.from(h.subarray(0, 4))).toEqual([0x7bff, 0x7bff, 0x7c00, 0xfc00]);
    const b = new Uint16Array(x.length);
    expect(wasm.f32ToBf16(x, b)).toBe(1); // only 3.4e38 rounds up to Inf
    expect(b[8]).toBe(0x7f80);
    expect(b[6]! & 0x7fff).toBeGreaterThan(0x7f80); // NaN stays NaN
  });

  it('WASM encoders match the scalar reference on random bit patterns (property)', () => {
    fc.assert(
      fc.property(fc.uint32Array({ minLength: 0, maxLength: 300 }), (p) => {
        const x = new Float32Array(p.buffer, p.byteOffset, p.length);
        const a = new Uint16Array(x.length);
        const b = new Uint16Array(x.length);
        expect(wasm.f32ToF16(x, a)).toBe(scalarConvert.f32ToF16(x, b));
        expect(a).toEqual(b);
        expect(wasm.f32ToBf16(x, a)).toBe(scalarConvert.f32ToBf16(x, b));
        expect(a).toEqual(b);
      }),
      { numRuns: 300 },
    );
  });

  it('a large random array (several chunks, odd tail) matches the scalar reference', () => {
    const n = 3 * CONVERT_CHUNK + 13;
    const p = new Uint32Array(n);
    let s = 0x12345678;
    for (let i = 0; i < n; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      // mostly weight-like magnitudes, some arbitrary patterns
      p[i] = i % 5 === 0 ? s >>> 0 : f32Bits(((s >>> 8) / 2 ** 24 - 0.5) * 2 ** ((i % 40) - 20));
    }
    const x = new Float32Array(p.buffer);
    const a = new Uint16Array(n);
    const b = new Uint16Array(n);
    expect(wasm.f32ToF16(x, a)).toBe(scalarConvert.f32ToF16(x, b));
    expect(a).toEqual(b);
    const fa = new Float32Array(n);
    const fb = new Float32Array(n);
    wasm.f16ToF32(a, fa);
    scalarConvert.f16ToF32(a, fb);
    expect(bits(fa)).toEqual(bits(fb));
  });
});

function f32Bits(x: number): number {
  return new Uint32Array(new Float32Array([x]).buffer)[0]!;
}

describe('f64 → 16-bit single rounding (used by the f64 reference kernel)', () => {
  it('the fast path (via f32) equals exact rounding, also just beside every f16 / bf16 rounding boundary', () => {
    const xs: number[] = [0, -0, 1e-300, -1e300, 65519.999999, 65520, 65520.0000001, 3.3961775292304e38];
    for (let h = 0; h < 0x7c00; h += 3) {
      // the midpoint between h and h+1, and doubles a hair beside it that all round to that f32 midpoint
      const mid = (f32FromBits(f16BitsToF32Bits(h)) + f32FromBits(f16BitsToF32Bits(h + 1))) / 2;
      xs.push(mid, mid * (1 + 2 ** -40), mid * (1 - 2 ** -40), -mid * (1 + 2 ** -45));
    }
    for (let hi = 1; hi < 0x7f80; hi += 37) {
      const mid = f32FromBits(((hi << 16) | 0x8000) >>> 0);
      xs.push(mid, mid * (1 + 2 ** -40), mid * (1 - 2 ** -40));
    }
    for (const x of xs) {
      expect(numberToF16Bits(x), `f16 of ${x}`).toBe(numberToF16BitsExact(x));
      expect(numberToBf16Bits(x), `bf16 of ${x}`).toBe(numberToBf16BitsExact(x));
    }
  });

  it('equals exact rounding on random doubles (property)', () => {
    fc.assert(
      fc.property(fc.double({ noNaN: true }), (x) => {
        expect(numberToF16Bits(x)).toBe(numberToF16BitsExact(x));
        expect(numberToBf16Bits(x)).toBe(numberToBf16BitsExact(x));
      }),
      { numRuns: 2000 },
    );
  });
});

describe('convert API', () => {
  it('handles empty arrays, subarray views and longer destinations', () => {
    expect(wasm.f32ToF16(new Float32Array(0), new Uint16Array(0))).toBe(0);
    const big = new Float32Array(40).map((_, i) => i - 20);
    const view = big.subarray(3, 30); // 27 values at byteOffset 12
    const out = new Uint16Array(32).fill(0xffff);
    wasm.f32ToF16(view, out);
    expect(out[0]).toBe(numberToF16Bits(-17));
    expect(out[26]).toBe(numberToF16Bits(9));
    expect(out[27]).toBe(0xffff); // untouched beyond src.length
    const back = new Float32Array(27);
    wasm.f16ToF32(out.subarray(0, 27), back);
    expect(Array.from(back)).toEqual(Array.from(view));
  });

  it('rejects a destination shorter than the source with a typed error', () => {
    expect(() => wasm.f16ToF32(new Uint16Array(10), new Float32Array(9))).toThrow(ArgumentError);
    expect(() => scalarConvert.f32ToBf16(new Float32Array(10), new Uint16Array(9))).toThrow(/at least 10/);
  });

  it('getConvert() gives the same bits as the WASM converter', () => {
    const c = getConvert();
    const x = new Float32Array([1.5, -2.25, 1e-7, 70000, NaN]);
    const a = new Uint16Array(5);
    const b = new Uint16Array(5);
    expect(c.f32ToF16(x, a)).toBe(wasm.f32ToF16(x, b));
    expect(a).toEqual(b);
    expect(c.f32ToBf16(x, a)).toBe(wasm.f32ToBf16(x, b));
    expect(a).toEqual(b);
    const y = new Float32Array(5);
    const z = new Float32Array(5);
    c.f16ToF32(a, y);
    wasm.f16ToF32(a, z);
    expect(bits(y)).toEqual(bits(z));
    c.bf16ToF32(a, y);
    wasm.bf16ToF32(a, z);
    expect(bits(y)).toEqual(bits(z));
  });
});
