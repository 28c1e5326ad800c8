/**
 * Sparsifiers of one task tensor, in place (PEFT merge_utils' `magnitude_based_pruning` and `random_pruning`):
 *
 * - magnitude: keep the k = ⌊density·n⌋ entries of largest |x| (n = numel), zero the rest. The k-th largest
 *   magnitude is found by a radix select on the IEEE bit patterns of |x| (two histogram passes, O(n), no sort);
 *   entries equal to the threshold are kept in index order until k are kept (PEFT's topk breaks such ties
 *   arbitrarily).
 * - random (DARE): keep each entry with probability `density` from a seeded uint32 generator, divide the kept
 *   ones by `density` (PEFT ≥ 0.19 rescales; earlier releases silently did not).
 *
 * density ≥ 1 leaves the tensor unchanged, as PEFT does.
 */
import { getWasmTrim } from './trim-wasm.js';
import { cutBin, keepCount } from './radix-select.js';

/**
 * Zero all but the ⌊density·n⌋ entries of largest magnitude: in WebAssembly (src/lora/trim-wasm.ts) where it is
 * available, else magnitudePruneScalar; both give the same bits.
 */
export function magnitudePrune(x: Float32Array, density: number): void {
  const wasm = getWasmTrim();
  // (the WASM zeroing pass counts ties in an i32)
  if (wasm && x.length < 2 ** 31) wasm.magnitudePrune(x, density);
  else magnitudePruneScalar(x, density);
}

/** magnitudePrune in plain JS (the reference, and the fallback without WebAssembly SIMD). */
export function magnitudePruneScalar(x: Float32Array, density: number): void {
  const k = keepCount(x, density);
  if (k === null) return;
  const n = x.length;
  const bits = new Uint32Array(x.buffer, x.byteOffset, n);
  const high = new Uint32Array(1 << 15);
  for (let i = 0; i < n; i++) {
    const h = ((bits[i] ?? 0) & 0x7fffffff) >>> 16;
    high[h] = (high[h] ?? 0) + 1;
  }
  // The high half H of the threshold: the bin where the count from the top reaches k.
  const hi = cutBin(high, k, 0);
  const H = hi.bin;
  const low = new Uint32Array(1 << 16);
  for (let i = 0; i < n; i++) {
    const b = (bits[i] ?? 0) & 0x7fffffff;
    if (b >>> 16 === H) {
      const l = b & 0xffff;
      low[l] = (low[l] ?? 0) + 1;
    }
  }
  const { bin: L, above } = cutBin(low, k, hi.above);
  const threshold = ((H << 16) | L) >>> 0;
  // `above` entries lie strictly above the threshold; keep the first k − above entries equal to it.
  let ties = k - above;
  for (let i = 0; i < n; i++) {
    const b = (bits[i] ?? 0) & 0x7fffffff;
    if (b > threshold) continue;
    if (b === threshold && ties > 0) {
      ties--;
      continue;
    }
    x[i] = 0;
  }
}

/** DARE: keep each entry with probability `density` (draw < density·2³²), rescale the kept by 1/density. */
export function randomPrune(x: Float32Array, density: number, next: () => number): void {
  if (density >= 1) return;
  const cut = density * 4294967296;
  const scale = 1 / density;
  for (let i = 0; i < x.length; i++) {
    if (next() < cut) x[i] = (x[i] ?? 0) * scale;
    else x[i] = 0;
  }
}
