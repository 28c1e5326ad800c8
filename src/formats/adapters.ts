/**
 * The adapter kinds in LyCORIS / kohya / PEFT spelling (shared/research/adapters.md): which kind a module's tensors
 * make, whether they are complete and consistent, the factor shapes the layout resolver checks them by, the scale
 * rule of each kind, and the term read from them. Formats only decode: the arithmetic is in src/lora/terms/.
 *
 *   LoRA / LoCon   lora_down.weight, lora_up.weight [, lora_mid.weight (Tucker)]      s = alpha / lora_down.shape[0]
 *   LoHa           hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b [, hada_t1, hada_t2]   s = alpha / hada_w1_b.shape[0]
 *   LoKr           lokr_w1 | lokr_w1_a+b, lokr_w2 | lokr_w2_a+b [, lokr_t2]         s = alpha / dim (w2_b, else w1_b), else 1
 *   full diff      diff [, diff_b]                                                    no scale
 *   GLoRA          a1.weight, a2.weight, b1.weight, b2.weight                         s = alpha / a2.shape[0]
 *   DoRA           any of the above + dora_scale, or PEFT lora_A/B + lora_magnitude_vector
 *   OFT            oft_blocks [n, b, b] [, rescale], or the old oft_diag [n, b, b]     alpha = the constraint (× out)
 *   BOFT           oft_blocks [m, n, b, b] [, rescale]                                 alpha = the constraint (× out)
 *
 * A missing alpha means scale 1 for the LyCORIS kinds (ComfyUI), alpha = rank for LoRA (kohya, the same scale).
 * For OFT/BOFT alpha is no scale: ‖Q‖_F is bounded by alpha·out, the bound LyCORIS and kohya train with (ComfyUI
 * compares with alpha alone); no alpha or alpha 0 means no bound.
 */
import { transposeF32 } from '../lora/linalg.js';
import ndarray from 'ndarray';
import { FormatError, LoraError } from '../core/errors.js';
import type { F32Array, KroneckerSide, LoraModule, Term, TermKind } from '../lora/types.js';
import type { FactorRole } from './keys.js';

/** One tensor of a module: its key and shape. */
export interface ModuleTensor {
  readonly key: string;
  readonly shape: readonly number[];
}

export type ModuleTensors = Partial<Record<FactorRole, ModuleTensor>>;

/** What decoding decided about a module that is not a plain two-factor LoRA. */
export interface AdapterModulePlan {
  readonly kind: TermKind;
  /** Name in reports: 'LoCon (Tucker)', 'LoHa', 'LoKr', 'full diff', 'GLoRA', 'DoRA (LoRA)' … */
  readonly label: string;
  readonly tensors: ModuleTensors;
  /** For the resolver: factor shapes of an equivalent LoRA ([r, in(, kh, kw)] and [out, r]). */
  readonly downShape: readonly number[];
  readonly upShape: readonly number[];
  /** Set when the kernel is unknown from the tensors: in·kh·kw of the weight. */
  readonly fanIn?: number;
  /** The dimension alpha is divided by (undefined: scale 1 whatever alpha says). */
  readonly scaleDim?: number;
  /** GLoRA stored in the pre-2023 layout. */
  readonly gloraOld?: boolean;
  /** DoRA: the magnitude's axis. */
  readonly axis?: 'out' | 'in';
  /** OFT / BOFT: the tensors give only the weight's out (upShape[0]); any in and kernel fit. */
  readonly outOnly?: boolean;
}

type Family = 'lora' | 'hada' | 'lokr' | 'diff' | 'glora' | 'oft';

const FAMILY_OF: Partial<Record<FactorRole, Family>> = {
  down: 'lora',
  up: 'lora',
  mid: 'lora',
  hada_w1_a: 'hada',
  hada_w1_b: 'hada',
  hada_w2_a: 'hada',
  hada_w2_b: 'hada',
  hada_t1: 'hada',
  hada_t2: 'hada',
  lokr_w1: 'lokr',
  lokr_w1_a: 'lokr',
  lokr_w1_b: 'lokr',
  lokr_w2: 'lokr',
  lokr_w2_a: 'lokr',
  lokr_w2_b: 'lokr',
  lokr_t1: 'lokr',
  lokr_t2: 'lokr',
  diff: 'diff',
  a1: 'glora',
  a2: 'glora',
  b1: 'glora',
  b2: 'glora',
  oft_blocks: 'oft',
  oft_diag: 'oft',
  rescale: 'oft',
};

