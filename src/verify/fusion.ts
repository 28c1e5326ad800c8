/**
 * verifyFusion: a functional check of a fused checkpoint against its base and LoRAs, without running a UNet.
 *
 * For every fused module and a few seeded Gaussian probes x, compare W′x (the fused weight) with the reference
 * Wx + Σᵢ λᵢsᵢ·upᵢ(downᵢx), computed in f64 from the base weight and the LoRA factors as stored. The fused weight
 * was rounded once to its dtype, so each row of W′x may legitimately differ from the reference by up to
 *
 *     bound_r = Σⱼ |xⱼ|·ulp(W′_rj)/2  +  γ·Σⱼ |xⱼ|·(|W_rj| + Σₖ |U_rk||D_kj|),    γ = (R + 2)·2⁻²⁴
 *
 * (one rounding to the storage dtype, plus f32 accumulation of the rank-R update and the f32 scaling of up). A
 * module passes when max_r |W′x − ref|_r / bound_r ≤ tolerance. A wrong mapping, a transposed factor, a wrong
 * q/k/v slice or a wrong weight moves W′x by the size of the delta itself, far above the bound — unless the delta
 * is smaller than the storage precision, which the report flags as inconclusive instead of passing it silently.
 */
import { FuseError } from '../core/errors.js';
import { listSome } from '../formats/decode.js';
import type { MergeWeight } from '../lora/merge.js';
import { decodeToF32, halfUlp } from '../core/dtype.js';
import type { TensorInfo } from '../safetensors/header.js';
import { Rng } from '../sampler/rng.js';
import type { DType } from '../core/tensor.js';
import type { OpenedBase } from '../fuse/base.js';
import { transposedBaseDelta } from '../fuse/transposed.js';
import { openBase, planFusion, type Target } from '../fuse/fuse.js';
import { openInputs, type FuseInput } from '../fuse/inputs.js';
import { stackFactors, type StackPart } from '../lora/stack.js';
import { denseFactors, termFactors, termLinearInStrength, termWeightedDelta } from '../lora/terms/index.js';
import { now } from '../kernels/job.js';
import type { BaseInput, LoraInput } from '../fuse/types.js';
import type { ModuleVerifyReport, VerifyOptions, VerifyReport } from './types.js';
import { fmtRatio } from './report.js';

const GAMMA_BASE = 2 ** -24;
/** Below this signal-to-bound ratio a module's delta is under storage precision and the check cannot see it. */
const MIN_SIGNAL = 2;

async function readRowsF32(file: OpenedBase['files'][number]['file'], info: TensorInfo): Promise<Float32Array> {
  if (info.dtype === 'F32' || info.dtype === 'F16' || info.dtype === 'BF16') return file.readF32(info.name);
  return decodeToF32(info.dtype, await file.read(info.name), info.name);
}

/**
 * Check a fused checkpoint (path, ByteSource or SafetensorsFile; folders through the Node adapter) against the base
 * it was made from and the LoRAs and weights that went in. Resolves to the per-module report; `ok` is false when any
 * module's error exceeds the tolerance (the CLI exits 1). Fails with typed errors when the two checkpoints do not
 * correspond (FUSE_VERIFY_FAILED) or a LoRA does not fit (as fuseLoras would).
 */
