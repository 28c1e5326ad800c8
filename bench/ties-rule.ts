/**
 * Traces of the truncated SVD of TIES results (issue 14), for judging stopping rules offline: for every S-th module
 * of bench/ties.ts's merge the dense TIES result is formed once, a reference error computed (subspace iteration
 * with 64 extra columns and `--ref-its` whole rounds), then the merge's SVD (methodSvd: the factor start) runs a
 * fixed `--steps` half-steps and records, per half-step, the energy kept and the basis's Ritz values. One JSON line
 * per module: { path, m, n, total, refErr, kept: [...], ritz: [[θ_k, θ_{k+1}, θ_l] per step], ruleSteps } where
 * ruleSteps is the half-step the merge's rule stops at (a second run, as methodSvd runs it), with its products (in
 * units of one 72-column product with the dense result) and its error's excess over the reference.
 *
 *   flock /work/bench.lock npx tsx bench/ties-rule.ts [--stride 20] [--offset 0] [--ref-its 8] [--steps 8] > FILE.jsonl
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { installNodeHost } from '../src/node/install.js';
import { openStreamingInputs, withFactors } from '../src/node/merge-stream.js';
import { methodRequest, planMerge } from '../src/lora/merge.js';
import { DenseScratch, methodDelta, methodSvd } from '../src/lora/method-module.js';
import { type ProductF32, wasmProduct } from '../src/lora/product.js';
import { jsProduct, SvdWorkspace, truncatedSvd } from '../src/lora/svd.js';
import { arg } from './args.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
installNodeHost();
const stride = Number(arg('stride', '20'));
const offset = Number(arg('offset', '0'));
const refIts = Number(arg('ref-its', '8'));
const steps = Number(arg('steps', '8'));
const k = 64;
// --svd-opts: options for both runs of the merge's SVD (e.g. '{"oversample":16}'); --ref FILE: the reference errors
// of an earlier run's output (same modules), so the long reference SVD is not repeated.
const svdOpts = JSON.parse(arg('svd-opts', '{}')) as Record<string, number>;
const refFile = arg('ref', '');
const refs = new Map<string, number>(
  refFile
    ? readFileSync(refFile, 'utf8')
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as { path: string; refErr: number })
        .map((r) => [r.path, r.refErr])
    : [],
);
const base = wasmProduct() ?? jsProduct;
let flop = 0;
const counted: ProductF32 = (rows, cols, rank, a, b, into) => {
  flop += 2 * rows * cols * rank;
  return base(rows, cols, rank, a, b, into);
};
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
  const refErr =
    refs.get(pm.path) ??
    truncatedSvd(d, m, n, k, { oversample: 64, minIterations: refIts, maxIterations: refIts, workspace: ws }).error;
  const kept: number[] = [];
  const ritz: number[][] = [];
  let total = 0;
  // --steps 0: no trace, only the rule's run.
  if (steps > 0)
    methodSvd(req, d, k, {
      ...svdOpts,
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
  flop = 0;
  const rule = methodSvd(req, d, k, {
    ...svdOpts,
    workspace: ws,
    product: counted,
    onHalfStep: (s) => (ruleSteps = s),
  });
  // Products of the rule's run in units of one 72-column product with the dense result (start and small ones included).
  const products = flop / (2 * 72 * m * n);
  const ruleExcess = rule.error / refErr - 1;
  console.log(JSON.stringify({ path: pm.path, m, n, total, refErr, kept, ritz, ruleSteps, products, ruleExcess }));
}
await inputs.close();
