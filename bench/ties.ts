/**
 * TIES benchmark: two SDXL rank-64 LoRA files → `merge --method ties --density 0.2 --rank 64` (weights 1 and 0.8),
 * with PEFT's ties_svd (bench/peer/ties_peft.py, Debian's python3-torch) on the same files, and `--method linear`
 * as lora-mix's factor-space baseline. lora-mix runs as the built CLI (`dist/`, `npm run build`) in a child
 * process: wall time, the CLI's own merge/load/write split, and peak RSS (GNU time's %M). The peer times only its
 * per-module ties + SVD; it runs in slices of modules (`--start/--count`) so each locked invocation stays short.
 *
 * Inputs (bench/out → /work/benchdata): sdxl-lcm.f16.safetensors (bench/fuse.ts --gen-only; rank 64, alpha 8,
 * every LCM-LoRA target) and methods-sdxl-b64.f16.safetensors (rank 64, alpha 32, the same targets, seed 33:
 * generated here with --gen).
 *
 * Every phase appends one JSON line to bench/out/methods-ties.jsonl; --report prints the RESULTS.md table.
 *
 *   npx tsx bench/ties.ts --gen
 *   flock /work/bench.lock npx tsx bench/ties.ts --ours ties --threads 2      (also: --ours linear)
 *   flock /work/bench.lock npx tsx bench/ties.ts --peft --start 0 --count 200 [--reduced]   (repeat over slices)
 *   flock /work/bench.lock npx tsx bench/ties.ts --sample 80   (ours and PEFT on the same every-80th module, one run)
 *   npx tsx bench/ties.ts --report
 */
import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { arg } from './args.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
const A = path.join(OUT, 'sdxl-lcm.f16.safetensors');
const B = path.join(OUT, 'methods-sdxl-b64.f16.safetensors');
const MERGED = (method: string) => path.join(OUT, `methods-${method}-out.f16.safetensors`);
const LOG = path.join(OUT, 'methods-ties.jsonl');
const DENSITY = 0.2;
const RANK = 64;
const WEIGHTS = [1, 0.8];

const flag = (name: string): boolean => process.argv.includes(`--${name}`);
const load = (): string =>
  os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
const record = (line: Record<string, unknown>): void => {
  appendFileSync(LOG, `${JSON.stringify({ date: new Date().toISOString(), load: load(), ...line })}\n`);
  console.log(JSON.stringify(line));
};

async function gen(): Promise<void> {
  if (existsSync(B)) return;
  const { installNodeHost } = await import('../src/node/install.js');
  const { generateLora } = await import('../src/fixtures/generate.js');
  installNodeHost();
  await generateLora(B, 'sdxl', 'full', {
    rank: 64,
    alpha: 32,
    targets: 'lcm',
    format: 'kohya',
    kohyaPaths: 'diffusers',
    dtype: 'F16',
    seed: 33,
  });
}

/** One lora-mix run of the built CLI under GNU time. */
function ours(method: 'ties' | 'linear', threads: number): void {
  const cli = path.join(ROOT, 'dist', 'cli', 'lora-mix.js');
  if (!existsSync(cli)) throw new Error('bench/ties.ts: build the CLI first (npm run build)');
  const argv = [
    '-f',
    '%e %M',
    process.execPath,
    cli,
    'merge',
    A,
    `${B}:${WEIGHTS[1]}`,
    '-o',
    MERGED(method),
    '--method',
    method,
    ...(method === 'ties' ? ['--density', String(DENSITY)] : []),
    '--rank',
    String(RANK),
    '--threads',
    String(threads),
    '--json',
    '-q',
  ];
  const r = spawnSync('/usr/bin/time', argv, { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`lora-mix merge failed: ${r.stderr}`);
  const [wall, kb] = (r.stderr.trim().split('\n').pop() ?? '').split(' ').map(Number);
  const json = JSON.parse(r.stdout) as { seconds: Record<string, number>; report: Record<string, unknown> };
  record({
    tool: 'lora-mix',
    method,
    threads,
    wall,
    peakRssMB: (kb ?? 0) / 1024,
    seconds: json.seconds,
    meanNormKept: json.report.meanNormKept,
    modules: json.report.written,
  });
}

function peft(start: number, count: number, stride: number, reduced: boolean): void {
  const argv = [
    path.join(ROOT, 'bench', 'peer', 'ties_peft.py'),
    A,
    B,
    '--weights',
    ...WEIGHTS.map(String),
    '--density',
    String(DENSITY),
    '--rank',
    String(RANK),
    '--start',
    String(start),
    '--count',
    String(count),
    '--stride',
    String(stride),
    ...(reduced ? ['--reduced'] : []),
    ...(existsSync(MERGED('ties')) ? ['--compare', MERGED('ties')] : []),
  ];
  const r = spawnSync('/usr/bin/time', ['-f', '%e %M', '/usr/bin/python3', ...argv], {
    encoding: 'utf8',
    maxBuffer: 1 << 24,
  });
  if (r.status !== 0) throw new Error(`ties_peft.py failed: ${r.stderr}`);
  const [wall, kb] = (r.stderr.trim().split('\n').pop() ?? '').split(' ').map(Number);
  record({ tool: 'peft', ...JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}'), wall, peakRssMB: (kb ?? 0) / 1024 });
}

/**
 * Ours and the peer on the same module sample, one after the other in one invocation: bench/ties-profile.ts with
 * --peer-stride (one thread, in process: per-phase seconds) under GNU time, then the peer with the same stride
 * (reduced SVD), compared against the full merge's output (bench/ties.ts --ours ties) when it exists.
 */
function sample(stride: number): void {
  const r = spawnSync(
    '/usr/bin/time',
    [
      '-f',
      '%e %M',
      process.execPath,
      '--import',
      'tsx',
      path.join(ROOT, 'bench', 'ties-profile.ts'),
      '--peer-stride',
      String(stride),
    ],
    { encoding: 'utf8', maxBuffer: 1 << 24, cwd: ROOT },
  );
  if (r.status !== 0) throw new Error(`ties-profile.ts failed: ${r.stderr}`);
  const [wall, kb] = (r.stderr.trim().split('\n').pop() ?? '').split(' ').map(Number);
  const summary = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Record<string, unknown>;
  record({ tool: 'lora-mix-sample', threads: 1, ...summary, processWall: wall, peakRssMB: (kb ?? 0) / 1024 });
  peft(0, 100000, stride, true);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] ?? 0) : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
}

