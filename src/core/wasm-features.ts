/**
 * WebAssembly feature detection, by validating tiny modules (no compilation of the real kernels needed).
 * Results are cached per process; `resetWasmFeatureCache()` forgets them (used after a runtime flag changes).
 */

// (module (func (param v128) (result v128) local.get 0 local.get 0 i32x4.add))
const SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x06, 0x01, 0x60, 0x01, 0x7b, 0x01, 0x7b, 0x03, 0x02, 0x01,
  0x00, 0x0a, 0x0b, 0x01, 0x09, 0x00, 0x20, 0x00, 0x20, 0x00, 0xfd, 0xae, 0x01, 0x0b,
]);

// (module (func (param v128 v128 v128) (result v128) local.get 0 local.get 1 local.get 2 f32x4.relaxed_madd))
const RELAXED_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x01, 0x60, 0x03, 0x7b, 0x7b, 0x7b, 0x01, 0x7b, 0x03,
  0x02, 0x01, 0x00, 0x0a, 0x0d, 0x01, 0x0b, 0x00, 0x20, 0x00, 0x20, 0x01, 0x20, 0x02, 0xfd, 0x85, 0x02, 0x0b,
]);

let simd: boolean | undefined;
let relaxed: boolean | undefined;

function validates(bytes: Uint8Array<ArrayBuffer>): boolean {
  try {
    return typeof WebAssembly === 'object' && WebAssembly.validate(bytes);
  } catch {
    return false;
  }
}

/** Fixed-width SIMD (v128) is available. */
export function hasWasmSimd(): boolean {
  if (simd === undefined) simd = validates(SIMD_PROBE);
  return simd;
}

/** Relaxed SIMD (f32x4.relaxed_madd) validates. In Node 20 it needs --experimental-wasm-relaxed-simd. */
export function hasRelaxedSimd(): boolean {
  if (relaxed === undefined) relaxed = hasWasmSimd() && validates(RELAXED_PROBE);
  return relaxed;
}

export function resetWasmFeatureCache(): void {
  simd = undefined;
  relaxed = undefined;
}
