/**
 * The SVD's stopping rule and block size for `convert --rank 64` of a LoHa (issue 13), judged against a long-run
 * reference on a sample of the file's modules: for every S-th module of bench/out/adapters-sdxl-FILE.f16.safetensors
 * the dense delta is formed once (termDelta, as convertModule does), a reference error computed (subspace iteration
 * with 64 extra columns and `--ref-its` whole rounds: within 0.001 % of the optimum on this file's flat 1280 × 1280
 * modules, bench/RESULTS.md), then truncatedSvd runs with each candidate option set. One JSON line per module and
 * candidate: { path, m, n, cand, colProducts (flops of the products with Δ ÷ 2·m·n: one l-column product = l),
 * iterations, excess (error ÷ reference − 1), seconds }, then a summary per candidate (Σ flops-weighted products,
 * worst and mean excess).
 *
 *   flock /work/bench.lock npx tsx bench/convert-rule.ts [--file loha|loha-decay] [--stride 20] [--offset 0]
 *     [--ref-its 12] [--cands '[{"oversample":24}, {"oversample":24,"excess":2e-4,"ritzGap":true}]']
 */
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openPath } from '../src/formats/index.js';
import { planLora, readPlannedTerm } from '../src/formats/decode.js';
import { type ProductF32, wasmProduct } from '../src/lora/product.js';
import { jsProduct, SvdWorkspace, truncatedSvd, type TruncatedSvdOptions } from '../src/lora/svd.js';
import { termDelta, termDims } from '../src/lora/terms/index.js';
import '../src/node.js';
import { arg } from './args.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const input = path.join(ROOT, 'bench', 'out', `adapters-sdxl-${arg('file', 'loha')}.f16.safetensors`);
const stride = Number(arg('stride', '20'));
const offset = Number(arg('offset', '0'));
const refIts = Number(arg('ref-its', '12'));
const cands = JSON.parse(arg('cands', '[{"oversample":24}]')) as TruncatedSvdOptions[];
const k = 64;
const base = wasmProduct() ?? jsProduct;
let flop = 0;
const counted: ProductF32 = (rows, cols, rank, a, b, into) => {
  flop += 2 * rows * cols * rank;
  return base(rows, cols, rank, a, b, into);
};
const file = await openPath(input);
const plan = await planLora(file, {});
const work = plan.modules.filter((_, i) => i % stride === offset);
const ws = new SvdWorkspace();
const sums = cands.map(() => ({ weighted: 0, elements: 0, worst: 0, mean: 0, modules: 0, seconds: 0 }));
for (const pm of work) {
  const t = await readPlannedTerm(file, pm);
  const { out: m, fanIn: n } = termDims(t, pm.name);
  const d = termDelta(t, pm.name);
  const ref = truncatedSvd(d, m, n, k, {
    oversample: 64,
    minIterations: refIts,
    maxIterations: refIts,
    workspace: ws,
  }).error;
  cands.forEach((c, i) => {
    flop = 0;
    const t0 = performance.now();
    const svd = truncatedSvd(d, m, n, k, { ...c, workspace: ws, product: counted });
    const seconds = (performance.now() - t0) / 1000;
    // Products with Δ only (the small ones are ≪): flops ÷ 2·m·n = columns multiplied.
    const colProducts = flop / (2 * m * n);
    const excess = svd.error / ref - 1;
    const s = sums[i]!;
    s.weighted += colProducts * m * n;
    s.elements += m * n;
    s.worst = Math.max(s.worst, excess);
    s.mean += excess;
    s.modules++;
    s.seconds += seconds;
    console.log(
      JSON.stringify({ path: pm.name, m, n, cand: i, colProducts, iterations: svd.iterations, excess, seconds }),
    );
  });
}
await file.close();
for (const [i, s] of sums.entries()) {
  console.log(
    JSON.stringify({
      cand: cands[i],
      modules: s.modules,
      colProductsWeighted: s.weighted / s.elements,
      worstExcessPercent: s.worst * 100,
      meanExcessPercent: (s.mean / s.modules) * 100,
      seconds: s.seconds,
    }),
  );
}
