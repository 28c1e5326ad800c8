/**
 * Merge benchmark: full-size SDXL LoRAs generated in memory (no files).
 *
 *   LCM-LoRA-shaped: rank 64, alpha 8, every module LCM-LoRA targets (788 modules, 196.75 M parameters)
 *   style-LoRA-shaped: rank 32, alpha 16, every UNet attention module (722 modules)
 *
 * Phases (each in its own child process, so timings start cold like a CLI run and maxRSS is per phase):
 *   copy            baseline: copy every factor of both LoRAs once into fresh Float32Arrays (same bytes as the
 *                   exact merge moves)
 *   exact           mergeLoras([lcm, style], [1, 0.8])
 *   reduce          mergeLoras(…, { rank: 64 }) on this thread
 *   reduce-threads  mergeLorasParallel(…, { rank: 64 }) with os.availableParallelism() workers
 *   dense           a sample of SDXL's largest module shapes: the factor method (RankReducer) against a dense
 *                   SVD of the same module's delta (form Δ = U·D in f64, Gram ΔᵀΔ or ΔΔᵀ of the smaller side,
 *                   its full eigen-decomposition with the same tridiagonal-QR solver, then the rank-64 factors),
 *                   both to rank 64, with the two errors compared
 *
 * Usage:  npx tsx bench/merge.ts [--runs N] [--phases copy,exact,reduce,reduce-threads,dense]
 * Prints medians (of N child runs) and ratios, then a markdown block for bench/RESULTS.md.
 */
import { spawnSync } from 'node:child_process';
import * as os from 'node:os';
import ndarray from 'ndarray';
import { getLayout } from '../src/layout/index.js';
import { mergeLoras } from '../src/lora/index.js';
import { gramRows, symmetricEigen, xtyToF32 } from '../src/lora/linalg.js';
import { RankReducer, truncationStats, type FactorTerm } from '../src/lora/reduce.js';
import { mergeLorasParallel } from '../src/node/merge-threads.js';
import type { Lora, LoraModule } from '../src/lora/types.js';
import { installNodeHost } from '../src/node/install.js';

// Benchmarks import the layers directly: give them file paths, folders and threads as the Node entry does.
installNodeHost();

type Phase = 'copy' | 'exact' | 'reduce' | 'reduce-threads' | 'dense';
const ALL: Phase[] = ['copy', 'exact', 'reduce', 'reduce-threads', 'dense'];

/** xorshift32 uniform values in (−scale/2, scale/2). */
function filler(seed: number): (n: number, scale: number) => Float32Array {
  let s = seed >>> 0 || 1;
  return (n, scale) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      s ^= s << 13;
      s >>>= 0;
      s ^= s >>> 17;
      s ^= s << 5;
      s >>>= 0;
      a[i] = (s / 4294967296 - 0.5) * scale;
    }
    return a;
  };
}

function makeLora(seed: number, rank: number, alpha: number, include: (group: string, lcm: boolean) => boolean): Lora {
  const rnd = filler(seed);
  const modules = new Map<string, LoraModule>();
  for (const e of getLayout('sdxl', 'full').modules) {
    if (!include(e.group, e.lcmTarget)) continue;
    const [out, ...rest] = e.shape as number[];
    const fanIn = rest.reduce((a, b) => a * b, 1);
    modules.set(e.path, {
      down: ndarray(rnd(rank * fanIn, 0.02), [rank, ...rest]),
      up: ndarray(rnd(out! * rank, 0.01), rest.length === 3 ? [out!, rank, 1, 1] : [out!, rank]),
      alpha,
    });
  }
  return { arch: 'sdxl', size: 'full', modules, metadata: {} };
}

const inputs = (): [Lora, Lora] => [
  makeLora(1, 64, 8, (_g, lcm) => lcm),
  makeLora(2, 32, 16, (g) => g === 'attention'),
];

const maxRssMB = (): number => process.resourceUsage().maxRSS / 1024;

