/**
 * Reading adapter files in their real spelling: the decoded term's delta against an f64 transcription of the
 * upstream formulas applied to the raw tensors of the file (ComfyUI weight_adapter / LyCORIS functional), for the
 * layouts with Tucker cores and transposed factors.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeLora, loadLora } from '../src/formats/index.js';
import { getLayout } from '../src/layout/index.js';
import { kohyaName } from '../src/formats/kohya.js';
import { openSafetensors } from '../src/node/files.js';
import { termDelta } from '../src/lora/terms/index.js';
import { makeFile, open } from './formats-helpers.js';

const FX = path.resolve(import.meta.dirname, '..', 'fixtures', 'adapters');
const layout = getLayout('sd15', 'tiny');

async function raw(file: string): Promise<(k: string) => Promise<{ v: Float32Array; s: number[] } | undefined>> {
  const f = await openSafetensors(path.join(FX, file));
  return async (k) => {
    const info = f.get(k);
    return info ? { v: await f.readF32(k), s: [...info.shape] } : undefined;
  };
}

/** M[o, i, y, x] = Σ_a Σ_b t[a, b, y, x]·wb[b, i]·wa[a, o]  (LyCORIS rebuild_tucker), flattened [out, in·K]. */
function tucker(
  t: Float32Array,
  ts: number[],
  wa: Float32Array,
  out: number,
  wb: Float32Array,
  inn: number,
): Float64Array {
  const [ra = 0, rb = 0, kh = 1, kw = 1] = ts;
  const K = kh * kw;
  const m = new Float64Array(out * inn * K);
  for (let o = 0; o < out; o++)
    for (let i = 0; i < inn; i++)
      for (let k = 0; k < K; k++) {
        let s = 0;
        for (let a = 0; a < ra; a++)
          for (let b = 0; b < rb; b++) s += t[(a * rb + b) * K + k]! * wb[b * inn + i]! * wa[a * out + o]!;
        m[o * inn * K + i * K + k] = s;
      }
  return m;
}

function expectClose(got: Float32Array, ref: Float64Array): void {
  let scale = 0,
    err = 0;
  for (let i = 0; i < ref.length; i++) {
    scale = Math.max(scale, Math.abs(ref[i]!));
    err = Math.max(err, Math.abs(got[i]! - ref[i]!));
  }
  expect(scale).toBeGreaterThan(0);
  expect(err).toBeLessThanOrEqual(1e-5 * scale);
}

describe('decoded adapter terms reproduce the upstream formulas on the raw tensors', () => {
  it('LoHa with Tucker cores: s · M1 ⊙ M2, Mn rebuilt from hada_tn, hada_wn_a [r, out], hada_wn_b [r, in]', async () => {
    const lora = await loadLora(path.join(FX, 'loha-tucker.safetensors'));
    const get = await raw('loha-tucker.safetensors');
    let tuckerModules = 0;
    for (const [p, term] of lora.modules) {
      const e = layout.byPath.get(p)!;
      const n = kohyaName(e, 'diffusers');
      const t1 = await get(`${n}.hada_t1`);
      if (!t1) continue;
      const [out = 0, inn = 0] = e.shape;
      const [a1, b1, t2, a2, b2, alpha] = await Promise.all(
        ['hada_w1_a', 'hada_w1_b', 'hada_t2', 'hada_w2_a', 'hada_w2_b', 'alpha'].map((s) => get(`${n}.${s}`)),
      );
      const m1 = tucker(t1.v, t1.s, a1!.v, out, b1!.v, inn);
      const m2 = tucker(t2!.v, t2!.s, a2!.v, out, b2!.v, inn);
      const s = alpha!.v[0]! / b1!.s[0]!;
      expectClose(
        termDelta(term, p),
        m1.map((x, i) => s * x * m2[i]!),
      );
      tuckerModules++;
    }
    expect(tuckerModules).toBeGreaterThan(0);
  });

  it('LoCon with a Tucker core: s · Σ up[o,p]·mid[p,q,y,x]·down[q,i]', async () => {
    const lora = await loadLora(path.join(FX, 'locon-tucker.safetensors'));
    const get = await raw('locon-tucker.safetensors');
    let n0 = 0;
    for (const [p, term] of lora.modules) {
      const e = layout.byPath.get(p)!;
      const n = kohyaName(e, 'diffusers');
      const mid = await get(`${n}.lora_mid.weight`);
      if (!mid) continue;
      const [out = 0, inn = 0] = e.shape;
      const [down, up, alpha] = await Promise.all(
        ['lora_down.weight', 'lora_up.weight', 'alpha'].map((s) => get(`${n}.${s}`)),
      );
      const r = down!.s[0]!;
      // up [out, r, 1, 1] read as wa = upᵀ [r, out]; down [r, in, 1, 1] as wb.
      const upT = new Float32Array(r * out);
      for (let o = 0; o < out; o++) for (let a = 0; a < r; a++) upT[a * out + o] = up!.v[o * r + a]!;
      const m = tucker(mid.v, mid.s, upT, out, down!.v, inn);
      const s = alpha!.v[0]! / r;
      expectClose(
        termDelta(term, p),
        m.map((x) => s * x),
      );
      n0++;
    }
    expect(n0).toBeGreaterThan(0);
  });

  it('LoKr: s · lokr_w1 ⊗ (lokr_w2_a · lokr_w2_b), s = alpha / lokr_w2_b.shape[0]', async () => {
    const lora = await loadLora(path.join(FX, 'lokr.safetensors'));
    const get = await raw('lokr.safetensors');
    for (const [p, term] of lora.modules) {
      const e = layout.byPath.get(p)!;
      const n = kohyaName(e, 'diffusers');
      const [w1, a, b, alpha] = await Promise.all(
        ['lokr_w1', 'lokr_w2_a', 'lokr_w2_b', 'alpha'].map((s) => get(`${n}.${s}`)),
      );
      const [o1 = 0, i1 = 0] = w1!.s;
      const [o2 = 0, r = 0] = a!.s;
      const c2 = b!.s[1]!;
      const s = alpha!.v[0]! / b!.s[0]!;
      const fanIn = i1 * c2;
      const ref = new Float64Array(o1 * o2 * fanIn);
      for (let x = 0; x < o1; x++)
        for (let y = 0; y < o2; y++)
          for (let c = 0; c < i1; c++)
            for (let d = 0; d < c2; d++) {
              let w2 = 0;
              for (let k = 0; k < r; k++) w2 += a!.v[y * r + k]! * b!.v[k * c2 + d]!;
              ref[(x * o2 + y) * fanIn + c * c2 + d] = s * w1!.v[x * i1 + c]! * w2;
            }
      expectClose(termDelta(term, p), ref);
    }
  });
});