const FAMILY_LABEL: Record<Family, string> = {
  lora: 'LoRA',
  hada: 'LoHa',
  lokr: 'LoKr',
  diff: 'full diff',
  glora: 'GLoRA',
  oft: 'OFT/BOFT',
};

const fmt = (s: readonly number[] | undefined): string => (s ? `[${s.join(', ')}]` : '(absent)');

/** A plain LoRA module (down + up, nothing else): the decoder's fast path handles it. */
export function isPlainLora(t: ModuleTensors): boolean {
  return (Object.keys(t) as FactorRole[]).every((r) => r === 'down' || r === 'up' || r === 'alpha');
}

function incomplete(file: string, id: string, what: string): FormatError {
  return new FormatError('FORMAT_INCOMPLETE_MODULE', `${file}: module '${id}': ${what}`, { file, key: id });
}

function shapeError(file: string, id: string, what: string, found: unknown): LoraError {
  return new LoraError('LORA_SHAPE_MISMATCH', `${file}: module '${id}': ${what}`, { file, key: id, found });
}

/** [rows, cols] of a factor read as a matrix (a 4-D [a, b, 1, 1] is [a, b]; a conv [a, b, kh, kw] is [a, b·kh·kw]). */
function mat(s: readonly number[]): [number, number] {
  const rows = s[0] ?? 0;
  let cols = 1;
  for (let i = 1; i < s.length; i++) cols *= s[i] ?? 1;
  return [rows, cols];
}

/** How a role is spelled in kohya / LyCORIS files. */
const SPELLING: Partial<Record<FactorRole, string>> = {
  down: 'lora_down.weight',
  up: 'lora_up.weight',
  mid: 'lora_mid.weight',
  a1: 'a1.weight',
  a2: 'a2.weight',
  b1: 'b1.weight',
  b2: 'b2.weight',
};
const spelled = (r: FactorRole): string => SPELLING[r] ?? r;

const need = (file: string, id: string, t: ModuleTensors, roles: readonly FactorRole[], kind: string): void => {
  const present = roles.filter((r) => t[r]).map(spelled);
  const absent = roles.filter((r) => !t[r]).map(spelled);
  if (absent.length > 0) {
    throw incomplete(
      file,
      id,
      `${kind} needs ${roles.map(spelled).join(', ')}; found ${present.length > 0 ? present.join(', ') : 'none of them'} without ${absent.join(', ')}`,
    );
  }
};

/**
 * Decide the kind of a module from its tensors and check them. Throws FORMAT_MIXED (tensors of two kinds in one
 * module), FORMAT_INCOMPLETE_MODULE (a missing half) or LORA_SHAPE_MISMATCH / LORA_RANK_MISMATCH (shapes that do not
 * fit together), each naming the file and the module.
 */
