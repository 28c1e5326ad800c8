/**
 * The LoHa kernel job against a plain LoRA job of the same parameter count, on one SDXL-size module (issue 13):
 * updateHadamard (two rank-R pairs) vs update (rank 2R), F16 → F16, alternated, median of N.
 *
 *   npx tsx bench/loha-kernel.ts [--threads T] [--rows 1280] [--cols 5120] [--rank 32] [--runs 7]
 */
import { createCpuKernel } from '../src/node/kernel-threads.js';
import '../src/node.js';

const arg = (name: string, d: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : d;
};
const threads = arg('threads', 2);
const rows = arg('rows', 1280);
const cols = arg('cols', 5120);
const r = arg('rank', 32);
const runs = arg('runs', 7);

let seed = 7;
const rand = (n: number, s: number): Float32Array => {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    a[i] = (seed / 2147483648 - 0.5) * s;
  }
  return a;
};
const src = new Uint8Array(rows * cols * 2);
const w = rand(rows * cols, 0.1);
for (let i = 0; i < w.length; i++) {
  // f16 bits of small normal values: exponent 0x2000..0x3bff range
  src[2 * i] = (w[i]! * 1e5) & 0xff;
  src[2 * i + 1] = 0x20 + (i % 16);
}
const dst = new Uint8Array(src.length);
const kernel = await createCpuKernel({ threads });
const side = () => ({ rank: r, up: rand(rows * r, 0.1), down: rand(r * cols, 0.1) });
const h = { a: side(), b: side(), scale: 0.5, coef: 1 };
const empty = { rows, cols, rank: 0, up: new Float32Array(0), down: new Float32Array(0) };
const lora = { rows, cols, rank: 2 * r, up: rand(rows * 2 * r, 0.1), down: rand(2 * r * cols, 0.1) };
const times: Record<string, number[]> = { lora: [], loha: [] };
for (let i = 0; i < runs + 1; i++) {
  let t = performance.now();
  await kernel.update(src, 'F16', dst, 'F16', lora);
  if (i > 0) times.lora!.push(performance.now() - t);
  t = performance.now();
  await kernel.updateHadamard!(src, 'F16', dst, 'F16', empty, h);
  if (i > 0) times.loha!.push(performance.now() - t);
}
await kernel.dispose();
const med = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] ?? Number.NaN;
const lo = med(times.lora!);
const ha = med(times.loha!);
console.log(JSON.stringify({ rows, cols, rank: r, threads, runs, loraMs: lo, lohaMs: ha, ratio: ha / lo }));
