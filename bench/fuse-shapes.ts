/**
 * Kernel speed per shape class of a real fuse: every module the LCM-LoRA-shaped input of bench/fuse.ts changes in
 * the SD1.5 / SDXL base, grouped by class (attention by width, feed-forward, 3×3 conv, other convs, proj_in/out,
 * small linears, text encoders), each class run through `kernel.update` with its real shapes, rank and dtypes
 * (F16 in, F16 out; random values), on the Node kernel with 2 threads. Reports GFLOP/s per class (median over
 * --reps passes over the class) and each class's share of the fuse's FLOPs.
 *
 *   npx tsx bench/fuse.ts --arch sd15,sdxl --gen-only     # the inputs, once
 *   npx tsx bench/fuse-shapes.ts [--arch sd15,sdxl] [--reps 3] [--threads 2]
 *
 * The shapes come from lora-mix's own plan of the fuse (planFusion), so the classes hold exactly the jobs a
 * `lora-mix fuse` of these files runs.
 */
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openBase, planFusion, type Target } from '../src/fuse/fuse.js';
import { openInputs } from '../src/fuse/inputs.js';
import type { Arch } from '../src/layout/types.js';
import { createCpuKernel } from '../src/node/kernel-threads.js';
import { installNodeHost } from '../src/node/install.js';

installNodeHost();

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');

interface Job {
  rows: number;
  cols: number;
  rank: number;
}

/** The class of a target, from its module path and the shape of the base tensor it lands on. */
function classOf(t: Target, shape: readonly number[]): string {
  const p = t.entry.path;
  if (t.entry.component !== 'unet') return `text encoder (${t.entry.component})`;
  if (/\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$/.test(p)) return `attention ${t.rows[1] - t.rows[0]}`;
  if (/\.ff\.net\./.test(p)) return 'feed-forward';
  if (/\.proj_(in|out)$/.test(p)) return 'proj_in / proj_out';
  if (shape.length === 4) return shape[2] === 3 && shape[3] === 3 ? 'conv 3×3' : 'conv 1×1';
  return 'small linear (time_emb, …)';
}

async function jobsOf(arch: Arch): Promise<Map<string, Job[]>> {
  const opened = await openBase(path.join(OUT, `${arch}-base.f16.safetensors`));
  try {
    const d = opened.detection;
    const inputs = await openInputs([path.join(OUT, `${arch}-lcm.f16.safetensors`)], [1], d.arch, d.size, false);
    const plan = planFusion(opened, inputs, {});
    const byClass = new Map<string, Job[]>();
    for (const x of plan.files[0]?.tensors ?? []) {
      for (const t of x.targets) {
        const rank = t.terms.reduce((a, term) => a + term.module.rank, 0);
        const cls = classOf(t, x.info.shape);
        const list = byClass.get(cls) ?? [];
        list.push({ rows: t.rows[1] - t.rows[0], cols: t.cols, rank });
        byClass.set(cls, list);
      }
    }
    await Promise.all(inputs.map((x) => x.close()));
    return byClass;
  } finally {
    await opened.close();
  }
}

function randomF16(n: number): Uint8Array {
  // halves in ±[2^-4, 2^-1): 0x2c00–0x37ff with a random sign
  const u = new Uint16Array(n);
  for (let i = 0; i < n; i++) u[i] = (0x2c00 + Math.floor(Math.random() * 0xc00)) | (Math.random() < 0.5 ? 0x8000 : 0);
  return new Uint8Array(u.buffer);
}

function randomF32(n: number, scale: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (Math.random() - 0.5) * scale;
  return a;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const flag = (n: string): string | undefined => {
    const i = args.indexOf(n);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const archs = (flag('--arch') ?? 'sd15,sdxl').split(',') as Arch[];
  const reps = Number(flag('--reps') ?? 3);
  const threads = Number(flag('--threads') ?? 2);
  const kernel = await createCpuKernel({ threads });
  process.stdout.write(`kernel: ${kernel.name}; ${new Date().toUTCString()}\n`);
  try {
    for (const arch of archs) {
      const byClass = await jobsOf(arch);
      const total = [...byClass.values()].flat().reduce((a, j) => a + 2 * j.rows * j.cols * j.rank, 0);
      process.stdout.write(
        `\n${arch}: ${[...byClass.values()].flat().length} jobs, ${(total / 1e9).toFixed(1)} GFLOP\n\n` +
          '| class | jobs | shapes (rows × cols, rank) | GFLOP | share | GFLOP/s median (min–max) | ms per job |\n' +
          '|---|---|---|---|---|---|---|\n',
      );
      for (const [cls, jobs] of [...byClass].sort((a, b) => a[0].localeCompare(b[0]))) {
        const flops = jobs.reduce((a, j) => a + 2 * j.rows * j.cols * j.rank, 0);
        // one buffer set per distinct shape (reused across the class's jobs of that shape)
        const bufs = new Map<string, { w: Uint8Array; up: Float32Array; down: Float32Array }>();
        for (const j of jobs) {
          const k = `${j.rows}x${j.cols}r${j.rank}`;
          if (!bufs.has(k))
            bufs.set(k, {
              w: randomF16(j.rows * j.cols),
              up: randomF32(j.rows * j.rank, 0.02),
              down: randomF32(j.rank * j.cols, 0.02),
            });
        }
        const secs: number[] = [];
        for (let r = 0; r <= reps; r++) {
          const t0 = performance.now();
          for (const j of jobs) {
            const b = bufs.get(`${j.rows}x${j.cols}r${j.rank}`);
            if (!b) continue;
            await kernel.update(b.w, 'F16', b.w, 'F16', { ...j, up: b.up, down: b.down });
          }
          if (r > 0) secs.push((performance.now() - t0) / 1000); // pass 0 warms up (tier-up, memory growth)
        }
        const gf = secs.map((s) => flops / s / 1e9);
        const shapes = [...bufs.keys()].slice(0, 4).join(', ') + (bufs.size > 4 ? `, … (${bufs.size})` : '');
        process.stdout.write(
          `| ${cls} | ${jobs.length} | ${shapes} | ${(flops / 1e9).toFixed(2)} | ${((100 * flops) / total).toFixed(1)} % | ` +
            `${median(gf).toFixed(1)} (${Math.min(...gf).toFixed(1)}–${Math.max(...gf).toFixed(1)}) | ${((1000 * median(secs)) / jobs.length).toFixed(2)} |\n`,
        );
      }
    }
  } finally {
    await kernel.dispose();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