export function classifyModule(file: string, id: string, t: ModuleTensors): AdapterModulePlan {
  const families = new Set<Family>();
  for (const r of Object.keys(t) as FactorRole[]) {
    const f = FAMILY_OF[r];
    if (f) families.add(f);
  }
  if (families.size > 1) {
    const list = [...families].map((f) => FAMILY_LABEL[f]);
    throw new FormatError(
      'FORMAT_MIXED',
      `${file}: module '${id}' mixes tensors of ${list.join(' and ')}: ${Object.values(t)
        .map((x) => x?.key)
        .join(', ')}; expected the tensors of one kind`,
      { file, key: id, found: list },
    );
  }
  const family = [...families][0];
  const dora = t.dora_scale ?? t.magnitude;
  if (t.dora_scale && t.magnitude) {
    throw new FormatError('FORMAT_MIXED', `${file}: module '${id}' has both dora_scale and lora_magnitude_vector`, {
      file,
      key: id,
    });
  }
  if (!family) {
    throw incomplete(
      file,
      id,
      `only ${Object.keys(t).join(', ')}; expected the factors of a LoRA, LoHa, LoKr, GLoRA, OFT/BOFT or a full diff`,
    );
  }
  const inner = innerPlan(file, id, family, t);
  if (!dora) return inner;
  if (family === 'oft') {
    throw new FormatError(
      'FORMAT_UNSUPPORTED_ADAPTER',
      `${file}: module '${id}': an ${inner.label} with a DoRA magnitude ('${dora.key}'); lora-mix reads DoRA over LoRA, LoHa, LoKr, GLoRA and full diffs (LyCORIS trains no weight-decomposed OFT)`,
      { file, key: dora.key, adapter: `DoRA (${inner.label})` },
    );
  }
  const out = inner.upShape[0] ?? 0;
  const n = dora.shape.reduce((a, b) => a * b, 1);
  // PEFT's magnitude is always per output row ([out] or [1, out, 1, 1]); kohya's dora_scale: ComfyUI's rule, the
  // output axis iff its first dimension is the weight's out.
  const axis: 'out' | 'in' = t.magnitude ? 'out' : (dora.shape[0] ?? 0) === out ? 'out' : 'in';
  const expected = axis === 'out' ? out : (inner.downShape[1] ?? 0);
  if (n !== expected) {
    throw shapeError(
      file,
      id,
      `the DoRA magnitude '${dora.key}' is ${fmt(dora.shape)} (${n} values); expected ${expected} (one per ${axis === 'out' ? 'output row' : 'input channel'})`,
      dora.shape,
    );
  }
  return { ...inner, kind: 'dora', label: `DoRA (${inner.label})`, axis };
}

function innerPlan(file: string, id: string, family: Family, t: ModuleTensors): AdapterModulePlan {
  switch (family) {
    case 'lora':
      return loconPlan(file, id, t);
    case 'hada':
      return lohaPlan(file, id, t);
    case 'lokr':
      return lokrPlan(file, id, t);
    case 'diff': {
      const d = t.diff!;
      const [out] = mat(d.shape);
      if (d.shape.length === 1) {
        throw new FormatError(
          'FORMAT_UNSUPPORTED_ADAPTER',
          `${file}: module '${id}': '${d.key}' is the difference of a 1-D (norm-layer) weight ${fmt(d.shape)}; lora-mix maps the Linear and Conv modules of the layout only`,
          { file, key: d.key, adapter: 'norm-layer diff' },
        );
      }
      if (d.shape.length !== 2 && d.shape.length !== 4) {
        throw shapeError(
          file,
          id,
          `diff '${d.key}' is ${fmt(d.shape)}; expected [out, in] or [out, in, kh, kw]`,
          d.shape,
        );
      }
      return {
        kind: 'dense',
        label: 'full diff',
        tensors: t,
        downShape: [1, ...d.shape.slice(1)],
        upShape: [out, 1],
      };
    }
    case 'glora':
      return gloraPlan(file, id, t);
    case 'oft':
      return oftPlan(file, id, t);
  }
}

/**
 * OFT (`oft_blocks` [n, b, b] or `oft_diag` [n, b, b]) or BOFT (`oft_blocks` [m, n, b, b]), each with an optional
 * `rescale` of out = n·b values. BOFT's stage i pairs rows in groups of 2·2^i·⌊b/2⌋, which must divide out.
 */
