import type { NdArray } from 'ndarray';
import type { DType } from '../core/tensor.js';
import type { Arch, LayoutSize } from '../layout/types.js';

/** A contiguous row-major float32 ndarray (offset 0, C-order strides). */
export type F32Array = NdArray<Float32Array>;

/**
 * One LoRA module: delta = (alpha / r) · up @ down, with r = down.shape[0].
 * Linear: down [r, in], up [out, r]. Conv: down [r, in, kh, kw], up [out, r, 1, 1]
 * (delta = (up.reshape(out, r) @ down.reshape(r, in·kh·kw)).reshape(out, in, kh, kw)).
 * Factors are always f32 in memory, whatever the file stored.
 */
export interface LoraModule {
  /** A LoraModule is the `lowRank` term kind; the tag is optional so plain { down, up, alpha } values stay valid. */
  readonly kind?: 'lowRank';
  readonly down: F32Array;
  readonly up: F32Array;
  readonly alpha: number;
  /**
   * A bias delta [out] (PEFT `lora_B.bias`, lora_bias=True), scaled like `up`: the module's bias changes by
   * (alpha / r) · bias. Absent for the usual bias-free LoRA.
   */
  readonly bias?: F32Array;
}

/**
 * The change of one norm layer (GroupNorm / LayerNorm): full differences of its weight and/or bias, [channels]
 * each, added with the LoRA's weight (ComfyUI `.diff` / `.diff_b`, LyCORIS `w_norm` / `b_norm`).
 */
export interface NormDelta {
  readonly weight?: F32Array;
  readonly bias?: F32Array;
}

/** A tensor carried through verbatim (bytes as stored), e.g. a pivotal-tuning embedding. */
export interface StoredTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: Uint8Array;
}

/** The lowRank kind (LoRA, LoCon; a Tucker core is folded into `down` when the file is read, exactly). */
export type LowRankTerm = LoraModule;

/** Two 2-D factors whose product up [rows, r] · down [r, cols] is a matrix (cols = in·kh·kw for a conv). */
export interface Factors {
  readonly up: F32Array;
  readonly down: F32Array;
}

/** What every kind other than lowRank carries: the shape of the weight it changes and an optional bias delta. */
interface TermCommon {
  /** The weight's shape: [out, in] or [out, in, kh, kw]. Every matrix of a term works on the [out, in·kh·kw] view. */
  readonly shape: readonly number[];
  /** Δ of the module's bias (`diff_b`), [out]; added with the same weight as the delta. */
  readonly bias?: F32Array;
}

/** LoHa: Δ = scale · (a.up·a.down) ⊙ (b.up·b.down). */
export interface HadamardTerm extends TermCommon {
  readonly kind: 'hadamard';
  readonly scale: number;
  readonly a: Factors;
  readonly b: Factors;
}

/** One side of a Kronecker product: a full matrix, or factors. Both are 2-D ([o, i·kh·kw] for the right side). */
export type KroneckerSide = { readonly full: F32Array } | Factors;

/** LoKr: Δ = scale · left ⊗ right on the [out, in·kh·kw] view (left [o1, i1], right [o2, i2·kh·kw]). */
export interface KroneckerTerm extends TermCommon {
  readonly kind: 'kronecker';
  readonly scale: number;
  readonly left: KroneckerSide;
  readonly right: KroneckerSide;
}

/** A full weight difference: Δ = delta (any shape with out·in·kh·kw values, read row-major). */
export interface DenseTerm extends TermCommon {
  readonly kind: 'dense';
  readonly delta: F32Array;
}

/**
 * DoRA: W_dora = m ⊙ V / ‖V‖ with V = W0 + Δ_inner, the norm taken per output row (axis 'out') or per input channel
 * over (out, kh, kw) (axis 'in'); Δ = W_dora − W0. Needs the base weight W0.
 */
