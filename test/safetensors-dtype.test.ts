import { ArgumentError } from '../src/core/errors.js';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  bf16BitsToF32,
  bf16ToF32,
  bytesAsTyped,
  countOverflow,
  decodeToF32,
  DTYPE_MAX,
  encodeFromF32,
  f16BitsToF32,
  f16ToF32,
  f32ToBf16,
  f32ToBf16Bits,
  f32ToF16,
  f32ToF16Bits,
  f32ToF8,
  f32ToF8E4M3Bits,
  f32ToF8E5M2Bits,
  f8e4m3BitsToF32,
  f8e5m2BitsToF32,
  f8ToF32,
  getBulkConvert,
  OVERFLOW_THRESHOLD,
  setBulkConvert,
  WASM_MIN_ELEMENTS,
  type BulkConvert,
} from '../src/safetensors/index.js';
import { SafetensorsError } from '../src/core/errors.js';

// ---------------------------------------------------------------------------------------------------------------
// Independent references: plain f64 arithmetic with powers of two, no bit tricks.
// ---------------------------------------------------------------------------------------------------------------

interface SmallFloat {
  /** mantissa bits */ m: number;
  /** exponent bits */ e: number;
  bias: number;
  /** largest finite magnitude code */ maxFinite: number;
  /** what overflow encodes to (magnitude code) */ overflow: number;
}

const HALF: SmallFloat = { m: 10, e: 5, bias: 15, maxFinite: 0x7bff, overflow: 0x7c00 };
const BF16: SmallFloat = { m: 7, e: 8, bias: 127, maxFinite: 0x7f7f, overflow: 0x7f80 };
const E5M2: SmallFloat = { m: 2, e: 5, bias: 15, maxFinite: 0x7b, overflow: 0x7c };
const E4M3: SmallFloat = { m: 3, e: 4, bias: 7, maxFinite: 0x7e, overflow: 0x7f };

/** Reference decode of an IEEE-like code (E4M3 "fn" handled by the caller). */
function refDecode(fmt: SmallFloat, bits: number): number {
  const signBit = 1 << (fmt.e + fmt.m);
  const sign = bits & signBit ? -1 : 1;
  const expField = (bits >> fmt.m) & ((1 << fmt.e) - 1);
  const mant = bits & ((1 << fmt.m) - 1);
  const maxField = (1 << fmt.e) - 1;
  if (expField === maxField && fmt !== E4M3) return mant === 0 ? sign * Infinity : NaN;
  if (fmt === E4M3 && expField === maxField && mant === (1 << fmt.m) - 1) return NaN;
  if (expField === 0) return sign * (mant / 2 ** fmt.m) * Math.pow(2, 1 - fmt.bias);
  return sign * (1 + mant / 2 ** fmt.m) * Math.pow(2, expField - fmt.bias);
}

function rne(q: number): number {
  const fl = Math.floor(q);
  const d = q - fl;
  if (d > 0.5) return fl + 1;
  if (d < 0.5) return fl;
  return fl % 2 === 0 ? fl : fl + 1;
}

/** Reference encode of a finite, non-NaN value: magnitude code, or fmt.overflow when it does not fit. */
function refEncodeMagnitude(fmt: SmallFloat, a: number): number {
  const minE = 1 - fmt.bias;
  let code: number;
  if (a < Math.pow(2, minE)) {
    code = rne(a / Math.pow(2, minE - fmt.m));
  } else {
    let e = minE;
    while (a >= Math.pow(2, e + 1)) e++;
    let r = rne(a / Math.pow(2, e - fmt.m));
    if (r === 2 ** (fmt.m + 1)) {
      e++;
      r = 2 ** fmt.m;
    }
    code = (e + fmt.bias) * 2 ** fmt.m + (r - 2 ** fmt.m);
  }
  return code > fmt.maxFinite ? fmt.overflow : code;
}

function f32(x: number): number {
  return Math.fround(x);
}

const bitsBuf = new Float32Array(1);
const bitsU32 = new Uint32Array(bitsBuf.buffer);
function fromBits(u: number): number {
  bitsU32[0] = u >>> 0;
  return bitsBuf[0]!;
}
function toBits(x: number): number {
  bitsBuf[0] = x;
  return bitsU32[0]!;
}

/** Expected encoding of an f32 value per the documented policy. */
function expectedEncode(fmt: SmallFloat, x: number, signShift: number): number {
  const signBit = (toBits(x) >>> 31) << signShift;
  const a = Math.abs(x);
  if (a === Infinity) return signBit | fmt.overflow;
  return signBit | refEncodeMagnitude(fmt, a);
}