function oftPlan(file: string, id: string, t: ModuleTensors): AdapterModulePlan {
  if (t.oft_blocks && t.oft_diag) {
    throw new FormatError(
      'FORMAT_MIXED',
      `${file}: module '${id}' has both oft_blocks and oft_diag ('${t.oft_blocks.key}', '${t.oft_diag.key}'); expected one`,
      { file, key: id },
    );
  }
  const blocks = t.oft_blocks ?? t.oft_diag;
  if (!blocks) throw incomplete(file, id, `'${t.rescale?.key}' (an OFT rescale) without oft_blocks`);
  const s = blocks.shape;
  const boft = s.length === 4 && t.oft_blocks !== undefined;
  const [m, n = 0, b = 0, b2 = 0] = boft ? s : [1, ...s];
  if ((s.length !== 3 && !boft) || n <= 0 || b <= 0 || b !== b2) {
    throw shapeError(
      file,
      id,
      `'${blocks.key}' is ${fmt(s)}; expected [n, b, b] (OFT: n square blocks)${t.oft_diag ? '' : ' or [m, n, b, b] (BOFT: m stages)'}`,
      s,
    );
  }
  const out = n * b;
  if (boft) {
    for (let i = 0; i < (m ?? 0); i++) {
      const k = 2 ** i * Math.floor(b / 2);
      if (k < 1 || out % (2 * k) !== 0) {
        throw shapeError(
          file,
          id,
          `BOFT '${blocks.key}' ${fmt(s)}: stage ${i} pairs rows in groups of ${2 * k}, which does not divide its ${out} rows`,
          s,
        );
      }
    }
  }
  if (t.rescale) {
    const count = t.rescale.shape.reduce((a, c) => a * c, 1);
    if (count !== out || (t.rescale.shape[0] ?? 0) !== out) {
      throw shapeError(
        file,
        id,
        `the rescale '${t.rescale.key}' is ${fmt(t.rescale.shape)}; expected [${out}, 1, …] (one factor per output row of ${fmt(s)})`,
        t.rescale.shape,
      );
    }
  }
  return {
    kind: boft ? 'boft' : 'oft',
    label: boft ? 'BOFT' : t.oft_diag ? 'OFT (oft_diag)' : 'OFT',
    tensors: t,
    // The block size b is the dim LyCORIS trains with (inspect shows it as the module's dim).
    downShape: [b, 0],
    upShape: [out, b],
    outOnly: true,
  };
}

function loconPlan(file: string, id: string, t: ModuleTensors): AdapterModulePlan {
  need(file, id, t, ['down', 'up'], 'a LoRA');
  const down = t.down!.shape;
  const up = t.up!.shape;
  const r = down[0] ?? 0;
  if (up[1] !== r) {
    throw new LoraError(
      'LORA_RANK_MISMATCH',
      `${file}: module '${id}': lora_down ${fmt(down)} has rank ${r} but lora_up ${fmt(up)} has ${up[1]}`,
      { file, key: id, expected: r, found: up[1] },
    );
  }
  if (!t.mid) return { kind: 'lowRank', label: 'LoRA', tensors: t, downShape: down, upShape: up, scaleDim: r };
  const mid = t.mid.shape;
  if (mid.length !== 4 || mid[0] !== r || mid[1] !== r || (down.length === 4 && (down[2] !== 1 || down[3] !== 1))) {
    throw shapeError(
      file,
      id,
      `a Tucker LoCon needs lora_down [r, in, 1, 1] and lora_mid [r, r, kh, kw]; found down ${fmt(down)}, mid ${fmt(mid)}`,
      { down, mid },
    );
  }
  return {
    kind: 'lowRank',
    label: 'LoCon (Tucker)',
    tensors: t,
    downShape: [r, down[1] ?? 0, mid[2] ?? 1, mid[3] ?? 1],
    upShape: up,
    scaleDim: r,
  };
}

