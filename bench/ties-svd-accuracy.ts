/**
 * Accuracy and cost of the truncated SVD on real TIES results (bench/ties.ts's inputs and merge): for every S-th
 * module (--stride S, default 80), the merge's subspace iteration and the block-Krylov variant against a reference
 * (subspace iteration with 64 extra columns and 25 rounds), one thread: the excess of each Frobenius error over the
 * reference's, the products with A (count and FLOPs) and the CPU seconds of the SVD.
 *
 *   flock /work/bench.lock npx tsx bench/ties-svd-accuracy.ts [--stride 80] [--no-ref]
 */
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { installNodeHost } from '../src/node/install.js';
import { openStreamingInputs, withFactors } from '../src/node/merge-stream.js';
import { methodRequest, planMerge } from '../src/lora/merge.js';
import { DenseScratch, METHOD_SVD_OPTIONS, methodDelta } from '../src/lora/method-module.js';
import { wasmProduct } from '../src/lora/product.js';
import type { ProductF32 } from '../src/lora/product.js';
import { jsProduct, SvdWorkspace, truncatedSvd, type TruncatedSvdOptions } from '../src/lora/svd.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
};
installNodeHost();
const stride = Number(arg('stride', '80'));
const withRef = !process.argv.includes('--no-ref');
const inputs = await openStreamingInputs([
  path.join(OUT, 'sdxl-lcm.f16.safetensors'),
  path.join(OUT, 'methods-sdxl-b64.f16.safetensors'),
]);
if (!inputs) throw new Error('inputs need the in-memory path');
const plan = planMerge(inputs.loras, [1, 0.8], { method: 'ties', density: 0.2, rank: 64 });
const work = plan.modules.filter((pm) => pm.action === 'method').filter((_, i) => i % stride === 0);
const base = wasmProduct() ?? jsProduct;
let products = 0;
let flop = 0;
const counted: ProductF32 = (rows, cols, inner, a, b, into) => {
  // a product with A: one of its dimensions pair is the module's m × n (the 72-row operands are the others)
  if (Math.min(rows, cols) <= 80 && inner * Math.max(rows, cols) >= cur.m * cur.n * 0.999) products++;
  flop += 2 * rows * cols * inner;
  return base(rows, cols, inner, a, b, into);
};
const cur = { m: 0, n: 0 };
const variants: [string, TruncatedSvdOptions][] = [
  ['subspace', { ...METHOD_SVD_OPTIONS }],
  ['krylov', { ...METHOD_SVD_OPTIONS, krylov: true }],
  ['kd1', { ...METHOD_SVD_OPTIONS, krylov: true, maxIterations: 1 }],
  ['kd2', { ...METHOD_SVD_OPTIONS, krylov: true, maxIterations: 2 }],
];
const scratch = new DenseScratch();
const ws = new SvdWorkspace();
const sums: Record<string, { cpu: number; products: number; flop: number; worst: number; mean: number }> = {};
for (const pm of work) {
  const req = methodRequest(plan, await withFactors(inputs, pm));
  const d = Float32Array.from(methodDelta(req, scratch));
  cur.m = req.out;
  cur.n = req.fanIn;
  const ref = withRef
    ? truncatedSvd(d, req.out, req.fanIn, 64, { oversample: 64, minIterations: 25, maxIterations: 25 }).error
    : Number.NaN;
  const row: Record<string, number | string> = { path: pm.path, m: req.out, n: req.fanIn };
  for (const [name, opts] of variants) {
    products = 0;
    flop = 0;
    const c0 = process.cpuUsage();
    const s = truncatedSvd(d, req.out, req.fanIn, 64, { ...opts, workspace: ws, product: counted });
    const c = process.cpuUsage(c0);
    const cpu = (c.user + c.system) / 1e6;
    const excessPct = withRef ? (s.error / ref - 1) * 100 : Number.NaN;
    row[`${name}Excess%`] = +excessPct.toFixed(4);
    row[`${name}Products`] = products;
    row[`${name}Cpu`] = +cpu.toFixed(3);
    const t = (sums[name] ??= { cpu: 0, products: 0, flop: 0, worst: 0, mean: 0 });
    t.cpu += cpu;
    t.products += products;
    t.flop += flop;
    t.worst = Math.max(t.worst, excessPct);
    t.mean += excessPct / work.length;
  }
  console.log(JSON.stringify(row));
}
await inputs.close();
for (const [name, t] of Object.entries(sums))
  console.log(
    JSON.stringify({
      variant: name,
      modules: work.length,
      cpuS: +t.cpu.toFixed(2),
      productsPerModule: +(t.products / work.length).toFixed(2),
      gflop: +(t.flop / 1e9).toFixed(1),
      worstExcessPct: +t.worst.toFixed(4),
      meanExcessPct: +t.mean.toFixed(4),
    }),
  );