/** Dense reference for one module: Δ = U·D in f64, eigen-decomposition of its smaller Gram, rank-k factors. */
function denseRankK(terms: FactorTerm[], out: number, n: number, k: number): { error: number } {
  const D = new Float64Array(out * n);
  for (const t of terms) {
    for (let o = 0; o < out; o++) {
      const row = o * n;
      for (let a = 0; a < t.rank; a++) {
        const u = t.coef * t.up[o * t.rank + a]!;
        const base = a * n;
        for (let i = 0; i < n; i++) D[row + i] = D[row + i]! + u * t.down[base + i]!;
      }
    }
  }
  // Gram of the smaller side: rows of D (out ≤ n) or rows of Dᵀ.
  const small = Math.min(out, n);
  const G = new Float64Array(small * small);
  let X = D,
    len = n;
  if (out > n) {
    X = new Float64Array(n * out);
    for (let o = 0; o < out; o++) for (let i = 0; i < n; i++) X[i * out + o] = D[o * n + i]!;
    len = out;
  }
  gramRows(X, small, len, G);
  const { values, vectors } = symmetricEigen(G, small);
  // The rank-k factors: the kept singular vectors of the small side (rows of `vectors`) and X_kᵀ-projections.
  const Vk = new Float64Array(small * k);
  for (let j = 0; j < k; j++) for (let i = 0; i < small; i++) Vk[i * k + j] = vectors[j * small + i]!;
  const proj = new Float32Array(len * k);
  xtyToF32(X, Vk, small, len, k, proj);
  let discarded = 0;
  for (let j = k; j < small; j++) discarded += Math.max(values[j]!, 0);
  return { error: Math.sqrt(discarded) };
}

