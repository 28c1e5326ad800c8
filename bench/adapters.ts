/**
 * Adapter benchmarks (issue 13), on the full-size SDXL base of bench/fuse.ts (bench/out/sdxl-base.f16.safetensors):
 *
 *   npx tsx bench/adapters.ts gen                       generate the adapter inputs into bench/out/ (adapters-*)
 *   npx tsx bench/adapters.ts fuse loha lora [--runs N]  time `lora-mix fuse` of each case, interleaved per round
 *   npx tsx bench/adapters.ts gen-decay                 generate bench/out/adapters-sdxl-loha-decay.f16.safetensors only
 *   npx tsx bench/adapters.ts convert exact rank64      time `lora-mix convert` of the LoHa (exact / --rank 64); a
 *                                                       case ending in -decay (exact-decay, rank64-decay) converts
 *                                                       the decaying LoHa instead
 *   npx tsx bench/adapters.ts modules [--decay D] [--svd-opts JSON]  per-module cost of converting the LoHa (dim 32) exactly (f32
 *                                                       factors in JS, and as F16 bytes: exactOutcomeF16) and to
 *                                                       rank 64 on one thread for each distinct SDXL shape, the flops
 *                                                       of the rank-64 path, and the whole-file extrapolation (Σ over
 *                                                       the 788 modules), plus the exact plain LoRA's size
 *   npx tsx bench/adapters.ts gen-oft                   generate bench/out/adapters-sd15-oft.f16.safetensors: LyCORIS
 *                                                       OFT (oft_blocks with rescale, blocks of 2·16 = 32 rows where
 *                                                       they divide out) on the SD1.5 LCM targets, for `fuse --base
 *                                                       bench/out/sd15-base.f16.safetensors` and `convert --base`
 *   npx tsx bench/adapters.ts clean                     delete the adapters-* files
 *
 * Inputs (src/fixtures/adapters.ts and src/fixtures/generate.ts, every LCM-LoRA target = all UNet attention,
 * resnet and sampler modules, 788 modules, F16, kohya names):
 *   loha   LoHa dim 32, alpha 16 (flat factors: w1_a [out, 32], w1_b [32, in·k²], same for w2)
 *   loha-decay  the same with column j of w1_a and w2_a scaled by 1/(j + 1) (LOHA_DECAY)
 *   lora   plain LoRA rank 64, alpha 32: exactly the LoHa's parameter count (2·32·(out + in·k²) per module)
 *   lokr   LoKr: w1 full [o1, i1] (LyCORIS's most square split), w2 = [o2, 8]·[8, i2·k²]
 *   lorak  plain LoRA with the LoKr's parameter count (rank chosen so the totals match within one rank step)
 * Each case runs the built CLI (dist/cli/lora-mix.js; `npm run build` first) in a child process under
 * /usr/bin/time -v; the output is deleted after each run. Run timing commands under `flock /work/bench.lock`.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateAdapter, syntheticAdapter, type AdapterSpec } from '../src/fixtures/adapters.js';
import { generateLora, targetModules } from '../src/fixtures/generate.js';
import ndarray from 'ndarray';
import { CONVERT_SVD_OPTIONS, ConvertScratch, convertModule, exactOutcomeF16 } from '../src/lora/convert-module.js';
import type { TruncatedSvdOptions } from '../src/lora/svd.js';
import type { HadamardTerm } from '../src/lora/types.js';
import '../src/node.js';
import { arg } from './args.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
const BASE = path.join(OUT, 'sdxl-base.f16.safetensors');
const CLI = path.join(ROOT, 'dist', 'cli', 'lora-mix.js');
const file = (name: string): string => path.join(OUT, `adapters-sdxl-${name}.f16.safetensors`);

const LOHA: AdapterSpec = { kind: 'loha', rank: 32, alpha: 16, targets: 'lcm', seed: 31, dtype: 'F16' };
/**
 * The second LoHa case: the same dim, alpha and targets, column j of both `a` factors scaled by 1/(j + 1) (a power-law
 * spectrum per factor product, as trained factors concentrate their energy in a few directions), own seed.
 */
