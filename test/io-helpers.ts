/** Helpers shared by the file-sink tests (io-direct, io-sync-behind). */

/** `n` pseudo-random bytes from `seed` (a linear congruential generator's top byte): distinct contents per chunk. */
export function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}