describe('GLoRA layouts on a square layer (both readings fit the shapes; ComfyUI decides by the weight)', () => {
  // Session 8 audit (scripts/audit/reference.py, sd15-glora-old-layout): an old-layout GLoRA (a1 [r, in], a2 [in, r],
  // b1 [r, in], b2 [out, r]) on a square layer was read as a new-layout one of rank `in` and refused.
  const toQ = layout.byPath.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q')!;
  const [n = 0] = toQ.shape;
  const name = toQ.kohyaNames[0]!;
  const r = 2;
  const vals = (len: number, seed: number) =>
    Array.from({ length: len }, (_, i) => Math.sin(seed * 97 + i * 1.3) * 0.3);
  const w0 = Float32Array.from({ length: n * n }, (_, i) => Math.cos(i * 0.7) * 0.2);
  const mm = (a: ArrayLike<number>, b: ArrayLike<number>, rows: number, k: number, cols: number): Float64Array => {
    const c = new Float64Array(rows * cols);
    for (let i = 0; i < rows; i++)
      for (let j = 0; j < cols; j++) {
        let s = 0;
        for (let q = 0; q < k; q++) s += a[i * k + q]! * b[q * cols + j]!;
        c[i * cols + j] = s;
      }
    return c;
  };
  const decode = async (shapes: Record<'a1' | 'a2' | 'b1' | 'b2', number[]>) => {
    const t = (['a1', 'a2', 'b1', 'b2'] as const).map((k, i) => ({
      name: `${name}.${k}.weight`,
      shape: shapes[k],
      values: vals(shapes[k][0]! * shapes[k][1]!, i + 1),
    }));
    const bytes = makeFile([...t, { name: `${name}.alpha`, shape: [], values: [1.5] }]);
    const lora = await decodeLora(await open(bytes, 'glora.safetensors'));
    const term = lora.modules.get(toQ.path)!;
    const [a1, a2, b1, b2] = t.map((x) => x.values);
    return { term, a1: a1!, a2: a2!, b1: b1!, b2: b2! };
  };

  it('the pre-2023 layout is read as ΔW = s·(b2·b1 + W0·a2·a1), s = alpha / a1.shape[0]', async () => {
    const { term, a1, a2, b1, b2 } = await decode({ a1: [r, n], a2: [n, r], b1: [r, n], b2: [n, r] });
    const wa = mm(mm(w0, a2, n, n, r), a1, n, r, n);
    const bb = mm(b2, b1, n, r, n);
    expectClose(
      termDelta(term, toQ.path, w0),
      wa.map((x, i) => (1.5 / r) * (x + bb[i]!)),
    );
  });

  it('the current layout is still read as ΔW = s·(W0·a1·a2 + b1·b2), s = alpha / a2.shape[0]', async () => {
    const { term, a1, a2, b1, b2 } = await decode({ a1: [n, r], a2: [r, n], b1: [n, r], b2: [r, n] });
    const wa = mm(mm(w0, a1, n, n, r), a2, n, r, n);
    const bb = mm(b1, b2, n, r, n);
    expectClose(
      termDelta(term, toQ.path, w0),
      wa.map((x, i) => (1.5 / r) * (x + bb[i]!)),
    );
  });
});