const LOHA_DECAY: AdapterSpec = { ...LOHA, seed: 36, columnDecay: 1 };
const LOKR: AdapterSpec = { kind: 'lokr', rank: 8, alpha: 8, targets: 'lcm', seed: 32, dtype: 'F16' };

function parameters(spec: AdapterSpec): number {
  return syntheticAdapter('sdxl', 'full', spec)
    .tensors.filter((t) => t.shape.length > 0)
    .reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
}

/** Σ (out + in·k²) over the LCM targets: a plain LoRA of rank r has r times this many parameters. */
function loraWidth(): number {
  return targetModules('sdxl', 'full', 'lcm').reduce((s, e) => {
    const fanIn = e.shape.slice(1).reduce((a, b) => a * b, 1);
    return s + (e.shape[0] ?? 0) + fanIn;
  }, 0);
}

async function gen(): Promise<void> {
  const width = loraWidth();
  const lohaParams = parameters(LOHA);
  const lokrParams = parameters(LOKR);
  const lokrRank = Math.max(1, Math.round(lokrParams / width));
  const t0 = performance.now();
  await generateAdapter(file('loha'), 'sdxl', 'full', LOHA);
  await generateAdapter(file('lokr'), 'sdxl', 'full', LOKR);
  await generateLora(file('lora'), 'sdxl', 'full', { rank: 64, alpha: 32, targets: 'lcm', format: 'kohya', seed: 33 });
  await generateLora(file('lorak'), 'sdxl', 'full', {
    rank: lokrRank,
    alpha: lokrRank,
    targets: 'lcm',
    format: 'kohya',
    seed: 34,
  });
  console.log(
    JSON.stringify({
      generatedSeconds: (performance.now() - t0) / 1000,
      parameters: { loha: lohaParams, lora: 64 * width, lokr: lokrParams, lorak: lokrRank * width, lokrRank },
      bytes: Object.fromEntries(['loha', 'lokr', 'lora', 'lorak'].map((n) => [n, statSync(file(n)).size])),
    }),
  );
}

interface Timed {
  readonly case: string;
  readonly seconds: number;
  readonly maxRssMb: number;
  /** User + system CPU seconds of the child (less sensitive to other processes' load than the wall time). */
  readonly cpuSeconds: number;
  readonly code: number | null;
  readonly report?: unknown;
}

function timed(label: string, args: string[]): Timed {
  const t0 = performance.now();
  const r = spawnSync('/usr/bin/time', ['-v', process.execPath, CLI, ...args], {
    encoding: 'utf8',
    maxBuffer: 1 << 28,
  });
  const seconds = (performance.now() - t0) / 1000;
  const rss = /Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr ?? '');
  const cpu = ['User', 'System'].reduce((s, k) => {
    const m = new RegExp(`${k} time \\(seconds\\): ([0-9.]+)`).exec(r.stderr ?? '');
    return s + (m ? Number(m[1]) : Number.NaN);
  }, 0);
  if (r.status !== 0) process.stderr.write(r.stderr ?? '');
  let report: unknown;
  try {
    report = JSON.parse(r.stdout ?? '');
  } catch {
    report = undefined;
  }
  return {
    case: label,
    seconds,
    maxRssMb: rss ? Number(rss[1]) / 1024 : Number.NaN,
    cpuSeconds: cpu,
    code: r.status,
    report,
  };
}

function fuseCase(name: string): Timed {
  const out = path.join(OUT, `adapters-fused-${name}.safetensors`);
  try {
    const t = timed(`fuse ${name}`, ['fuse', '--base', BASE, `${file(name)}:1`, '-o', out, '--json', '-q']);
    const rep = t.report as { modulesFused?: number; seconds?: unknown } | undefined;
    return { ...t, report: rep ? { modulesFused: rep.modulesFused, seconds: rep.seconds } : undefined };
  } finally {
    rmSync(out, { force: true });
  }
}