function report(): void {
  const lines = readFileSync(LOG, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown> & { sums?: Record<string, number> | null });
  const mine = (m: string) => lines.filter((l) => l.tool === 'lora-mix' && l.method === m);
  const peer = lines.filter((l) => l.tool === 'peft');
  const cpu = os.cpus()[0]?.model ?? 'unknown';
  console.log(`Machine: ${os.availableParallelism()} vCPU (${cpu}), Node ${process.version}.`);
  for (const m of ['ties', 'linear']) {
    const xs = mine(m);
    if (xs.length === 0) continue;
    const merge = median(xs.map((x) => (x.seconds as Record<string, number>).merge ?? 0));
    const wall = median(xs.map((x) => Number(x.wall)));
    const rss = Math.max(...xs.map((x) => Number(x.peakRssMB)));
    console.log(
      `| lora-mix ${m} | ${xs.length} | ${wall.toFixed(1)} | ${merge.toFixed(1)} | ${rss.toFixed(0)} | ${xs.map((x) => x.load).join('; ')} |`,
    );
  }
  if (peer.length > 0) {
    const modules = peer.reduce((s, x) => s + Number(x.modules), 0);
    const seconds = peer.reduce((s, x) => s + Number(x.seconds), 0);
    const rss = Math.max(...peer.map((x) => Number(x.peakRssMB)));
    console.log(`| PEFT ties_svd (${modules} modules) | 1 | — | ${seconds.toFixed(1)} | ${rss.toFixed(0)} | |`);
    const sums = peer.map((x) => x.sums).filter((s): s is Record<string, number> => !!s);
    const tot = (k: string) => sums.reduce((s, x) => s + (x[k] ?? 0), 0);
    if (sums.length > 0) {
      console.log(
        `Δ: ‖ours − peft‖/‖peft‖ = ${Math.sqrt(tot('ours_peft') / tot('peft2')).toExponential(3)}; ` +
          `‖ours − D‖/‖D‖ = ${Math.sqrt(tot('ours_D') / tot('D2')).toFixed(4)}; ‖peft − D‖/‖D‖ = ${Math.sqrt(tot('peft_D') / tot('D2')).toFixed(4)} (D = exact dense TIES)`,
      );
    }
    console.log(
      `PEFT: ${JSON.stringify(peer[0]?.blas)}; torch ${String(peer[0]?.torch)}, threads ${String(peer[0]?.threads)}`,
    );
  }
}

if (flag('gen')) await gen();
else if (process.argv.includes('--ours')) ours(arg('ours', 'ties') as 'ties' | 'linear', Number(arg('threads', '2')));
else if (flag('peft'))
  peft(Number(arg('start', '0')), Number(arg('count', '100000')), Number(arg('stride', '1')), flag('reduced'));
else if (process.argv.includes('--sample')) sample(Number(arg('sample', '80')));
else if (flag('report')) report();
else console.error('usage: see the comment at the top of bench/ties.ts');
