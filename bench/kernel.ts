/**
 * Fused-update kernel and dtype-conversion benchmark.
 *
 *   npx tsx bench/kernel.ts                 (Liftoff on: V8's default tiering)
 *   node --no-liftoff --import tsx/esm bench/kernel.ts   (TurboFan code from the first call)
 *   npx tsx bench/kernel.ts --quick         (fewer rounds, for a smoke test)
 *
 * What it measures, all in one process so ratios are taken against baselines from the same run:
 *   - GFLOP/s of kernel.update() (2·rows·cols·rank per call, copies in/out of wasm memory included) at rank 64
 *     on SD-shaped layers, f32 in place and f16 in/out, 1 and 2 threads, relaxed_madd and mul+add;
 *   - baselines on the same shapes: naive JS f32 loops (i,k,j order, in place on a Float32Array — the ratio
 *     column), the library's plain-JS reference kernel (f64 accumulation, F16 in/out) and gpu.js 'webasm';
 *   - conversion throughput (elements/s) of the WASM SIMD converters vs the scalar reference.
 * Configurations are interleaved round by round (the machine is noisy); medians and best of the rounds.
 */
import os from 'node:os';
import { GPU } from 'gpu.js';
import { createCpuKernel, enableRelaxedSimdNode } from '../src/node/kernel-threads.js';
import { createGpuKernel, type GpuJsClass } from '../src/kernels/gpu.js';
import { createJsKernel } from '../src/kernels/js.js';
import type { FuseKernel, StoredFloat, UpdateJob } from '../src/kernels/types.js';
import { getWasmConvert, scalarConvert } from '../src/core/dtype-wasm.js';
import { installNodeHost } from '../src/node/install.js';

// Benchmarks import the layers directly: give them file paths, folders and threads as the Node entry does.
installNodeHost();

const quick = process.argv.includes('--quick');
const ROUNDS = quick ? 3 : 9;
const RANK = 64;
const SHAPES: Array<[number, number, string]> = [
  [1280, 1280, 'attn to_q/k/v/out (SDXL)'],
  [1280, 11520, 'conv 3×3 1280→1280 as [out, in·9]'],
  [320, 2880, 'conv 3×3 320→320 (small layer)'],
];