function isHalfNaN(h: number): boolean {
  return (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
}

/** Interesting f32 values: random bit patterns, fast-check floats, and exact ties near every half. */
const anyF32 = fc.oneof(
  fc.float(),
  fc.integer({ min: 0, max: 0xffffffff }).map(fromBits),
  fc.integer({ min: 0, max: 0xfffe }).map((h) => {
    // exact midpoint between two neighbouring halves, or one f32 ulp either side of it
    const lo = f16BitsToF32(h);
    const hi = f16BitsToF32(h + 1);
    return Number.isFinite(lo) && Number.isFinite(hi) ? f32((lo + hi) / 2) : lo;
  }),
);

// ---------------------------------------------------------------------------------------------------------------

describe('F16', () => {
  it('decodes all 65,536 halves like the pow formula (scalar and bulk)', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const bulk = f16ToF32(all);
    const wrong: number[] = [];
    for (let h = 0; h < 65536; h++) {
      const ref = refDecode(HALF, h);
      const got = f16BitsToF32(h);
      const ok = Number.isNaN(ref)
        ? Number.isNaN(got) && Number.isNaN(bulk[h]!)
        : Object.is(got, ref) && Object.is(bulk[h], ref);
      if (!ok) wrong.push(h);
    }
    expect(wrong.slice(0, 5)).toEqual([]);
  });

  it('decode → encode is the identity for every non-NaN half; NaN halves stay NaN', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = f32ToF16(f16ToF32(all));
    const wrong: number[] = [];
    let nans = 0;
    for (let h = 0; h < 65536; h++) {
      const scalar = f32ToF16Bits(f16BitsToF32(h));
      if (isHalfNaN(h)) {
        nans++;
        if (!isHalfNaN(scalar) || !isHalfNaN(back[h]!)) wrong.push(h);
      } else if (scalar !== h || back[h] !== h) wrong.push(h);
    }
    expect(wrong.slice(0, 5)).toEqual([]);
    expect(nans).toBe(2 * 1023);
  });

  it('encodes every exact tie between neighbouring halves, and one f32 ulp either side, like the reference', () => {
    const xs: number[] = [];
    for (let h = 0; h < 0x7bff; h++) {
      const mid = f32((f16BitsToF32(h) + f16BitsToF32(h + 1)) / 2);
      const bits = toBits(mid);
      for (const b of [bits - 1, bits, bits + 1]) {
        xs.push(fromBits(b), -fromBits(b));
      }
    }
    const src = Float32Array.from(xs);
    const bulk = f32ToF16(src);
    const wrong: string[] = [];
    for (let i = 0; i < src.length; i++) {
      const want = expectedEncode(HALF, src[i]!, 15);
      if (f32ToF16Bits(src[i]!) !== want || bulk[i] !== want)
        wrong.push(`${src[i]}: ${f32ToF16Bits(src[i]!)}/${bulk[i]} ≠ ${want}`);
    }
    expect(wrong.slice(0, 5)).toEqual([]);
  });

  it('encodes random f32 values (floats and raw bit patterns) bit-exactly like the reference, scalar and bulk', () => {
    fc.assert(
      fc.property(fc.array(anyF32, { minLength: 1, maxLength: 64 }), (values) => {
        const src = Float32Array.from(values);
        const bulk = f32ToF16(src);
        for (let i = 0; i < src.length; i++) {
          const x = src[i]!;
          const got = f32ToF16Bits(x);
          expect(bulk[i]).toBe(got);
          if (Number.isNaN(x)) {
            expect(isHalfNaN(got)).toBe(true);
            expect(got & 0x0200).toBe(0x0200); // quiet
            expect(got >>> 15).toBe(toBits(x) >>> 31);
          } else {
            expect(got).toBe(expectedEncode(HALF, x, 15));
          }
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('handles the edges: max, overflow threshold, smallest subnormal, its half, signed zero, infinities', () => {
    const cases: [number, number][] = [
      [65504, 0x7bff],
      [65519.99, 0x7bff],
      [65520, 0x7c00],
      [1e6, 0x7c00],
      [Infinity, 0x7c00],
      [-Infinity, 0xfc00],
      [2 ** -24, 0x0001],
      [2 ** -25, 0x0000],
      [f32(2 ** -25 * 1.0000001), 0x0001],
      [3 * 2 ** -25, 0x0002],
      [2 ** -14, 0x0400],
      [-0, 0x8000],
      [0, 0],
      [1, 0x3c00],
      [-2, 0xc000],
      [fromBits(1), 0],
      [-fromBits(1), 0x8000],
    ];
    for (const [x, h] of cases) expect(f32ToF16Bits(x), `${x}`).toBe(h);
  });
});

describe('BF16', () => {
  it('decodes all 65,536 codes like the pow formula, and decode → encode is the identity (non-NaN)', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const bulk = bf16ToF32(all);
    const back = f32ToBf16(bulk);
    const wrong: number[] = [];
    for (let b = 0; b < 65536; b++) {
      const ref = refDecode(BF16, b);
      const ok = Number.isNaN(ref)
        ? Number.isNaN(bf16BitsToF32(b)) &&
          Number.isNaN(bulk[b]!) &&
          (back[b]! & 0x7f80) === 0x7f80 &&
          (back[b]! & 0x7f) !== 0
        : Object.is(bf16BitsToF32(b), ref) && Object.is(bulk[b], ref) && f32ToBf16Bits(ref) === b && back[b] === b;
      if (!ok) wrong.push(b);
    }
    expect(wrong.slice(0, 5)).toEqual([]);
  });

  it('encodes random f32 values bit-exactly like the reference (RNE, subnormals, overflow, NaN)', () => {
    fc.assert(
      fc.property(fc.array(anyF32, { minLength: 1, maxLength: 64 }), (values) => {
        const src = Float32Array.from(values);
        const bulk = f32ToBf16(src);
        for (let i = 0; i < src.length; i++) {
          const x = src[i]!;
          const got = f32ToBf16Bits(x);
          expect(bulk[i]).toBe(got);
          if (Number.isNaN(x)) {
            expect((got & 0x7f80) === 0x7f80 && (got & 0x40) !== 0).toBe(true);
            expect(got >>> 15).toBe(toBits(x) >>> 31);
          } else {
            expect(got).toBe(expectedEncode(BF16, x, 15));
          }
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('rounds ties to even and overflows to infinity', () => {
    expect(f32ToBf16Bits(fromBits(0x3f808000))).toBe(0x3f80); // tie, even stays
    expect(f32ToBf16Bits(fromBits(0x3f818000))).toBe(0x3f82); // tie, odd rounds up
    expect(f32ToBf16Bits(fromBits(0x3f808001))).toBe(0x3f81);
    expect(f32ToBf16Bits(fromBits(0x7f7fffff))).toBe(0x7f80);
    expect(f32ToBf16Bits(DTYPE_MAX.BF16)).toBe(0x7f7f);
    expect(f32ToBf16Bits(OVERFLOW_THRESHOLD.BF16)).toBe(0x7f80);
  });
});

describe('F8', () => {
  it('decodes all 256 E4M3 and E5M2 codes like the formula; decode → encode is the identity (non-NaN)', () => {
    const all = new Uint8Array(256).map((_, i) => i);
    const e4 = f8ToF32('F8_E4M3', all);
    const e5 = f8ToF32('F8_E5M2', all);
    for (let b = 0; b < 256; b++) {
      for (const [fmt, dec, bulk, enc] of [
        [E4M3, f8e4m3BitsToF32, e4, (x: number) => f32ToF8E4M3Bits(x)],
        [E5M2, f8e5m2BitsToF32, e5, f32ToF8E5M2Bits],
      ] as const) {
        const ref = refDecode(fmt, b);
        if (Number.isNaN(ref)) {
          expect(Number.isNaN(dec(b)) && Number.isNaN(bulk[b]!)).toBe(true);
          expect(Number.isNaN(dec(enc(dec(b))))).toBe(true);
        } else {
          expect(Object.is(dec(b), ref)).toBe(true);
          expect(Object.is(bulk[b], ref)).toBe(true);
          expect(enc(ref)).toBe(b);
        }
      }
    }
    expect(f8e4m3BitsToF32(0x7e)).toBe(448);
    expect(Number.isNaN(f8e4m3BitsToF32(0x7f))).toBe(true);
    expect(Number.isNaN(f8e4m3BitsToF32(0xff))).toBe(true);
    expect(f8e5m2BitsToF32(0x7c)).toBe(Infinity);
  });

  it('encodes random f32 values like the reference; E4M3 overflow is NaN, or ±448 when saturating', () => {
    fc.assert(
      fc.property(fc.array(anyF32, { minLength: 1, maxLength: 32 }), (values) => {
        const src = Float32Array.from(values);
        const e4 = f32ToF8('F8_E4M3', src);
        const e4s = f32ToF8('F8_E4M3', src, undefined, true);
        const e5 = f32ToF8('F8_E5M2', src);
        for (let i = 0; i < src.length; i++) {
          const x = src[i]!;
          const sign = toBits(x) >>> 31 ? 0x80 : 0;
          if (Number.isNaN(x)) {
            expect(e4[i]! & 0x7f).toBe(0x7f);
            expect((e5[i]! & 0x7c) === 0x7c && (e5[i]! & 3) !== 0).toBe(true);
            continue;
          }
          expect(e5[i]).toBe(expectedEncode(E5M2, x, 7));
          const mag = Math.abs(x) === Infinity ? E4M3.overflow : refEncodeMagnitude(E4M3, Math.abs(x));
          expect(e4[i]).toBe(sign | mag);
          expect(e4s[i]).toBe(sign | (mag === E4M3.overflow ? 0x7e : mag));
        }
      }),
      { numRuns: 2000 },
    );
    expect(f32ToF8E4M3Bits(464)).toBe(0x7e); // tie goes to the even 448
    expect(f32ToF8E4M3Bits(f32(464.01))).toBe(0x7f);
    expect(f32ToF8E4M3Bits(-1000, true)).toBe(0xfe);
    expect(f32ToF8E5M2Bits(61440)).toBe(0x7c);
    expect(f32ToF8E5M2Bits(61439)).toBe(0x7b);
  });
});

describe('countOverflow', () => {
  it('counts exactly the finite values whose encoding is not finite', () => {
    const encoders = {
      F16: (x: number) => f16BitsToF32(f32ToF16Bits(x)),
      BF16: (x: number) => bf16BitsToF32(f32ToBf16Bits(x)),
      F8_E4M3: (x: number) => f8e4m3BitsToF32(f32ToF8E4M3Bits(x)),
      F8_E5M2: (x: number) => f8e5m2BitsToF32(f32ToF8E5M2Bits(x)),
    } as const;
    fc.assert(
      fc.property(
        fc.array(anyF32, { maxLength: 40 }),
        fc.constantFrom('F16', 'BF16', 'F8_E4M3', 'F8_E5M2'),
        (values, dt) => {
          const src = Float32Array.from(values);
          let want = 0;
          for (const x of src) if (Number.isFinite(x) && !Number.isFinite(encoders[dt](x))) want++;
          expect(countOverflow(src, dt)).toBe(want);
        },
      ),
      { numRuns: 1000 },
    );
    expect(countOverflow(new Float32Array([1e30, Infinity]), 'F32')).toBe(0);
    expect(countOverflow(new Float32Array([65520, 65504, -70000, Infinity]), 'F16')).toBe(2);
  });
});

describe('bytes ⇄ typed arrays and f32', () => {
  it('views aligned bytes without copying and copies unaligned ones', () => {
    const buf = new Uint8Array(13);
    new DataView(buf.buffer).setFloat32(1, 1.5, true);
    new DataView(buf.buffer).setFloat32(5, -2, true);
    const unaligned = buf.subarray(1, 9);
    const t = bytesAsTyped('F32', unaligned);
    expect(Array.from(t)).toEqual([1.5, -2]);
    expect(t.buffer).not.toBe(buf.buffer);
    const aligned = new Uint8Array(new Float32Array([3, 4]).buffer);
    expect(bytesAsTyped('F32', aligned).buffer).toBe(aligned.buffer);
    const i64 = bytesAsTyped('I64', new Uint8Array(new BigInt64Array([-5n]).buffer));
    expect(i64).toBeInstanceOf(BigInt64Array);
    expect(i64[0]).toBe(-5n);
    expect(() => bytesAsTyped('F16', new Uint8Array(3))).toThrow(SafetensorsError);
  });

  it('decodeToF32 ∘ encodeFromF32 round-trips values representable in each float dtype', () => {
    fc.assert(
      fc.property(
        fc.constantFrom('F64', 'F32', 'F16', 'BF16', 'F8_E4M3', 'F8_E5M2' as const),
        fc.array(fc.float({ noNaN: true, min: -400, max: 400 }), { maxLength: 50 }),
        (dt, values) => {
          // First squeeze the values into the dtype, then they must survive unchanged.
          const once = decodeToF32(dt, encodeFromF32(dt, Float32Array.from(values)));
          const twice = decodeToF32(dt, encodeFromF32(dt, once));
          expect(Array.from(twice)).toEqual(Array.from(once));
          if (dt === 'F32' || dt === 'F64') expect(Array.from(once)).toEqual(Array.from(Float32Array.from(values)));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('refuses integer dtypes with SAFETENSORS_DTYPE_NOT_FLOAT naming the dtype', () => {
    for (const dt of ['I64', 'I32', 'I16', 'I8', 'U8', 'BOOL', 'U64', 'U32', 'U16'] as const) {
      expect(() => decodeToF32(dt, new Uint8Array(8))).toThrow(
        expect.objectContaining({ code: 'SAFETENSORS_DTYPE_NOT_FLOAT', message: expect.stringContaining(dt) }),
      );
      expect(() => encodeFromF32(dt, new Float32Array(2))).toThrow(
        expect.objectContaining({ code: 'SAFETENSORS_DTYPE_NOT_FLOAT' }),
      );
    }
  });
});

describe('bulk converter routing', () => {
  it('sends large arrays to the chosen converter and keeps small ones in JS', () => {
    const calls: string[] = [];
    const js = { f16ToF32, f32ToF16, bf16ToF32, f32ToBf16 };
    const viaJs = <T>(f: () => T): T => {
      setBulkConvert(null);
      try {
        return f();
      } finally {
        setBulkConvert(spy);
      }
    };
    const spy: BulkConvert = {
      f16ToF32: (s, d) => {
        calls.push('f16ToF32');
        viaJs(() => js.f16ToF32(s, d));
      },
      f32ToF16: (s, d) => {
        calls.push('f32ToF16');
        viaJs(() => js.f32ToF16(s, d));
      },
      bf16ToF32: (s, d) => {
        calls.push('bf16ToF32');
        viaJs(() => js.bf16ToF32(s, d));
      },
      f32ToBf16: (s, d) => {
        calls.push('f32ToBf16');
        viaJs(() => js.f32ToBf16(s, d));
      },
    };
    try {
      setBulkConvert(spy);
      const big = new Float32Array(WASM_MIN_ELEMENTS).map((_, i) => i / 7);
      const h = f32ToF16(big);
      f16ToF32(h);
      f32ToBf16(big);
      bf16ToF32(new Uint16Array(WASM_MIN_ELEMENTS));
      f32ToF16(new Float32Array(10));
      expect(calls).toEqual(['f32ToF16', 'f16ToF32', 'f32ToBf16', 'bf16ToF32']);
      expect(h[7]).toBe(f32ToF16Bits(1));
    } finally {
      setBulkConvert('auto');
    }
  });

  it('the default (WASM SIMD, src/core/dtype-wasm.ts) is bit-exact with the JS path on large arrays', () => {
    expect(getBulkConvert()).not.toBeNull(); // Node 20 has WebAssembly SIMD
    const n = 1 << 18;
    const bits = new Uint32Array(n);
    let seed = 12345;
    for (let i = 0; i < n; i++) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      // mix raw patterns with values near the half range and exact half ties
      const r = seed >>> 0;
      bits[i] =
        i % 3 === 0
          ? r
          : i % 3 === 1
            ? (0x33000000 + (r % 0x14800000)) >>> 0
            : toBits(f32((f16BitsToF32(r & 0x7bfe) + f16BitsToF32((r & 0x7bfe) + 1)) / 2)) ^ (r & 0x80000000);
    }
    const src = new Float32Array(bits.buffer);
    const halves = new Uint16Array(65536).map((_, i) => i);
    const run = () => ({
      f16: f32ToF16(src),
      bf16: f32ToBf16(src),
      f16dec: new Uint32Array(f16ToF32(halves).buffer),
      bf16dec: new Uint32Array(bf16ToF32(halves).buffer),
    });
    const fast = run();
    setBulkConvert(null);
    let slow;
    try {
      slow = run();
    } finally {
      setBulkConvert('auto');
    }
    for (const k of ['f16', 'bf16', 'f16dec', 'bf16dec'] as const) {
      const a = fast[k],
        b = slow[k];
      let firstDiff = -1;
      for (let i = 0; i < a.length; i++)
        if (a[i] !== b[i]) {
          firstDiff = i;
          break;
        }
      expect(firstDiff, k).toBe(-1);
    }
  });

  it('rejects mismatched lengths', () => {
    expect(() => f16ToF32(new Uint16Array(3), new Float32Array(2))).toThrow(ArgumentError);
  });
});