function convertCase(name: string): Timed {
  const out = path.join(OUT, `adapters-converted-${name}.safetensors`);
  const extra = name.startsWith('rank64') ? ['--rank', '64'] : [];
  const input = file(name.endsWith('-decay') ? 'loha-decay' : 'loha');
  try {
    const t = timed(`convert ${name}`, [
      'convert',
      input,
      '-o',
      out,
      '--to',
      'kohya',
      '--threads',
      '2',
      '--json',
      '-q',
      ...extra,
    ]);
    const rep = t.report as
      | { bytes?: number; reduction?: { meanRelativeError: number; maxRelativeError: number; reduced: number } }
      | undefined;
    const red = rep?.reduction;
    return {
      ...t,
      report: {
        bytes: rep?.bytes,
        ...(red
          ? { meanRelativeError: red.meanRelativeError, maxRelativeError: red.maxRelativeError, reduced: red.reduced }
          : {}),
      },
    };
  } finally {
    rmSync(out, { force: true });
  }
}

/**
 * Per distinct shape of the LCM targets: time the conversion of one dim-32 LoHa module (the same seeded factors as
 * the generator's scale) exactly and to rank 64 (convertModule: the path convert runs on each worker), single thread;
 * weight by how many modules have that shape; count the flops of the rank-64 path (the dense delta: 2 products of
 * inner size 32 = 128·out·in; each product of the randomized SVD: 2·block·out·in).
 */
function modules(): void {
  const r = 32;
  const decay = Number(arg('decay', '0'));
  // --svd-opts JSON: the dense path's SVD options instead of CONVERT_SVD_OPTIONS (e.g. '{"oversample":24}': the gain
  // test convert used before session 9), for same-run comparisons.
  const svdOpts = process.argv.includes('--svd-opts')
    ? (JSON.parse(arg('svd-opts', '{}')) as TruncatedSvdOptions)
    : CONVERT_SVD_OPTIONS;
  const shapes = new Map<string, { shape: number[]; count: number }>();
  for (const e of targetModules('sdxl', 'full', 'lcm')) {
    const key = e.shape.join('x');
    const s = shapes.get(key) ?? { shape: [...e.shape], count: 0 };
    s.count++;
    shapes.set(key, s);
  }
  let seed = 1;
  const rand = (n: number): Float32Array => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      a[i] = (seed / 2147483648 - 0.5) * 0.1;
    }
    return a;
  };
  let exactSeconds = 0,
    exactF16Seconds = 0,
    reduceSeconds = 0,
    flops = 0,
    minFlops = 0,
    exactParams = 0;
  const scratch = new ConvertScratch();
  // Warm-up (untimed): one 1280 × 1280 module each way first, so that compiling the kernels and JIT warm-up are not
  // charged to the first shape (379 modules of it; before session 9 its rank-64 time was 1.5–2× the warm figure).
  const warm = 1280 * 32;
  const warmTerm: HadamardTerm = {
    kind: 'hadamard',
    shape: [1280, 1280],
    scale: 0.5,
    a: { up: ndarray(new Float32Array(warm).fill(0.01), [1280, 32]), down: ndarray(rand(warm), [32, 1280]) },
    b: { up: ndarray(rand(warm), [1280, 32]), down: ndarray(rand(warm), [32, 1280]) },
  };
  convertModule(warmTerm, 'warm-up', undefined, scratch);
  convertModule(warmTerm, 'warm-up', { rank: 64 }, scratch, svdOpts);
  exactOutcomeF16(warmTerm, 'warm-up');
  seed = 1;
  for (const { shape, count } of [...shapes.values()].sort((a, b) => b.count - a.count)) {
    const out = shape[0] ?? 1;
    const fanIn = shape.slice(1).reduce((a, b) => a * b, 1);
    // --decay D: column j of both `a` factors scaled by (j + 1)^-D, as the loha-decay file's generator does.
    const up = (): Float32Array => {
      const v = rand(out * r);
      if (decay > 0) for (let o = 0; o < out; o++) for (let j = 0; j < r; j++) v[o * r + j]! *= (j + 1) ** -decay;
      return v;
    };
    const term: HadamardTerm = {
      kind: 'hadamard',
      shape,
      scale: 0.5,
      a: { up: ndarray(up(), [out, r]), down: ndarray(rand(r * fanIn), [r, fanIn]) },
      b: { up: ndarray(up(), [out, r]), down: ndarray(rand(r * fanIn), [r, fanIn]) },
    };
    const t0 = performance.now();
    const e = convertModule(term, 'bench', undefined, scratch);
    const t1 = performance.now();
    const o = convertModule(term, 'bench', { rank: 64 }, scratch, svdOpts);
    const t2 = performance.now();
    // what an exact conversion written as F16 runs on each worker (factors formed and encoded in WASM)
    exactOutcomeF16(term, 'bench');
    const t3 = performance.now();
    exactF16Seconds += (count * (t3 - t2)) / 1000;
    exactParams += count * e.rank * (out + fanIn);
    const products = o.iterations !== undefined ? 2 + 2 * o.iterations : 0;
    const moduleFlops = 128 * out * fanIn + products * 2 * (o.block ?? 0) * out * fanIn;
    // the least any randomized SVD with one power iteration does: 4 products with a block of 64 + 8
    const least = 128 * out * fanIn + 4 * 2 * Math.min(72, out, fanIn) * out * fanIn;
    exactSeconds += (count * (t1 - t0)) / 1000;
    reduceSeconds += (count * (t2 - t1)) / 1000;
    flops += count * moduleFlops;
    minFlops += count * least;
    console.log(
      JSON.stringify({
        shape: shape.join('x'),
        modules: count,
        exactRank: e.rank,
        exactSeconds: (t1 - t0) / 1000,
        exactF16Seconds: (t3 - t2) / 1000,
        rank64Seconds: (t2 - t1) / 1000,
        method: o.method,
        iterations: o.iterations,
        products,
        block: o.block,
        relativeError: o.error / o.norm,
        gflops: moduleFlops / 1e9,
        gflopPerSecond: moduleFlops / 1e9 / ((t2 - t1) / 1000),
      }),
    );
  }
  console.log(
    JSON.stringify({
      modules: [...shapes.values()].reduce((s, x) => s + x.count, 0),
      oneThread: { exactSeconds, exactF16Seconds, rank64Seconds: reduceSeconds },
      rank64Flops: flops,
      rank64FlopsOneIterationAtLeast: minFlops,
      secondsAt50GflopPerSecond: { rank64: flops / 50e9, oneIterationAtLeast: minFlops / 50e9 },
      exactPlainLoraParameters: exactParams,
      exactPlainLoraF16Bytes: 2 * exactParams,
    }),
  );
}