async function child(phase: Phase): Promise<Record<string, number>> {
  const t0 = performance.now();
  const [lcm, style] = inputs();
  const tGen = performance.now() - t0;
  const rssBefore = maxRssMB();
  const result: Record<string, number> = { generateS: tGen / 1000, inputRssMB: rssBefore };
  const t1 = performance.now();
  if (phase === 'copy') {
    let n = 0;
    const keep: Float32Array[] = [];
    for (const l of [lcm, style])
      for (const m of l.modules.values()) {
        keep.push(Float32Array.from(m.up.data), Float32Array.from(m.down.data));
        n += m.up.data.length + m.down.data.length;
      }
    result.values = n;
  } else if (phase === 'exact') {
    const { report } = mergeLoras([lcm, style], [1, 0.8]);
    result.modules = report.written;
  } else if (phase === 'reduce' || phase === 'reduce-threads') {
    const { report } =
      phase === 'reduce'
        ? mergeLoras([lcm, style], [1, 0.8], { rank: 64 })
        : await mergeLorasParallel([lcm, style], [1, 0.8], { rank: 64 });
    result.modules = report.written;
    result.reduced = report.modules.filter((m) => m.rankAfter < m.rankBefore).length;
    result.meanNormKept = report.meanNormKept;
    result.relativeError = report.relativeError;
  } else {
    // The largest module shapes of SDXL's attention (R = 64 + 32 = 96 → 64).
    const samples = [
      'unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj', // 10240 × 1280
      'unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2', // 1280 × 5120
      'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k', // 1280 × 2048
      'unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q', // 1280 × 1280
    ];
    const reducer = new RankReducer();
    for (const [i, path] of samples.entries()) {
      const a = lcm.modules.get(path)!,
        b = style.modules.get(path)!;
      const out = a.up.shape[0]!,
        n = a.down.size / 64;
      const terms: FactorTerm[] = [
        { coef: (1 * a.alpha) / 64, rank: 64, up: a.up.data, down: a.down.data },
        { coef: (0.8 * b.alpha) / 32, rank: 32, up: b.up.data, down: b.down.data },
      ];
      const times: number[] = [];
      let factorError = 0;
      for (let r = 0; r < 5; r++) {
        const s = performance.now();
        const sp = reducer.analyze(terms, out, n);
        reducer.rebuild(64);
        times.push(performance.now() - s);
        factorError = truncationStats(sp, 64).error;
      }
      times.sort((x, y) => x - y);
      const s = performance.now();
      const dense = denseRankK(terms, out, n, 64);
      const denseMs = performance.now() - s;
      result[`m${i}_shape`] = out * 100000 + n;
      result[`m${i}_factorMs`] = times[2]!;
      result[`m${i}_denseMs`] = denseMs;
      result[`m${i}_errorDiff`] = Math.abs(dense.error - factorError) / Math.max(factorError, 1e-30);
    }
  }
  result.seconds = (performance.now() - t1) / 1000;
  result.maxRssMB = maxRssMB();
  return result;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function driver(): Promise<void> {
  const args = process.argv.slice(2);
  const runs = Number(args[args.indexOf('--runs') + 1] ?? 3) || 3;
  const phases = (args.includes('--phases') ? args[args.indexOf('--phases') + 1]!.split(',') : ALL) as Phase[];
  const results = new Map<Phase, Record<string, number>[]>();
  for (const phase of phases) {
    const n = phase === 'dense' ? 1 : runs;
    for (let r = 0; r < n; r++) {
      const p = spawnSync(process.execPath, [...process.execArgv, process.argv[1]!, '--child', phase], {
        encoding: 'utf8',
        maxBuffer: 1 << 24,
      });
      if (p.status !== 0) throw new Error(`phase ${phase} failed: ${p.stderr}`);
      const line = p.stdout.trim().split('\n').pop()!;
      const rec = JSON.parse(line) as Record<string, number>;
      (results.get(phase) ?? results.set(phase, []).get(phase)!).push(rec);
      process.stderr.write(
        `${phase} run ${r + 1}/${n}: ${rec.seconds!.toFixed(2)} s, maxRSS ${rec.maxRssMB!.toFixed(0)} MB, load ${os.loadavg()[0]!.toFixed(2)}\n`,
      );
    }
  }
  const med = (phase: Phase, key: string) => median((results.get(phase) ?? []).map((r) => r[key]!));
  const lines: string[] = [];
  lines.push(
    `machine: ${os.cpus().length} cores, ${os.cpus()[0]!.model}, Node ${process.version}; date ${new Date().toUTCString()}; load ${os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
  lines.push('| phase | median s | median maxRSS MB | runs | notes |');
  lines.push('|---|---|---|---|---|');
  for (const phase of phases.filter((p) => p !== 'dense')) {
    const rs = results.get(phase)!;
    const notes =
      phase === 'reduce' || phase === 'reduce-threads'
        ? `${rs[0]!.reduced} modules reduced, mean norm kept ${rs[0]!.meanNormKept!.toFixed(4)}, relative error ${rs[0]!.relativeError!.toExponential(3)}`
        : phase === 'copy'
          ? `${(rs[0]!.values! / 1e6).toFixed(1)} M values`
          : `${rs[0]!.modules} modules`;
    lines.push(
      `| ${phase} | ${med(phase, 'seconds').toFixed(2)} | ${med(phase, 'maxRssMB').toFixed(0)} | ${rs.map((r) => r.seconds!.toFixed(2)).join(', ')} | ${notes} |`,
    );
  }
  if (results.has('copy') && results.has('exact'))
    lines.push(`exact / copy = ${(med('exact', 'seconds') / med('copy', 'seconds')).toFixed(2)}×`);
  if (results.has('reduce') && results.has('reduce-threads'))
    lines.push(
      `reduce / reduce-threads = ${(med('reduce', 'seconds') / med('reduce-threads', 'seconds')).toFixed(2)}×`,
    );
  if (results.has('dense')) {
    const d = results.get('dense')![0]!;
    lines.push(
      '| module (out × n) | factor method ms (median of 5) | dense SVD ms (1 run) | dense / factor | relative difference of the errors |',
    );
    lines.push('|---|---|---|---|---|');
    for (let i = 0; d[`m${i}_shape`] !== undefined; i++) {
      const shape = d[`m${i}_shape`]!;
      lines.push(
        `| ${Math.floor(shape / 100000)} × ${shape % 100000} | ${d[`m${i}_factorMs`]!.toFixed(1)} | ${d[`m${i}_denseMs`]!.toFixed(0)} | ${(d[`m${i}_denseMs`]! / d[`m${i}_factorMs`]!).toFixed(0)}× | ${d[`m${i}_errorDiff`]!.toExponential(1)} |`,
      );
    }
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

if (process.argv.includes('--child')) {
  const phase = process.argv[process.argv.indexOf('--child') + 1] as Phase;
  const r = await child(phase);
  process.stdout.write(`${JSON.stringify(r)}\n`);
} else {
  await driver();
}
