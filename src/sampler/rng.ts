/**
 * A small deterministic random source for the sampler: xoshiro128** for uniform 32-bit words, seeded through
 * a splitmix32 mixer, and the Box–Muller transform for standard normal draws.
 *
 * The integer stream is bit-identical on every JavaScript engine (only 32-bit integer operations). The normal
 * draws go through Math.log / Math.cos / Math.sin, which V8 computes identically on every platform; other
 * engines may differ in the last bit. This generator is for reproducible experiments, not for cryptography,
 * and it does not reproduce torch's `randn`.
 */

import { SamplerError } from '../core/errors.js';

/** The latent arrays the sampler works on. */
export type Latent = Float32Array | Float64Array;

/** Element type of a latent: decides which typed array the sampler allocates. */
export type LatentDType = 'float32' | 'float64';

const TWO_PI = 2 * Math.PI;
const TWO_POW_26 = 67108864;
const TWO_POW_53 = 9007199254740992;
const TWO_POW_32 = 4294967296;

function splitmix32(state: { x: number }): number {
  state.x = (state.x + 0x9e3779b9) | 0;
  let z = state.x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

export class Rng {
  /** The seed this generator was created with. */
  readonly seed: number;
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  private spare: number | undefined;

  /** @param seed a non-negative integer below 2^53 (default 0). Equal seeds give equal streams. */
  constructor(seed = 0) {
    if (!Number.isSafeInteger(seed) || seed < 0) {
      throw new SamplerError(
        'SAMPLER_INVALID_CONFIG',
        `Rng: seed must be an integer in [0, 2^53), got ${String(seed)}`,
        {
          option: 'seed',
          expected: 'integer in [0, 2^53)',
          found: seed,
        },
      );
    }
    this.seed = seed;
    const lo = seed % TWO_POW_32;
    const hi = Math.floor(seed / TWO_POW_32);
    const st = { x: (lo ^ Math.imul(hi, 0x27d4eb2d)) | 0 };
    this.s0 = splitmix32(st);
    this.s1 = splitmix32(st);
    this.s2 = splitmix32(st);
    this.s3 = splitmix32(st);
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // the all-zero state is a fixed point
    this.spare = undefined;
  }

  /** Next unsigned 32-bit word (xoshiro128**). */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform double in [0, 1) with 53 random bits. */
  uniform(): number {
    const a = this.nextUint32() >>> 5; // 27 bits
    const b = this.nextUint32() >>> 6; // 26 bits
    return (a * TWO_POW_26 + b) / TWO_POW_53;
  }

  /** One standard normal draw (Box–Muller; the second value of each pair is kept for the next call). */
  normal(): number {
    if (this.spare !== undefined) {
      const z = this.spare;
      this.spare = undefined;
      return z;
    }
    const u1 = 1 - this.uniform(); // (0, 1]: the logarithm stays finite
    const u2 = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u1));
    const theta = TWO_PI * u2;
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /** Fill `out` with standard normal draws, in index order, and return it. */
  fillNormal<T extends Latent>(out: T): T {
    for (let i = 0; i < out.length; i++) out[i] = this.normal();
    return out;
  }

  /** A new array of `n` standard normal draws. */
  normalArray(n: number, dtype: LatentDType = 'float64'): Latent {
    return this.fillNormal(allocLatent(n, dtype));
  }
}

/** Allocate a zeroed latent of `n` elements. */
export function allocLatent(n: number, dtype: LatentDType): Latent {
  return dtype === 'float32' ? new Float32Array(n) : new Float64Array(n);
}
