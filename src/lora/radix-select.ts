/**
 * The counting step of magnitudePrune's radix select (src/lora/sparsify.ts and its WebAssembly twin,
 * src/lora/trim-wasm.ts): both must pick the same threshold, so both use this one function.
 */

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