export async function verifyFusion(
  fused: BaseInput,
  base: BaseInput,
  loras: readonly LoraInput[],
  weights: readonly MergeWeight[],
  options: VerifyOptions = {},
): Promise<VerifyReport> {
  const t0 = now();
  const probes = options.probes ?? 4;
  const tolerance = options.tolerance ?? 2;
  if (!Number.isInteger(probes) || probes < 1 || probes > 64) {
    throw new FuseError('FUSE_VERIFY_FAILED', `verify: probes must be an integer in 1..64, found ${String(probes)}`, {
      found: probes,
    });
  }
  if (!(typeof tolerance === 'number' && tolerance > 0 && Number.isFinite(tolerance))) {
    throw new FuseError(
      'FUSE_VERIFY_FAILED',
      `verify: tolerance must be a positive number, found ${String(tolerance)}`,
      { found: tolerance },
    );
  }
  const b = await openBase(base);
  let f: OpenedBase | null = null;
  let inputs: FuseInput[] = [];
  try {
    f = await openBase(fused);
    const d = b.detection;
    if (f.detection.arch !== d.arch || f.detection.size !== d.size || f.detection.naming !== d.naming) {
      throw new FuseError(
        'FUSE_VERIFY_FAILED',
        `verify: ${f.name} is ${f.detection.arch}/${f.detection.size} (${f.detection.naming}) but the base ${b.name} is ` +
          `${d.arch}/${d.size} (${d.naming}); they cannot be compared`,
        { fused: f.name, base: b.name },
      );
    }
    inputs = await openInputs(loras, weights, d.arch, d.size, options.allowUnmatched === true);
    const plan = planFusion(b, inputs, { allowUnmatched: options.allowUnmatched === true });
    const only = options.modules ? new Set(options.modules) : null;
    const jobs: { fi: number; key: string; targets: Target[] }[] = [];
    plan.files.forEach((fp, fi) => {
      for (const t of fp.tensors) {
        const targets = t.targets.filter((x) => !only || only.has(x.path));
        if (targets.length > 0) jobs.push({ fi, key: t.info.name, targets });
      }
    });
    const total = jobs.reduce((a, j) => a + j.targets.length, 0);
    const rng = new Rng(options.seed ?? 0);
    const reports: ModuleVerifyReport[] = [];
    for (const job of jobs) {
      const bf = b.files[job.fi]!;
      const ff = f.files.find((x) => x.rel === bf.rel);
      const bInfo = bf.file.info(job.key);
      const fInfo = ff?.file.get(job.key);
      if (!ff || !fInfo) {
        throw new FuseError(
          'FUSE_VERIFY_FAILED',
          `verify: ${f.name} has no tensor '${bf.rel ? `${bf.rel}: ` : ''}${job.key}' that the base has`,
          { fused: f.name, key: job.key },
        );
      }
      if (fInfo.shape.join(',') !== bInfo.shape.join(',')) {
        throw new FuseError(
          'FUSE_VERIFY_FAILED',
          `verify: '${job.key}' is [${fInfo.shape.join(', ')}] in ${f.name} but [${bInfo.shape.join(', ')}] in the base`,
          { key: job.key },
        );
      }
      const [W, Wf] = await Promise.all([readRowsF32(bf.file, bInfo), readRowsF32(ff.file, fInfo)]);
      for (const t of job.targets) {
        reports.push(checkModule(t, W, Wf, await stackedUpdate(t, W), fInfo.dtype, probes, rng, tolerance));
        options.onProgress?.(reports.length, total);
      }
    }
    const failed = reports.filter((r) => !r.ok);
    const inconclusive = reports.filter((r) => r.inconclusive).length;
    let worst: ModuleVerifyReport | null = null;
    for (const r of reports) if (!worst || r.worstRatio > worst.worstRatio) worst = r;
    return {
      fused: f.name,
      base: b.name,
      modules: reports,
      checked: reports.length,
      failed: failed.length,
      inconclusive,
      worst,
      tolerance,
      ok: failed.length === 0 && reports.length > 0,
      seconds: now() - t0,
    };
  } finally {
    await Promise.allSettled(inputs.map((x) => x.close()));
    await f?.close();
    await b.close();
  }
}

/**
 * The update of a target as one pair of factors U·D (the stacking merge and fuse use): lowRank terms from their
 * factors as stored, every other kind from its exact factors (DoRA and GLoRA against the base rows of W).
 */
async function stackedUpdate(
  t: Target,
  W: Float32Array,
): Promise<{ up: Float32Array; down: Float32Array; rank: number }> {
  const rows = t.rows[1] - t.rows[0];
  const w0 = W.subarray(t.rows[0] * t.cols, t.rows[1] * t.cols);
  const parts: StackPart[] = [];
  for (const term of t.terms) {
    if (term.module.kind === 'lowRank') {
      const f = await term.module.factors();
      parts.push({ coef: term.coef, rank: term.module.rank, up: f.up, down: f.down, name: term.module.name });
    } else {
      const module = await term.module.term();
      if (term.module.transposed) {
        // A base-dependent term on a weight stored transposed (OpenCLIP text_projection): Δ(W0ᵀ)ᵀ, weighted.
        const f = denseFactors(transposedBaseDelta(module, t.path, term.coef, w0, rows, t.cols), rows, t.cols);
        parts.push({ coef: 1, rank: f.rank, up: f.up, down: f.down, name: term.module.name });
      } else if (termLinearInStrength(module)) {
        const f = termFactors(module, t.path, w0);
        parts.push({ coef: term.coef, rank: f.rank, up: f.up, down: f.down, name: term.module.name });
      } else {
        // OFT / BOFT: ComfyUI's strength rule is not coef·Δ; the weighted delta as dense factors.
        const f = denseFactors(termWeightedDelta(module, t.path, term.coef, w0), rows, t.cols);
        parts.push({ coef: 1, rank: f.rank, up: f.up, down: f.down, name: term.module.name });
      }
    }
  }
  return stackFactors(parts, rows, t.cols);
}