function lohaPlan(file: string, id: string, t: ModuleTensors): AdapterModulePlan {
  need(file, id, t, ['hada_w1_a', 'hada_w1_b', 'hada_w2_a', 'hada_w2_b'], 'a LoHa');
  const tucker = t.hada_t1 !== undefined || t.hada_t2 !== undefined;
  if (tucker) need(file, id, t, ['hada_t1', 'hada_t2'], 'a Tucker LoHa');
  const [a1r, a1c] = mat(t.hada_w1_a!.shape);
  const [b1r, b1c] = mat(t.hada_w1_b!.shape);
  const [a2r, a2c] = mat(t.hada_w2_a!.shape);
  const [b2r, b2c] = mat(t.hada_w2_b!.shape);
  const shapes = `hada_w1_a ${fmt(t.hada_w1_a!.shape)}, hada_w1_b ${fmt(t.hada_w1_b!.shape)}, hada_w2_a ${fmt(t.hada_w2_a!.shape)}, hada_w2_b ${fmt(t.hada_w2_b!.shape)}`;
  if (!tucker) {
    if (a1c !== b1r || a2c !== b2r || a1r !== a2r || b1c !== b2c) {
      throw shapeError(file, id, `LoHa factors do not fit together: ${shapes}`, shapes);
    }
    return {
      kind: 'hadamard',
      label: 'LoHa',
      tensors: t,
      downShape: [b1r, b1c],
      upShape: [a1r, a1c],
      fanIn: b1c,
      scaleDim: b1r,
    };
  }
  const t1 = t.hada_t1!.shape;
  const t2 = t.hada_t2!.shape;
  // Tucker: w_a [r, out], w_b [r, in], t [r, r, kh, kw].
  if (
    t1.length !== 4 ||
    t2.length !== 4 ||
    t1[0] !== a1r ||
    t1[1] !== b1r ||
    t2[0] !== a2r ||
    t2[1] !== b2r ||
    a1c !== a2c ||
    b1c !== b2c ||
    t1[2] !== t2[2] ||
    t1[3] !== t2[3]
  ) {
    throw shapeError(
      file,
      id,
      `Tucker LoHa factors do not fit together: ${shapes}, hada_t1 ${fmt(t1)}, hada_t2 ${fmt(t2)}`,
      shapes,
    );
  }
  return {
    kind: 'hadamard',
    label: 'LoHa (Tucker)',
    tensors: t,
    downShape: [b1r, b1c, t1[2] ?? 1, t1[3] ?? 1],
    upShape: [a1c, a1r],
    scaleDim: b1r,
  };
}

function lokrPlan(file: string, id: string, t: ModuleTensors): AdapterModulePlan {
  const side = (n: 1 | 2): { rows: number; cols: number; kernel?: [number, number]; dim?: number } => {
    const full = t[`lokr_w${n}`];
    const a = t[`lokr_w${n}_a`];
    const b = t[`lokr_w${n}_b`];
    if (full && (a || b)) {
      throw new FormatError(
        'FORMAT_MIXED',
        `${file}: module '${id}' has lokr_w${n} and lokr_w${n}_a/_b; expected one of them`,
        { file, key: id },
      );
    }
    if (full) {
      const [rows, cols] = mat(full.shape);
      const kernel: [number, number] | undefined =
        full.shape.length === 4 ? [full.shape[2] ?? 1, full.shape[3] ?? 1] : undefined;
      return { rows, cols: kernel ? (full.shape[1] ?? 0) : cols, ...(kernel ? { kernel } : {}) };
    }
    if (!a || !b) {
      throw incomplete(
        file,
        id,
        `a LoKr needs lokr_w${n} or both lokr_w${n}_a and lokr_w${n}_b; found ${a ? `lokr_w${n}_a without lokr_w${n}_b` : b ? `lokr_w${n}_b without lokr_w${n}_a` : 'neither'}`,
      );
    }
    const tk = n === 2 ? t.lokr_t2 : undefined;
    if (tk) {
      // Tucker: a [r, o], b [r, i], t [r, r, kh, kw].
      const [ar, ac] = mat(a.shape);
      const [br, bc] = mat(b.shape);
      if (tk.shape.length !== 4 || tk.shape[0] !== ar || tk.shape[1] !== br) {
        throw shapeError(
          file,
          id,
          `Tucker LoKr w2 does not fit together: lokr_w2_a ${fmt(a.shape)}, lokr_w2_b ${fmt(b.shape)}, lokr_t2 ${fmt(tk.shape)}`,
          tk.shape,
        );
      }
      return { rows: ac, cols: bc, kernel: [tk.shape[2] ?? 1, tk.shape[3] ?? 1], dim: br };
    }
    const [ar, ac] = mat(a.shape);
    const [br, bc] = mat(b.shape);
    if (ac !== br) {
      throw new LoraError(
        'LORA_RANK_MISMATCH',
        `${file}: module '${id}': lokr_w${n}_a ${fmt(a.shape)} and lokr_w${n}_b ${fmt(b.shape)} have different ranks`,
        { file, key: id, expected: ac, found: br },
      );
    }
    return { rows: ar, cols: bc, dim: br };
  };
  if (t.lokr_t2 && (!t.lokr_w2_a || !t.lokr_w2_b)) {
    throw incomplete(file, id, 'lokr_t2 needs lokr_w2_a and lokr_w2_b');
  }
  const l = side(1);
  const r = side(2);
  const out = l.rows * r.rows;
  const scaleDim = r.dim ?? l.dim;
  if (r.kernel) {
    return {
      kind: 'kronecker',
      label: 'LoKr',
      tensors: t,
      downShape: [1, l.cols * r.cols, r.kernel[0], r.kernel[1]],
      upShape: [out, 1],
      ...(scaleDim !== undefined ? { scaleDim } : {}),
    };
  }
  return {
    kind: 'kronecker',
    label: 'LoKr',
    tensors: t,
    downShape: [1, l.cols * r.cols],
    upShape: [out, 1],
    fanIn: l.cols * r.cols,
    ...(scaleDim !== undefined ? { scaleDim } : {}),
  };
}

