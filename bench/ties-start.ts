/**
 * The truncated SVD of TIES results from different starting blocks (issue 14): for every S-th module of bench/ties.ts's
 * merge, the dense TIES result is formed once, a reference error is computed (subspace iteration with 64 extra
 * columns and `--ref-its` whole rounds), then each variant's truncatedSvd runs with the merge's stopping rule:
 * the random start (main) and starts from the inputs' factors (factorStartBasis, q coefficient rounds). Prints per
 * variant: products with A per module (FLOPs ÷ 2·l·m·n), CPU seconds (start + SVD), and the Frobenius error's
 * excess over the reference (mean and worst, with the worst module).
 *
 *   flock /work/bench.lock npx tsx bench/ties-start.ts [--stride 40] [--ref-its 10] [--variants random,f1,f2]
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { installNodeHost } from '../src/node/install.js';
import { openStreamingInputs, withFactors } from '../src/node/merge-stream.js';
import { methodRequest, planMerge } from '../src/lora/merge.js';
import { DenseScratch, METHOD_SVD_OPTIONS, factorStartBasis, methodDelta } from '../src/lora/method-module.js';
import { wasmProduct, type ProductF32 } from '../src/lora/product.js';
import { jsProduct, SvdWorkspace, truncatedSvd } from '../src/lora/svd.js';
import { arg } from './args.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
installNodeHost();
const stride = Number(arg('stride', '40'));
const offset = Number(arg('offset', '0'));
const refIts = Number(arg('ref-its', '10'));
const variants = arg('variants', 'random,f1,f2').split(',');
const svdOpts = JSON.parse(arg('svd-opts', '{}')) as Record<string, number>;
const inputs = await openStreamingInputs([
  path.join(OUT, 'sdxl-lcm.f16.safetensors'),
  path.join(OUT, 'methods-sdxl-b64.f16.safetensors'),
]);
if (!inputs) throw new Error('inputs need the in-memory path');
const plan = planMerge(inputs.loras, [1, 0.8], { method: 'ties', density: 0.2, rank: 64 });
const work = plan.modules.filter((pm) => pm.action === 'method').filter((_, i) => i % stride === offset);
const base = wasmProduct() ?? jsProduct;
let flop = 0;
const counted: ProductF32 = (rows, cols, rank, a, b, into) => {
  flop += 2 * rows * cols * rank;
  return base(rows, cols, rank, a, b, into);
};
const scratch = new DenseScratch();
const ws = new SvdWorkspace();
type Acc = { products: number; cpu: number; excess: number[]; worst: string; its: number };
const acc = new Map<string, Acc>(variants.map((v) => [v, { products: 0, cpu: 0, excess: [], worst: '', its: 0 }]));
const l = 72;
for (const pm of work) {
  const req = methodRequest(plan, await withFactors(inputs, pm));
  const { out: m, fanIn: n } = req;
  const d = Float32Array.from(methodDelta(req, scratch));
  const ref = truncatedSvd(d, m, n, 64, {
    oversample: 64,
    minIterations: refIts,
    maxIterations: refIts,
    workspace: ws,
  });
  const line: Record<string, unknown> = { path: pm.path, m, n, refKept: +(1 - ref.error ** 2 / ref.total).toFixed(5) };
  for (const v of variants) {
    const a = acc.get(v)!;
    flop = 0;
    const c0 = process.cpuUsage();
    // fQ: Q coefficient rounds, l factor rows; fQ-R: R factor rows, l − R random ones.
    const [fq, fr] = v.slice(1).split('-');
    const q = v.startsWith('f') ? Number(fq) : -1;
    const start = q >= 0 ? factorStartBasis(req, fr ? Number(fr) : l, q, counted) : undefined;
    const s = truncatedSvd(d, m, n, 64, {
      ...METHOD_SVD_OPTIONS,
      ...svdOpts,
      workspace: ws,
      product: counted,
      ...(start ? { startLeft: start } : {}),
    });
    const c = process.cpuUsage(c0);
    const products = flop / (2 * l * m * n);
    const ex = s.error / ref.error - 1;
    a.products += products;
    a.cpu += (c.user + c.system) / 1e6;
    a.its += s.iterations;
    if (a.excess.length === 0 || ex > Math.max(...a.excess)) a.worst = pm.path;
    a.excess.push(ex);
    line[v] = { p: +products.toFixed(2), its: s.iterations, ex: +(ex * 100).toFixed(4) };
  }
  console.log(JSON.stringify(line));
}
await inputs.close();
for (const [v, a] of acc) {
  const N = a.excess.length;
  console.log(
    JSON.stringify({
      variant: v,
      modules: N,
      productsPerModule: +(a.products / N).toFixed(2),
      meanIts: +(a.its / N).toFixed(2),
      cpuS: +a.cpu.toFixed(2),
      meanExcessPct: +((a.excess.reduce((x, y) => x + y, 0) / N) * 100).toFixed(4),
      worstExcessPct: +(Math.max(...a.excess) * 100).toFixed(4),
      worst: a.worst,
      load: os.loadavg()[0]?.toFixed(2),
    }),
  );
}
