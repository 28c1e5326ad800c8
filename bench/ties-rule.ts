/**
 * Traces of the truncated SVD of TIES results (issue 14), for judging stopping rules offline: for every S-th module
 * of bench/ties.ts's merge the dense TIES result is formed once, a reference error computed (subspace iteration
 * with 64 extra columns and `--ref-its` whole rounds), then the merge's SVD (methodSvd: the factor start) runs a
 * fixed `--steps` half-steps and records, per half-step, the energy kept and the basis's Ritz values. One JSON line
 * per module: { path, m, n, total, refErr, kept: [...], ritz: [[θ_k, θ_{k+1}, θ_l] per step], ruleSteps } where
 * ruleSteps is the half-step the merge's current rule stops at (a second run with METHOD_SVD_OPTIONS).
 *
 *   flock /work/bench.lock npx tsx bench/ties-rule.ts [--stride 20] [--offset 0] [--ref-its 8] [--steps 8] > FILE.jsonl
 */
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { installNodeHost } from '../src/node/install.js';
import { openStreamingInputs, withFactors } from '../src/node/merge-stream.js';
import { methodRequest, planMerge } from '../src/lora/merge.js';
import { DenseScratch, methodDelta, methodSvd } from '../src/lora/method-module.js';
import { SvdWorkspace, truncatedSvd } from '../src/lora/svd.js';
import { arg } from './args.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
installNodeHost();
const stride = Number(arg('stride', '20'));
const offset = Number(arg('offset', '0'));
const refIts = Number(arg('ref-its', '8'));
const steps = Number(arg('steps', '8'));
const k = 64;
const inputs = await openStreamingInputs([
  path.join(OUT, 'sdxl-lcm.f16.safetensors'),
  path.join(OUT, 'methods-sdxl-b64.f16.safetensors'),
]);
if (!inputs) throw new Error('inputs need the in-memory path');
const plan = planMerge(inputs.loras, [1, 0.8], { method: 'ties', density: 0.2, rank: k });
const work = plan.modules.filter((pm) => pm.action === 'method').filter((_, i) => i % stride === offset);
const scratch = new DenseScratch();
const ws = new SvdWorkspace();
for (const pm of work) {
  const req = methodRequest(plan, await withFactors(inputs, pm));
  const { out: m, fanIn: n } = req;
  const d = Float32Array.from(methodDelta(req, scratch));
  const ref = truncatedSvd(d, m, n, k, { oversample: 64, minIterations: refIts, maxIterations: refIts, workspace: ws });
  const kept: number[] = [];
  const ritz: number[][] = [];
  let total = 0;
  methodSvd(req, d, k, {
    workspace: ws,
    minIterations: steps / 2,
    maxIterations: steps / 2,
    onHalfStep: (_s, kp, t, v) => {
      kept.push(kp);
      total = t;
      ritz.push([v[k - 1] ?? 0, v[k] ?? 0, v[v.length - 1] ?? 0]);
    },
  });
  let ruleSteps = -1;
  methodSvd(req, d, k, { workspace: ws, onHalfStep: (s) => (ruleSteps = s) });
  console.log(JSON.stringify({ path: pm.path, m, n, total, refErr: ref.error, kept, ritz, ruleSteps }));
}
await inputs.close();