function gloraPlan(file: string, id: string, t: ModuleTensors): AdapterModulePlan {
  need(file, id, t, ['a1', 'a2', 'b1', 'b2'], 'a GLoRA');
  const a1 = t.a1!.shape,
    a2 = t.a2!.shape,
    b1 = t.b1!.shape,
    b2 = t.b2!.shape;
  const isNew = b2[0] === b1[1] && b1[1] !== undefined && a1[1] === a2[0] && a2[1] === a1[0] && b2[1] === a2[1];
  const isOld = b2[1] === b1[0] && a1[0] === a2[1] && a2[0] === a1[1] && b1[1] === a1[1];
  // On a square layer both readings fit: a1 [x, y], a2 [y, x], b1 [x, y], b2 [y, x] is an old-layout GLoRA of rank x
  // on a y × y weight, or a new-layout one of rank y on an x × x weight. ComfyUI decides by the weight (old when it is
  // y × y); for any rank at most the layer's width that is the reading whose rank is the smaller of x and y (old when
  // x = y, as ComfyUI). Reading an old file as new would take its rank for the width (session 8 audit).
  if (isNew && !(isOld && (a1[0] ?? 0) <= (a1[1] ?? 0))) {
    const kernel = b2.length === 4 ? [b2[2] ?? 1, b2[3] ?? 1] : [];
    return {
      kind: 'glora',
      label: 'GLoRA',
      tensors: t,
      downShape: [b2[0] ?? 0, a2[1] ?? 0, ...kernel],
      upShape: [b1[0] ?? 0, b1[1] ?? 0],
      scaleDim: a2[0] ?? 1,
    };
  }
  if (isOld) {
    return {
      kind: 'glora',
      label: 'GLoRA',
      tensors: t,
      downShape: [b1[0] ?? 0, b1[1] ?? 0],
      upShape: [b2[0] ?? 0, b2[1] ?? 0],
      scaleDim: a1[0] ?? 1,
      gloraOld: true,
    };
  }
  throw shapeError(
    file,
    id,
    `GLoRA factors do not fit together: a1 ${fmt(a1)}, a2 ${fmt(a2)}, b1 ${fmt(b1)}, b2 ${fmt(b2)} (expected a1 [in, r], a2 [r, in], b1 [out, r], b2 [r, in(, kh, kw)])`,
    { a1, a2, b1, b2 },
  );
}

/** The scale of a module: alpha / dim, or 1 when alpha or the dim is absent (ComfyUI's rule). */
export function adapterScale(plan: AdapterModulePlan, alpha: number | undefined): number {
  if (alpha === undefined || plan.scaleDim === undefined || plan.scaleDim === 0) return 1;
  return alpha / plan.scaleDim;
}

