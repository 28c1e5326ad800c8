/**
 * The one stacking of terms: Σ cᵢ·upᵢ·downᵢ as a single pair of factors,
 *   up' = [c₁·up₁ | c₂·up₂ | …]  ([rows, Σ rᵢ]),   down' = [down₁; down₂; …]  ([Σ rᵢ, cols]),
 * so up'·down' is the weighted sum exactly, with no cross terms. cᵢ is the module's weight λ (weight × block
 * multiplier) times whatever scale is not yet folded into upᵢ. Merge, fuse and verify all build their factors here.
 */
import { LoraError } from '../core/errors.js';

/** One stacked part: c·up·down with up [rows, rank] and down [rank, cols], row-major. */
export interface StackPart {
  readonly coef: number;
  readonly rank: number;
  readonly up: Float32Array;
  readonly down: Float32Array;
  /** Names the part in errors. */
  readonly name?: string;
}

/**
 * The stacked factors of `parts` (rows = out, cols = in·kh·kw). Throws LORA_SHAPE_MISMATCH for a wrong-sized part.
 * With `shareDown`, a single part's down is returned as a view of the caller's array instead of a copy (for callers
 * that only read it, such as the fuse kernel's packing). up is a new array, or with `up` the first rows·rank
 * values of that buffer (a caller reusing its memory).
 */
export function stackFactors(
  parts: readonly StackPart[],
  rows: number,
  cols: number,
  options: { readonly shareDown?: boolean; readonly up?: Float32Array } = {},
): { up: Float32Array; down: Float32Array; rank: number } {
  let rank = 0;
  for (const p of parts) rank += p.rank;
  const into = options.up;
  const up =
    into !== undefined && into.length >= rows * rank ? into.subarray(0, rows * rank) : new Float32Array(rows * rank);
  const only = parts.length === 1 && options.shareDown === true ? parts[0] : undefined;
  // A too-short down is refused below, before it is used.
  const down =
    only !== undefined && only.down.length >= rank * cols
      ? only.down.subarray(0, rank * cols)
      : new Float32Array(rank * cols);
  let off = 0;
  for (const p of parts) {
    const r = p.rank;
    if (p.up.length < rows * r || p.down.length < r * cols) {
      throw new LoraError(
        'LORA_SHAPE_MISMATCH',
        `${p.name ?? 'a term'}: factors hold ${p.up.length} + ${p.down.length} values; expected ${rows * r} + ${r * cols}`,
        { key: p.name, expected: [rows * r, r * cols], found: [p.up.length, p.down.length] },
      );
    }
    const c = p.coef;
    for (let i = 0; i < rows; i++) {
      const src = i * r;
      const dst = i * rank + off;
      for (let k = 0; k < r; k++) up[dst + k] = c * (p.up[src + k] ?? 0);
    }
    if (p !== only) down.set(p.down.subarray(0, r * cols), off * cols);
    off += r;
  }
  return { up, down, rank };
}