function median(a: number[]): number {
  const s = [...a].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function fill(rows: number, cols: number, dt: StoredFloat): Uint8Array {
  const b = new Uint8Array(rows * cols * (dt === 'F32' ? 4 : 2));
  if (dt === 'F32') {
    const f = new Float32Array(b.buffer);
    for (let i = 0; i < f.length; i++) f[i] = Math.sin(i) * 0.05;
  } else {
    const h = new Uint16Array(b.buffer);
    for (let i = 0; i < h.length; i++) h[i] = 0x2000 + (i % 0x1000) + (i & 1 ? 0x8000 : 0);
  }
  return b;
}

function job(rows: number, cols: number): UpdateJob {
  return {
    rows,
    cols,
    rank: RANK,
    up: Float32Array.from({ length: rows * RANK }, (_, i) => Math.cos(i) * 1e-3),
    down: Float32Array.from({ length: RANK * cols }, (_, i) => Math.sin(i * 0.7) * 1e-3),
  };
}

/** Naive JS baseline: W += U·D on Float32Arrays, loops i, k, j (the fastest plain order). Not in the library. */
function naiveKernel(): FuseKernel {
  const stats = { flops: 0, seconds: 0, calls: 0 };
  return {
    name: 'naive JS f32 i,k,j',
    backend: 'js-naive',
    stats,
    async update(src, _s, _d, _t, job) {
      const w = new Float32Array(src.buffer, src.byteOffset, job.rows * job.cols);
      const { rows, cols, rank, up, down } = job;
      for (let i = 0; i < rows; i++) {
        const wo = i * cols;
        for (let k = 0; k < rank; k++) {
          const u = up[i * rank + k]!;
          const d0 = k * cols;
          for (let j = 0; j < cols; j++) w[wo + j] = w[wo + j]! + u * down[d0 + j]!;
        }
      }
      return { overflow: 0, nonFiniteInput: 0 };
    },
    async dispose() {},
  };
}

interface Config {
  label: string;
  kernel: FuseKernel;
  dt: StoredFloat;
  rows: number;
  cols: number;
  times: number[];
  /** CPU seconds (user + system, all threads) per call: shows whether the threads really got cores. */
  cpu: number[];
  src: Uint8Array;
  job: UpdateJob;
  reps: number;
}

async function main(): Promise<void> {
  const relaxedOk = enableRelaxedSimdNode();
  const kernels = {
    plain1: await createCpuKernel({ threads: 1, relaxed: false }),
    plain2: await createCpuKernel({ threads: 2, relaxed: false }),
    relaxed1: await createCpuKernel({ threads: 1 }),
    relaxed2: await createCpuKernel({ threads: 2 }),
    js: createJsKernel(),
    naive: naiveKernel(),
  };
  const gpuWebasm = (await createGpuKernel({ GPU: GPU as unknown as GpuJsClass, mode: 'webasm' })).kernel;

  const lines: string[] = [];
  const log = (s = ''): void => {
    lines.push(s);
    process.stdout.write(`${s}\n`);
  };
  log(
    `machine: ${os.cpus().length} cpus, ${os.cpus()[0]?.model}, node ${process.version}, ` +
      `execArgv [${process.execArgv.filter((a) => !a.includes('tsx')).join(' ')}], relaxed SIMD ${relaxedOk ? 'on' : 'off'}, ` +
      `load average ${os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}`,
  );
  log(`date: ${new Date().toISOString()}   rounds: ${ROUNDS}, rank ${RANK}`);
  log();

  const configs: Config[] = [];
  for (const [rows, cols] of SHAPES) {
    const j = job(rows, cols);
    for (const dt of ['F32', 'F16'] as StoredFloat[]) {
      const src = fill(rows, cols, dt);
      for (const [label, kernel] of [
        ['wasm mul+add 1T', kernels.plain1],
        ['wasm mul+add 2T', kernels.plain2],
        ['wasm relaxed 1T', kernels.relaxed1],
        ['wasm relaxed 2T', kernels.relaxed2],
      ] as const) {
        configs.push({ label, kernel, dt, rows, cols, times: [], cpu: [], src, job: j, reps: 1 });
      }
    }
    // baselines: f16 in/out (what a fuse does); plain JS and gpu.js webasm are ~1 GFLOP/s, so fewer rounds
    const src16 = fill(rows, cols, 'F16');
    configs.push({
      label: 'naive JS f32 (i,k,j)',
      kernel: kernels.naive,
      dt: 'F32',
      rows,
      cols,
      times: [],
      cpu: [],
      src: fill(rows, cols, 'F32'),
      job: j,
      reps: 0,
    });
    configs.push({
      label: 'plain JS (f64)',
      kernel: kernels.js,
      dt: 'F16',
      rows,
      cols,
      times: [],
      cpu: [],
      src: src16,
      job: j,
      reps: 0,
    });
    configs.push({
      label: 'gpu.js webasm',
      kernel: gpuWebasm,
      dt: 'F16',
      rows,
      cols,
      times: [],
      cpu: [],
      src: src16,
      job: j,
      reps: 0,
    });
  }

  // warm-up: every WASM config once (grows memory, tiers up)
  for (const c of configs) if (c.reps) await c.kernel.update(c.src, c.dt, c.src, c.dt, c.job);

  const slowRounds = quick ? 1 : 2;
  for (let round = 0; round < ROUNDS; round++) {
    for (const c of configs) {
      if (!c.reps && round >= slowRounds) continue;
      const u0 = process.cpuUsage();
      const t0 = performance.now();
      await c.kernel.update(c.src, c.dt, c.src, c.dt, c.job);
      c.times.push((performance.now() - t0) / 1000);
      const u = process.cpuUsage(u0);
      c.cpu.push((u.user + u.system) / 1e6);
    }
  }

  for (const [rows, cols, what] of SHAPES) {
    const flop = 2 * rows * cols * RANK;
    const here = configs.filter((c) => c.rows === rows && c.cols === cols);
    const jsGf = flop / median(here.find((c) => c.label === 'naive JS f32 (i,k,j)')!.times) / 1e9;
    log(`### ${rows}×${cols}, rank ${RANK} (${what}), ${(flop / 1e9).toFixed(3)} GFLOP per call`);
    log();
    log('| kernel | dtype in/out | median GFLOP/s | best GFLOP/s | median ms | × naive JS | CPU s ÷ wall s |');
    log('|---|---|---|---|---|---|---|');
    for (const c of here) {
      const med = median(c.times);
      const best = Math.min(...c.times);
      const util = c.cpu.reduce((a, b) => a + b, 0) / c.times.reduce((a, b) => a + b, 0);
      log(
        `| ${c.label} | ${c.dt} | ${(flop / med / 1e9).toFixed(1)} | ${(flop / best / 1e9).toFixed(1)} | ${(med * 1000).toFixed(2)} | ${(flop / med / 1e9 / jsGf).toFixed(1)}× | ${util.toFixed(2)} |`,
      );
    }
    log();
  }

  // ---- conversions
  const conv = getWasmConvert();
  if (conv) {
    const n = quick ? 4 << 20 : 16 << 20;
    const f = new Float32Array(n);
    for (let i = 0; i < n; i++) f[i] = Math.sin(i) * 0.1;
    const h = new Uint16Array(n);
    const g = new Float32Array(n);
    conv.f32ToF16(f, h); // touch every page once
    conv.f16ToF32(h, g);
    const ops: Array<[string, () => void, () => void]> = [
      ['f16 → f32', () => conv.f16ToF32(h, g), () => scalarConvert.f16ToF32(h, g)],
      ['f32 → f16 (RNE)', () => conv.f32ToF16(f, h), () => scalarConvert.f32ToF16(f, h)],
      ['bf16 → f32', () => conv.bf16ToF32(h, g), () => scalarConvert.bf16ToF32(h, g)],
      ['f32 → bf16 (RNE)', () => conv.f32ToBf16(f, h), () => scalarConvert.f32ToBf16(f, h)],
      ['baseline: Float32Array.set (copy)', () => g.set(f), () => g.set(f)],
    ];
    const tw = ops.map(() => [] as number[]);
    const ts = ops.map(() => [] as number[]);
    for (let round = 0; round < (quick ? 3 : 7); round++) {
      ops.forEach(([, w, s], i) => {
        let t0 = performance.now();
        w();
        tw[i]!.push((performance.now() - t0) / 1000);
        if (round < 3) {
          t0 = performance.now();
          s();
          ts[i]!.push((performance.now() - t0) / 1000);
        }
      });
    }
    log(`### dtype conversion, ${n / (1 << 20)} Mi elements, one thread`);
    log();
    log('| conversion | WASM SIMD median G elem/s | best | scalar JS median G elem/s | WASM ÷ scalar |');
    log('|---|---|---|---|---|');
    ops.forEach(([name], i) => {
      const w = n / median(tw[i]!) / 1e9;
      const s = n / median(ts[i]!) / 1e9;
      log(
        `| ${name} | ${w.toFixed(2)} | ${(n / Math.min(...tw[i]!) / 1e9).toFixed(2)} | ${s.toFixed(2)} | ${(w / s).toFixed(1)}× |`,
      );
    });
    log();
  }
  log(
    `load average after: ${os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );

  for (const k of Object.values(kernels)) await k.dispose();
  await gpuWebasm.dispose();
}

await main();