// ---- reading the term -------------------------------------------------------------------------------------------

type Read = (key: string) => Promise<Float32Array>;

/** A [rows, cols] ndarray over data. */
const m2 = (data: Float32Array, rows: number, cols: number): F32Array => ndarray(data, [rows, cols]);

/** aᵀ of a row-major [rows, cols] matrix. */
const transpose = (a: Float32Array, rows: number, cols: number): Float32Array => transposeF32(a, rows, cols);

/**
 * Fold a Tucker core into the second factor: C[p, i, y, x] = Σ_q core[p, q, y, x]·b[q, i], core [r, r, kh, kw],
 * b [r, in] → C [r, in·kh·kw] (flattened row-major over in, kh, kw).
 */
export function foldTucker(
  core: Float32Array,
  coreShape: readonly number[],
  b: Float32Array,
  inn: number,
): Float32Array {
  const [p0 = 0, q0 = 0, kh = 1, kw = 1] = coreShape;
  const K = kh * kw;
  const out = new Float32Array(p0 * inn * K);
  const acc = new Float64Array(inn * K);
  for (let p = 0; p < p0; p++) {
    acc.fill(0);
    for (let q = 0; q < q0; q++) {
      for (let k = 0; k < K; k++) {
        const c = core[(p * q0 + q) * K + k] ?? 0;
        if (c === 0) continue;
        for (let i = 0; i < inn; i++) acc[i * K + k] = (acc[i * K + k] ?? 0) + c * (b[q * inn + i] ?? 0);
      }
    }
    out.set(acc, p * inn * K);
  }
  return out;
}

/**
 * Read the term of a module planned by classifyModule. `weightShape` is the layout's shape of the weight it
 * changes; `alphas` the alpha a LoRA reads (for the LoRA kinds) and the stored one (for the others).
 */