export interface DoraTerm extends TermCommon {
  readonly kind: 'dora';
  readonly inner: LowRankTerm | HadamardTerm | KroneckerTerm | DenseTerm | GloraTerm;
  /** The magnitude m: out values (axis 'out') or in values (axis 'in'). */
  readonly magnitude: Float32Array;
  readonly axis: 'out' | 'in';
}

/**
 * GLoRA (LyCORIS layout): Δ = scale · (W0 ×_in (a1·a2) + b1·b2), a1 [in, r], a2 [r, in], b1 [out, r],
 * b2 [r, in·kh·kw]; the a-product acts on the input channels at every kernel position. Needs the base weight W0.
 */
export interface GloraTerm extends TermCommon {
  readonly kind: 'glora';
  readonly scale: number;
  readonly a1: F32Array;
  readonly a2: F32Array;
  readonly b1: F32Array;
  readonly b2: F32Array;
}

/**
 * OFT (LyCORIS diag-OFT, kohya OFT, the old `oft_diag`): the output rows of W0 in n blocks of b rows are rotated,
 * W' = diag(rescale) · blockdiag(R_kᵀ) · W0, Δ = W' − W0. `blocks` [n, b, b]: the Cayley parameters B_k
 * (R_k = (I + Q_k)(I − Q_k)⁻¹, Q_k = B_k − B_kᵀ, Q scaled to norm `constraint` when ‖Q‖_F over all blocks exceeds it)
 * or, with `cayley` false (`oft_diag`), the rotations R_k themselves. Needs the base weight W0.
 */
export interface OftTerm extends TermCommon {
  readonly kind: 'oft';
  readonly blocks: F32Array;
  readonly cayley: boolean;
  /** The bound on ‖Q‖_F (alpha · out as LyCORIS and kohya train it; 0: none). */
  readonly constraint: number;
  /** Per output row factors (LyCORIS `rescale`), out values. */
  readonly rescale?: Float32Array;
}

/**
 * BOFT (LyCORIS butterfly OFT): `blocks` [m, n, b, b], m stages; stage i permutes the output rows (groups of
 * 2·2^i·⌊b/2⌋ rows, interleaved), rotates each run of b rows by R_(i,j) (Cayley, as OFT), and permutes back;
 * W' = diag(rescale) · S_(m−1) ⋯ S_0 · W0, Δ = W' − W0. Needs the base weight W0.
 */
export interface BoftTerm extends TermCommon {
  readonly kind: 'boft';
  readonly blocks: F32Array;
  readonly constraint: number;
  readonly rescale?: Float32Array;
}

/** What an adapter file holds for one module: one term of one kind (src/lora/terms/). */
export type Term = LowRankTerm | HadamardTerm | KroneckerTerm | DenseTerm | DoraTerm | GloraTerm | OftTerm | BoftTerm;

export type TermKind = NonNullable<LoraModule['kind']> | Exclude<Term, LoraModule>['kind'];

/**
 * A LoRA: a τ vector over the modules of one architecture, keyed by canonical module path. `Lora` (the default)
 * holds plain low-rank modules — what merge, resize and convert produce; `Lora<Term>` holds a term of any kind per
 * module — what adapter files decode to and what merge, fuse and convert accept.
 */
export interface Lora<T extends Term = LoraModule> {
  readonly arch: Arch;
  readonly size: LayoutSize;
  /** Module path → its term. */
  readonly modules: ReadonlyMap<string, T>;
  /** Free-form string metadata (safetensors __metadata__), carried into outputs. */
  readonly metadata: Readonly<Record<string, string>>;
  /**
   * Tensors that are not LoRA modules but travel with the LoRA, by key: kohya's pivotal-tuning embeddings
   * (`bundle_emb.*`). Merge and convert keep them; fuse reports them as skipped (a checkpoint has no place for them).
   */
  readonly embeddings?: ReadonlyMap<string, StoredTensor>;
  /**
   * Norm-layer differences by canonical norm path ('unet.down_blocks.0.resnets.0.norm1'): merge sums them, convert
   * writes them, fuse adds them to the norm's weight and bias.
   */
  readonly norms?: ReadonlyMap<string, NormDelta>;
}
