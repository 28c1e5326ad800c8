/**
 * A module update seen through a transposed weight. An SGM single file stores OpenCLIP-G's `text_projection` as the
 * [hidden, projection] matrix P used as x·P, the transpose of the diffusers Linear weight [projection, hidden] that
 * LoRAs are made for (ComfyUI transposes it on load; shared/research/keys.md §1.6). A delta Δ = up·down lands there
 * as Δᵀ = downᵀ·upᵀ: the same rank and scale with the factors swapped and transposed, so the kernels, overflow checks
 * and verification treat it like any other target. Other kinds land as their dense delta, transposed; kinds whose
 * delta depends on the base weight (DoRA, GLoRA) are refused, since their normalisation axis would change meaning.
 */
import ndarray from 'ndarray';
import { FormatError } from '../core/errors.js';
import { transposeF32 } from '../lora/linalg.js';
import { termDelta } from '../lora/terms/index.js';
import type { Term } from '../lora/types.js';
import type { InputModule } from './inputs.js';

/** Kinds whose delta needs the base weight: they cannot land on a transposed tensor. */
const NEEDS_BASE: readonly string[] = ['dora', 'glora'];

/** FORMAT_UNSUPPORTED_ADAPTER for a base-dependent term aimed at a transposed tensor (checked while planning). */
export function refuseTransposed(source: string, m: InputModule, key: string): void {
  if (!NEEDS_BASE.includes(m.kind)) return;
  throw new FormatError(
    'FORMAT_UNSUPPORTED_ADAPTER',
    `${source}: '${m.name}' is a ${m.kind} update, which depends on the base weight's rows, but the base stores '${key}' ` +
      'transposed (OpenCLIP text_projection); fuse into a diffusers folder instead, or drop that module (nothing was written)',
    { file: source, key: m.name, found: m.kind },
  );
}

/** The update of `m` on the transposed weight: out and fanIn swapped, Δᵀ. */
export function transposedModule(m: InputModule): InputModule {
  const { out, fanIn, rank } = m;
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