export async function readAdapterTerm(
  plan: AdapterModulePlan,
  weightShape: readonly number[],
  alphas: { readonly lora: number; readonly stored: number | undefined },
  read: Read,
): Promise<Term> {
  const alpha = alphas.stored;
  const t = plan.tensors;
  const get = async (role: FactorRole): Promise<Float32Array> => read(t[role]!.key);
  const shape = [...weightShape];
  const out = shape[0] ?? 0;
  const inn = shape[1] ?? 0;
  const fanIn = shape.slice(1).reduce((a, b) => a * b, 1);
  const s = adapterScale(plan, alpha);
  const bias = t.diff_b ? ndarray(await get('diff_b'), [...t.diff_b.shape]) : undefined;
  const withBias = <T extends object>(x: T): T => (bias ? { ...x, bias } : x);

  if (plan.kind === 'oft' || plan.kind === 'boft') {
    const blocks = t.oft_blocks ?? t.oft_diag!;
    const common = {
      shape,
      blocks: ndarray(await read(blocks.key), [...blocks.shape]),
      constraint: (alpha ?? 0) * out,
      ...(t.rescale ? { rescale: await get('rescale') } : {}),
    };
    return plan.kind === 'boft'
      ? { kind: 'boft' as const, ...common }
      : { kind: 'oft' as const, ...common, cayley: t.oft_diag === undefined };
  }
  let inner: Term;
  const innerKind = plan.kind === 'dora' ? innerOf(t) : plan.kind;
  if (innerKind === 'lowRank') {
    const down = await get('down');
    const up = await get('up');
    const r = t.down!.shape[0] ?? 0;
    const conv = shape.length === 4;
    const alphaOf = alphas.lora;
    const downData = t.mid ? foldTucker(await get('mid'), t.mid.shape, down, inn) : down;
    // A LoRA module's bias is scaled by alpha / r like up; a diff_b beside LoRA factors is not, so store it divided.
    const loraBias =
      bias && alphaOf !== 0
        ? ndarray(
            bias.data.map((x) => (x * r) / alphaOf),
            [...bias.shape],
          )
        : undefined;
    const m: LoraModule = {
      down: ndarray(downData, conv ? [r, ...shape.slice(1)] : [r, inn]),
      up: ndarray(up, conv ? [out, r, 1, 1] : [out, r]),
      alpha: alphaOf,
      ...(loraBias ? { bias: loraBias } : {}),
    };
    inner = m;
  } else if (innerKind === 'hadamard') {
    const tucker = t.hada_t1 !== undefined;
    const pair = async (n: 1 | 2) => {
      const a = await get(`hada_w${n}_a`);
      const b = await get(`hada_w${n}_b`);
      const [ar, ac] = mat(t[`hada_w${n}_a`]!.shape);
      if (!tucker) return { up: m2(a, ar, ac), down: m2(b, ac, fanIn) };
      // Tucker: up = w_aᵀ [out, r], down = core folded into w_b.
      const core = t[`hada_t${n}`]!;
      const c = foldTucker(await get(`hada_t${n}`), core.shape, b, inn);
      return { up: m2(transpose(a, ar, ac), ac, ar), down: m2(c, core.shape[0] ?? 0, fanIn) };
    };
    inner = withBias({ kind: 'hadamard' as const, shape, scale: s, a: await pair(1), b: await pair(2) });
  } else if (innerKind === 'kronecker') {
    const side = async (n: 1 | 2): Promise<KroneckerSide> => {
      const full = t[`lokr_w${n}`];
      if (full) {
        const [rows, cols] = mat(full.shape);
        return { full: m2(await get(`lokr_w${n}`), rows, cols) };
      }
      const a = t[`lokr_w${n}_a`]!;
      const b = t[`lokr_w${n}_b`]!;
      const [ar, ac] = mat(a.shape);
      const [br, bc] = mat(b.shape);
      const core = n === 2 ? t.lokr_t2 : undefined;
      if (core) {
        const c = foldTucker(await get('lokr_t2'), core.shape, await get(`lokr_w${n}_b`), bc);
        return { up: m2(transpose(await get(`lokr_w${n}_a`), ar, ac), ac, ar), down: m2(c, ar, c.length / ar) };
      }
      return { up: m2(await get(`lokr_w${n}_a`), ar, ac), down: m2(await get(`lokr_w${n}_b`), br, bc) };
    };
    inner = withBias({ kind: 'kronecker' as const, shape, scale: s, left: await side(1), right: await side(2) });
  } else if (innerKind === 'dense') {
    inner = withBias({ kind: 'dense' as const, shape, delta: ndarray(await get('diff'), shape) });
  } else {
    const [a1, a2, b1, b2] = await Promise.all([get('a1'), get('a2'), get('b1'), get('b2')]);
    const sh = (r: FactorRole) => mat(t[r]!.shape);
    if (plan.gloraOld) {
      // Old layout: Δ = b2·b1 + W0·a2·a1 → a1' = a2, a2' = a1, b1' = b2, b2' = b1.
      inner = withBias({
        kind: 'glora' as const,
        shape,
        scale: s,
        a1: m2(a2, ...sh('a2')),
        a2: m2(a1, ...sh('a1')),
        b1: m2(b2, ...sh('b2')),
        b2: m2(b1, ...sh('b1')),
      });
    } else {
      inner = withBias({
        kind: 'glora' as const,
        shape,
        scale: s,
        a1: m2(a1, ...sh('a1')),
        a2: m2(a2, ...sh('a2')),
        b1: m2(b1, ...sh('b1')),
        b2: m2(b2, ...sh('b2')),
      });
    }
  }
  if (plan.kind !== 'dora') return inner;
  const mag = t.dora_scale ? await get('dora_scale') : await get('magnitude');
  return withBias({ kind: 'dora' as const, shape, inner, magnitude: mag, axis: plan.axis ?? 'out' });
}

function innerOf(t: ModuleTensors): TermKind {
  if (t.down || t.up) return 'lowRank';
  if (t.hada_w1_a) return 'hadamard';
  if (t.lokr_w1 || t.lokr_w1_a || t.lokr_w2 || t.lokr_w2_a) return 'kronecker';
  if (t.diff) return 'dense';
  return 'glora';
}
