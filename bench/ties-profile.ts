/**
 * Per-phase profile of the TIES merge of bench/ties.ts on ONE thread, in process (wall and, for the whole loop and
 * the SVD, CPU seconds of the process — less inflated by other load than wall times): for each module (a slice with
 * --start/--count, or every module) the time to read its factors, form the dense deltas, run the method (trim,
 * sign vote, disjoint mean), the truncated SVD (split into its big products and the rest, with its iteration
 * count), and the memory after it (RSS, JS heap, array buffers incl. the WASM kernel memory). Prints a summary
 * and writes one JSON line per module to bench/out/methods-ties-profile.jsonl.
 *
 *   flock /work/bench.lock npx tsx bench/ties-profile.ts [--start 0] [--count 100] [--stride 1] [--svd-opts '{"maxIterations":2}']
 *
 * --peer-stride S picks the modules bench/peer/ties_peft.py takes with --stride S instead: every S-th of the
 * kohya module names sorted (lora_unet_…, lora_te1_…), so both tools time the same modules (bench/ties.ts --sample).
 */
import { writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { installNodeHost } from '../src/node/install.js';
import { openStreamingInputs, withFactors } from '../src/node/merge-stream.js';
import { methodRequest, planMerge } from '../src/lora/merge.js';
import { DenseScratch, memberDelta, methodSvd, moduleRng } from '../src/lora/method-module.js';
import { METHODS } from '../src/lora/methods.js';
import { wasmProduct } from '../src/lora/product.js';
import { SvdWorkspace, jsProduct } from '../src/lora/svd.js';
import type { ProductF32 } from '../src/lora/product.js';
import { arg } from './args.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
const A = path.join(OUT, 'sdxl-lcm.f16.safetensors');
const B = path.join(OUT, 'methods-sdxl-b64.f16.safetensors');

installNodeHost();
const start = Number(arg('start', '0'));
const count = Number(arg('count', '100000'));
const stride = Number(arg('stride', '1'));
const svdOpts = JSON.parse(arg('svd-opts', '{}')) as Record<string, number>;
const inputs = await openStreamingInputs([A, B]);
if (!inputs) throw new Error('inputs need the in-memory path');
const plan = planMerge(inputs.loras, [1, 0.8], { method: 'ties', density: 0.2, rank: 64 });
const work = plan.modules.filter((pm) => pm.action === 'method');
const peerStride = Number(arg('peer-stride', '0'));
/** The kohya name of a module path (the benchmark's files use diffusers-style kohya names). */
const kohya = (p: string): string => `lora_${p.replace(/\./g, '_')}`;
const peerNames = new Set(
  work
    .map((pm) => kohya(pm.path))
    .sort()
    .filter((_, i) => i % Math.max(1, peerStride) === 0),
);
const chosen =
  peerStride > 0
    ? work.filter((pm) => peerNames.has(kohya(pm.path)))
    : work.filter((_, i) => i >= start && (i - start) % stride === 0).slice(0, count);
const base = wasmProduct() ?? jsProduct;
let productMs = 0;
let productFlop = 0;
const timed: ProductF32 = (rows, cols, rank, a, b, into) => {
  const t = performance.now();
  const r = base(rows, cols, rank, a, b, into);
  productMs += performance.now() - t;
  productFlop += 2 * rows * cols * rank;
  return r;
};
const scratch = new DenseScratch();
const ws = new SvdWorkspace();
const mb = (x: number) => Math.round(x / 2 ** 20);
const rows: Record<string, number | string>[] = [];
const sum = {
  deltasCpu: 0,
  svdCpu: 0,
  read: 0,
  deltas: 0,
  method: 0,
  svd: 0,
  svdProducts: 0,
  svdFlop: 0,
  its: 0,
  elements: 0,
};
// As the merge does (MethodModuleRequest.reserve): each input's dense buffer allocated once at the largest module,
// so no module pays for a grown buffer (--no-reserve: grown on demand, as profiles before session 7 did).
if (!process.argv.includes('--no-reserve')) {
  const largest = Math.max(0, ...chosen.map((pm) => pm.out * pm.fanIn));
  for (let i = 0; i < 2; i++) scratch.get(1 + i, largest).fill(0);
}
const t0 = performance.now();
const cpu0 = process.cpuUsage();
for (const pm of chosen) {
  let t = performance.now();
  const filled = await withFactors(inputs, pm);
  const read = performance.now() - t;
  const req = methodRequest(plan, filled);
  const n = req.out * req.fanIn;
  t = performance.now();
  const dc0 = process.cpuUsage();
  const deltas: (Float32Array | null)[] = req.weights.map(() => null);
  for (const m of req.members) deltas[m.input] = memberDelta(m, req.out, req.fanIn, scratch.get(1 + m.input, n));
  const dense = performance.now() - t;
  const dc = process.cpuUsage(dc0);
  sum.deltasCpu += (dc.user + dc.system) / 1000;
  t = performance.now();
  const d = METHODS[req.method].dense(deltas, req.weights, req.params, moduleRng(req.params.seed, req.path), true);
  const method = performance.now() - t;
  productMs = 0;
  productFlop = 0;
  t = performance.now();
  const c0 = process.cpuUsage();
  // As the merge runs it (methodSvd: the factor start, METHOD_SVD_OPTIONS), the start's small products timed too.
  const svd = methodSvd(req, d, 64, { workspace: ws, product: timed, ...svdOpts });
  const svdMs = performance.now() - t;
  const c1 = process.cpuUsage(c0);
  sum.svdCpu += (c1.user + c1.system) / 1000;
  const mem = process.memoryUsage();
  const row = {
    path: pm.path,
    m: req.out,
    n: req.fanIn,
    readMs: +read.toFixed(1),
    deltasMs: +dense.toFixed(1),
    methodMs: +method.toFixed(1),
    svdMs: +svdMs.toFixed(1),
    svdProductMs: +productMs.toFixed(1),
    svdGflops: +(productFlop / productMs / 1e6).toFixed(1),
    its: svd.iterations,
    keptFraction: +(1 - (svd.error * svd.error) / svd.total).toFixed(4),
    rssMB: mb(mem.rss),
    heapMB: mb(mem.heapUsed),
    arrayBuffersMB: mb(mem.arrayBuffers),
  };
  rows.push(row);
  sum.read += read;
  sum.deltas += dense;
  sum.method += method;
  sum.svd += svdMs;
  sum.svdProducts += productMs;
  sum.svdFlop += productFlop;
  sum.its += svd.iterations;
  sum.elements += n;
}
const wall = (performance.now() - t0) / 1000;
const cpuAll = process.cpuUsage(cpu0);
await inputs.close();
writeFileSync(path.join(OUT, 'methods-ties-profile.jsonl'), `${rows.map((r) => JSON.stringify(r)).join('\n')}\n`);
const top = [...rows].sort((a, b) => Number(b.svdMs) - Number(a.svdMs)).slice(0, 6);
for (const r of top) console.log(JSON.stringify(r));
const s = (x: number) => +(x / 1000).toFixed(2);
console.log(
  JSON.stringify({
    modules: chosen.length,
    of: work.length,
    elementsM: +(sum.elements / 1e6).toFixed(1),
    wall: +wall.toFixed(2),
    cpu: s((cpuAll.user + cpuAll.system) / 1000),
    svdCpu: s(sum.svdCpu),
    deltasCpu: s(sum.deltasCpu),
    read: s(sum.read),
    deltas: s(sum.deltas),
    method: s(sum.method),
    svd: s(sum.svd),
    svdProducts: s(sum.svdProducts),
    svdGflops: +(sum.svdFlop / sum.svdProducts / 1e6).toFixed(1),
    meanIterations: +(sum.its / Math.max(1, chosen.length)).toFixed(2),
    maxRssMB: Math.max(...rows.map((r) => Number(r.rssMB))),
    peerStride,
    load: os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' '),
    svdOpts,
  }),
);
