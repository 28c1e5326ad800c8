/**
 * TIES benchmark: two SDXL rank-64 LoRAs (generated in memory by src/fixtures/generate.ts' syntheticModules, seeds
 * 1 and 2, weights 1 and 0.8) merged with `ties` (density 0.2, majority sign total) to rank 64, module by module
 * (dense task tensors, magnitude trimming, sign election, disjoint mean, then the one truncated SVD of
 * src/lora/svd.ts), on 2 worker threads. Baseline in the same run: `linear` to rank 64 (the factor-space optimal
 * reduction, no dense delta), and the dense-delta formation alone.
 *
 * Each phase runs in its own child process (cold, like a CLI run; maxRSS per phase).
 *
 * Usage:  npx tsx bench/ties.ts [--runs N] [--targets style|lcm] [--threads T]
 *   style: UNet attention + both text encoders (722 + 264 modules); lcm: every LCM-LoRA target (convs included).
 * A PyTorch comparison (PEFT's ties_svd on the same tensors) needs python3-torch; it is skipped when
 * `python3 -c "import torch"` fails, and the output says so.
 */
import { spawnSync } from 'node:child_process';
import * as os from 'node:os';
import ndarray from 'ndarray';
import { syntheticModules, type LoraTargets } from '../src/fixtures/generate.js';
import { mergeLorasParallel } from '../src/node/merge-threads.js';
import { methodDelta } from '../src/lora/method-module.js';
import type { Lora, LoraModule } from '../src/lora/types.js';

type Phase = 'linear' | 'ties' | 'deltas';

function makeLora(seed: number, targets: LoraTargets): Lora {
  const modules = new Map<string, LoraModule>();
  for (const m of syntheticModules('sdxl', 'full', { rank: 64, alpha: 64, targets, seed })) {
    modules.set(m.entry.path, {
      down: ndarray(m.down(), [...m.downShape]),
      up: ndarray(m.up(), [...m.upShape]),
      alpha: m.alpha,
    });
  }
  return { arch: 'sdxl', size: 'full', modules, metadata: {} };
}

const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
};

async function child(phase: Phase, targets: LoraTargets, threads: number): Promise<void> {
  const loras = [makeLora(1, targets), makeLora(2, targets)];
  let elements = 0;
  for (const m of loras[0]!.modules.values()) elements += (m.up.shape[0] ?? 0) * (m.down.size / (m.down.shape[0] ?? 1));
  const t0 = performance.now();
  let detail: Record<string, number> = {};
  if (phase === 'deltas') {
    // Only the dense task tensors of both inputs, module by module (what ties must form before any selection).
    for (const [path, a] of loras[0]!.modules) {
      const b = loras[1]!.modules.get(path)!;
      const out = a.up.shape[0]!,
        fanIn = a.down.size / 64;
      const mk = (m: LoraModule, input: number) => ({
        input,
        scale: m.alpha / 64,
        rank: 64,
        up: m.up.data as Float32Array,
        down: m.down.data as Float32Array,
      });
      methodDelta({
        path,
        out,
        fanIn,
        members: [mk(a, 0), mk(b, 1)],
        weights: [1, 0.8],
        method: 'linear',
        params: { density: 1, majoritySign: 'total', seed: 0, t: 0.5 },
      });
    }
  } else {
    const { report } = await mergeLorasParallel(loras, [1, 0.8], {
      ...(phase === 'ties' ? { method: 'ties' as const, density: 0.2 } : { method: 'linear' as const }),
      rank: 64,
      threads,
    });
    detail = { meanNormKept: report.meanNormKept, minNormKept: report.minNormKept, modules: report.written };
  }
  const seconds = (performance.now() - t0) / 1000;
  process.stdout.write(
    `${JSON.stringify({ phase, seconds, elements, maxRssMB: process.resourceUsage().maxRSS / 1024, ...detail })}\n`,
  );
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function parent(): Promise<void> {
  const runs = Number(arg('runs', '1'));
  const targets = arg('targets', 'style') as LoraTargets;
  const threads = Number(arg('threads', '2'));
  const results = new Map<
    Phase,
    { seconds: number; maxRssMB: number; elements: number; meanNormKept?: number; minNormKept?: number }[]
  >();
  for (let r = 0; r < runs; r++) {
    for (const phase of ['linear', 'deltas', 'ties'] as Phase[]) {
      const res = spawnSync(
        process.execPath,
        ['--import', 'tsx', process.argv[1]!, '--child', phase, '--targets', targets, '--threads', String(threads)],
        { encoding: 'utf8', maxBuffer: 1 << 24 },
      );
      if (res.status !== 0) throw new Error(`phase ${phase} failed: ${res.stderr}`);
      const line = JSON.parse(res.stdout.trim().split('\n').pop()!);
      results.set(phase, [...(results.get(phase) ?? []), line]);
      process.stderr.write(`${phase}: ${line.seconds.toFixed(1)} s, ${line.maxRssMB.toFixed(0)} MB\n`);
    }
  }
  const torch = spawnSync('python3', ['-c', 'import torch'], { encoding: 'utf8' }).status === 0;
  const cpu = os.cpus()[0]?.model ?? 'unknown';
  const lin = median(results.get('linear')!.map((x) => x.seconds));
  console.log(`\n#### TIES to rank 64, two SDXL rank-64 LoRAs (targets: ${targets}), ${threads} threads\n`);
  console.log(
    `Machine: ${os.availableParallelism()} vCPU (${cpu}), Node ${process.version}, ${new Date().toISOString().slice(0, 10)}; runs: ${runs}.`,
  );
  console.log(`Command: \`npx tsx bench/ties.ts --runs ${runs} --targets ${targets} --threads ${threads}\`\n`);
  console.log('| phase | median s | ÷ linear | peak RSS MB (max) | dense elements per input | norm kept mean / min |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const phase of ['linear', 'deltas', 'ties'] as Phase[]) {
    const xs = results.get(phase)!;
    const s = median(xs.map((x) => x.seconds));
    const rss = Math.max(...xs.map((x) => x.maxRssMB));
    const kept =
      xs[0]!.meanNormKept !== undefined
        ? `${xs[0]!.meanNormKept!.toFixed(4)} / ${xs[0]!.minNormKept!.toFixed(4)}`
        : '—';
    console.log(
      `| ${phase} | ${s.toFixed(1)} | ${(s / lin).toFixed(2)} | ${rss.toFixed(0)} | ${(xs[0]!.elements / 1e9).toFixed(2)} G | ${kept} |`,
    );
  }
  console.log(
    torch
      ? '\nPyTorch is available: run the PEFT ties_svd comparison by hand (not scripted yet).'
      : '\nPEFT ties_svd comparison skipped: `python3 -c "import torch"` fails on this machine (no python3-torch).',
  );
}

const ci = process.argv.indexOf('--child');
if (ci >= 0)
  await child(process.argv[ci + 1] as Phase, arg('targets', 'style') as LoraTargets, Number(arg('threads', '2')));
else await parent();