async function main(): Promise<void> {
  const [command = 'help', ...rest] = process.argv.slice(2);
  const runsAt = rest.indexOf('--runs');
  const runs = runsAt >= 0 ? Number(rest[runsAt + 1] ?? 1) : 1;
  const cases = rest.filter((x, i) => !x.startsWith('--') && (runsAt < 0 || i !== runsAt + 1));
  if (command === 'gen') return gen();
  if (command === 'gen-decay') {
    const t0 = performance.now();
    await generateAdapter(file('loha-decay'), 'sdxl', 'full', LOHA_DECAY);
    const bytes = statSync(file('loha-decay')).size;
    console.log(JSON.stringify({ generatedSeconds: (performance.now() - t0) / 1000, bytes }));
    return;
  }
  if (command === 'modules') return modules();
  if (command === 'gen-oft') {
    const t0 = performance.now();
    const out = path.join(OUT, 'adapters-sd15-oft.f16.safetensors');
    await generateAdapter(out, 'sd15', 'full', {
      kind: 'oft',
      rank: 16,
      alpha: 1e-3,
      targets: 'lcm',
      seed: 35,
      dtype: 'F16',
    });
    console.log(JSON.stringify({ generatedSeconds: (performance.now() - t0) / 1000, bytes: statSync(out).size }));
    return;
  }
  if (command === 'clean') {
    for (const n of ['loha', 'loha-decay', 'lokr', 'lora', 'lorak']) rmSync(file(n), { force: true });
    rmSync(path.join(OUT, 'adapters-sd15-oft.f16.safetensors'), { force: true });
    return;
  }
  if (command !== 'fuse' && command !== 'convert') {
    console.log('usage: npx tsx bench/adapters.ts gen | fuse CASE… [--runs N] | convert exact|rank64 | clean');
    return;
  }
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
  for (let round = 0; round < runs; round++) {
    for (const c of cases) {
      const t = command === 'fuse' ? fuseCase(c) : convertCase(c);
      console.log(JSON.stringify({ round, ...t }));
    }
  }
}

await main();
