/**
 * A module update seen through a transposed weight. An SGM single file stores OpenCLIP-G's `text_projection` as the
 * [hidden, projection] matrix P used as x·P, the transpose of the diffusers Linear weight [projection, hidden] that
 * LoRAs are made for (ComfyUI transposes it on load; shared/research/keys.md §1.6). A delta Δ = up·down lands there
 * as Δᵀ = downᵀ·upᵀ: the same rank and scale with the factors swapped and transposed, so the kernels, overflow checks
 * and verification treat it like any other target. Other kinds land as their dense delta, transposed. Kinds whose
 * delta depends on the base weight (DoRA, GLoRA, OFT, BOFT) are computed where their tools compute them — on the
 * diffusers weight W0 = Pᵀ (ComfyUI transposes P when it loads the model, then patches it) — and land as Δᵀ: the
 * module keeps its kind and is marked `transposed`, and `transposedBaseDelta` does the two transposes.
 */
import ndarray from 'ndarray';
import { transposeF32 } from '../lora/linalg.js';
import { termDelta, termWeightedDelta } from '../lora/terms/index.js';
import type { Term } from '../lora/types.js';
import type { InputModule } from './inputs.js';

/** Kinds whose delta needs the base weight: computed on the untransposed W0, then transposed (transposedBaseDelta). */
const NEEDS_BASE: readonly string[] = ['dora', 'glora', 'oft', 'boft'];

/**
 * The delta at strength w (termWeightedDelta: ComfyUI's strength rule) of a base-dependent term whose weight the file
 * stores transposed: `stored` is the stored tensor [rows, cols] = W0ᵀ; the result is Δ(W0)ᵀ in the stored layout.
 */
export function transposedBaseDelta(
  t: Term,
  path: string,
  w: number,
  stored: Float32Array,
  rows: number,
  cols: number,
) {
  const w0 = transposeF32(stored, rows, cols);
  return transposeF32(termWeightedDelta(t, path, w, w0), cols, rows);
}

/** The update of `m` on the transposed weight: out and fanIn swapped, Δᵀ. */
export function transposedModule(m: InputModule): InputModule {
  const { out, fanIn, rank } = m;
  if (NEEDS_BASE.includes(m.kind)) {
    // Its own term: the fuse transposes W0 for it and its delta back (transposedBaseDelta).
    return {
      path: m.path,
      kind: m.kind,
      rank: m.rank,
      alpha: m.alpha,
      out: fanIn,
      fanIn: out,
      name: m.name,
      transposed: true,
      factors: m.factors,
      term: m.term,
    };
  }
  if (m.kind === 'lowRank') {
    const factors = async (): Promise<{ up: Float32Array; down: Float32Array }> => {
      const f = await m.factors();
      return { up: transposeF32(f.down, rank, fanIn), down: transposeF32(f.up, out, rank) };
    };
    return {
      path: m.path,
      kind: m.kind,
      rank,
      alpha: m.alpha,
      out: fanIn,
      fanIn: out,
      name: m.name,
      factors,
      async term(): Promise<Term> {
        const f = await factors();
        return { up: ndarray(f.up, [fanIn, rank]), down: ndarray(f.down, [rank, out]), alpha: m.alpha };
      },
    };
  }
  return {
    path: m.path,
    kind: 'dense',
    rank: 0,
    alpha: 0,
    out: fanIn,
    fanIn: out,
    name: m.name,
    async factors() {
      return { up: new Float32Array(0), down: new Float32Array(0) };
    },
    async term(): Promise<Term> {
      const delta = transposeF32(termDelta(await m.term(), m.path), out, fanIn);
      return { kind: 'dense', shape: [fanIn, out], delta: ndarray(delta, [fanIn, out]) };
    },
  };
}
