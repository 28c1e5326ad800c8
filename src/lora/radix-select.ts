/**
 * The steps of magnitudePrune's radix select that count (src/lora/sparsify.ts and its WebAssembly twin,
 * src/lora/trim-wasm.ts): both must keep the same entries, so both use these functions.
 */

/**
 * How many entries of x magnitude pruning at `density` keeps, k = ⌊density·n⌋, when a selection is needed; null when
 * it is not: k ≥ n leaves x as it is, k ≤ 0 zeroes it here.
 */
export function keepCount(x: Float32Array, density: number): number | null {
  const k = Math.floor(density * x.length);
  if (k >= x.length) return null;
  if (k <= 0) {
    x.fill(0);
    return null;
  }
  return k;
}

/**
 * Counting down from the highest bin of `hist`, the bin at which `above` (entries already known to lie above every
 * bin of this histogram) plus the bins' counts first reach k; returns that bin and the count of entries strictly
 * above it. Bin 0 when the counts never reach k.
 */
export function cutBin(hist: Uint32Array, k: number, above: number): { readonly bin: number; readonly above: number } {
  let bin = hist.length - 1;
  let a = above;
  for (; bin > 0; bin--) {
    const c = hist[bin] ?? 0;
    if (a + c >= k) break;
    a += c;
  }
  return { bin, above: a };
}