function checkModule(
  t: Target,
  W: Float32Array,
  Wf: Float32Array,
  update: { up: Float32Array; down: Float32Array; rank: number },
  dtype: DType,
  probes: number,
  rng: Rng,
  tolerance: number,
): ModuleVerifyReport {
  const rows = t.rows[1] - t.rows[0];
  const cols = t.cols;
  const base0 = t.rows[0] * cols;
  const R = update.rank;
  const gamma = (R + 2) * GAMMA_BASE;
  let worstRatio = 0;
  let worstRelative = 0;
  let signal = Infinity;
  const x = new Float64Array(cols);
  const ax = new Float64Array(cols);
  const v = new Float64Array(R);
  const a = new Float64Array(R);
  for (let p = 0; p < probes; p++) {
    for (let j = 0; j < cols; j++) {
      x[j] = rng.normal();
      ax[j] = Math.abs(x[j]!);
    }
    // v = D·x and a = |D|·|x| (for the bound).
    for (let k = 0; k < R; k++) {
      let s = 0,
        sa = 0;
      const o = k * cols;
      for (let j = 0; j < cols; j++) {
        const dv = update.down[o + j]!;
        s += dv * x[j]!;
        sa += Math.abs(dv) * ax[j]!;
      }
      v[k] = s;
      a[k] = sa;
    }
    let maxErr = 0,
      maxDelta = 0,
      probeSignal = 0;
    for (let r = 0; r < rows; r++) {
      const o = base0 + r * cols;
      let y = 0,
        yf = 0,
        bound = 0,
        mag = 0;
      for (let j = 0; j < cols; j++) {
        const wf = Wf[o + j]!;
        const w = W[o + j]!;
        y += w * x[j]!;
        yf += wf * x[j]!;
        bound += ax[j]! * halfUlp(wf, dtype);
        mag += ax[j]! * Math.abs(w);
      }
      let delta = 0,
        deltaMag = 0;
      for (let k = 0; k < R; k++) {
        const u = update.up[r * R + k]!;
        delta += u * v[k]!;
        deltaMag += Math.abs(u) * a[k]!;
      }
      bound += gamma * (mag + deltaMag) + Number.MIN_VALUE;
      const err = Math.abs(yf - (y + delta));
      worstRatio = Math.max(worstRatio, err / bound);
      maxErr = Math.max(maxErr, err);
      maxDelta = Math.max(maxDelta, Math.abs(delta));
      probeSignal = Math.max(probeSignal, Math.abs(delta) / bound);
    }
    worstRelative = Math.max(worstRelative, maxDelta > 0 ? maxErr / maxDelta : maxErr > 0 ? Infinity : 0);
    signal = Math.min(signal, probeSignal);
  }
  if (Number.isNaN(worstRatio)) worstRatio = Infinity; // NaN in the fused weight
  const inconclusive = signal < MIN_SIGNAL;
  return {
    path: t.path,
    component: t.entry.component,
    group: t.entry.group,
    worstRatio,
    worstRelative,
    signal,
    inconclusive,
    ok: worstRatio <= tolerance,
  };
}

/** A one-line description of the failing modules (for errors and the CLI). */
export function describeFailures(report: VerifyReport, max = 5): string {
  const bad = report.modules.filter((m) => !m.ok).sort((a, b) => b.worstRatio - a.worstRatio);
  return listSome(
    bad.map((m) => `${m.path} (error ${fmtRatio(m.worstRatio)}× the rounding bound)`),
    max,
  );
}
