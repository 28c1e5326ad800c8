/**
 * Extraction benchmark: `lora-mix extract --rank 64` on full-size synthetic checkpoints, tuned = base + an
 * LCM-LoRA-shaped LoRA (rank 64 on every LCM target: 278 modules for SD1.5, 788 for SDXL), against kohya's
 * extract_lora_from_models.py re-implemented in torch (bench/peer/extract_kohya.py) on the same files.
 *
 *   npx tsx bench/extract.ts --arch sd15|sdxl [--which ours|peer] [--runs 1] [--rank 64] [--threads 2]
 *                            [--modules I:J] [--time-limit S]   (peer only: a slice of the module list, and stop
 *                            after the module that passes S seconds — to split long runs into short locked ones)
 *                            [--run-id ID]  (peer: the slices of one run; --table sums the slices of an ID, other rows stand alone)
 *   bench/extract-peer.sh sdxl [SECONDS]    (the whole peer run as locked slices of ≤ SECONDS + one module each)
 *   npx tsx bench/extract.ts --table               (the markdown table of everything recorded)
 *
 * Timing runs go under the shared lock, one short invocation each (ours and the peer separately; the peer in module
 * slices): `flock /work/bench.lock npx tsx bench/extract.ts --arch sd15 --which ours --runs 2`.
 * Each run is a child process under /usr/bin/time -v (wall, user + sys CPU, peak RSS); errors come from the
 * reports (ours: measured on the stored factors; the peer: its clamped fp16 factors, and unclamped). Every run
 * appends one JSON line to bench/out/extract-results.jsonl; --table aggregates them (peer slices summed).
 *
 * Inputs, generated once under bench/out/ (shared, git-ignored; `extract-` files are this benchmark's):
 *   <arch>-base.f16.safetensors              generateBaseCheckpoint, F16, seed 7 (bench/fuse.ts makes it too)
 *   extract-<arch>-lcm64.f16.safetensors     generateLora rank 64, alpha 64, LCM targets, kohya, seed 11
 *   extract-<arch>-tuned64.f16.safetensors   lora-mix fuse base + that LoRA (F16)
 */
import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExtractReport } from '../src/fuse/extract.js';
import type { Arch } from '../src/layout/types.js';
import { installNodeHost } from '../src/node/install.js';

// The generators write files: they need the Node host.
installNodeHost();

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
const CLI = path.join(ROOT, 'src', 'cli', 'lora-mix.ts');
const PEER = path.join(ROOT, 'bench', 'peer', 'extract_kohya.py');
const RESULTS = path.join(OUT, 'extract-results.jsonl');
const runId = process.argv.includes('--run-id') ? arg('run-id', '') : '';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? def) : def;
}

interface Timed {
  seconds: number;
  rssMB: number;
  user: number;
  sys: number;
  stdout: string;
}

function timed(cmd: string, args: string[]): Timed {
  const t0 = performance.now();
  const r = spawnSync('/usr/bin/time', ['-v', cmd, ...args], { encoding: 'utf8', maxBuffer: 1 << 28, cwd: ROOT });
  const seconds = (performance.now() - t0) / 1000;
  const field = (re: RegExp): number => Number(re.exec(r.stderr ?? '')?.[1] ?? Number.NaN);
  if (r.status !== 0) {
    process.stderr.write((r.stderr ?? '').slice(-4000));
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.status})`);
  }
  return {
    seconds,
    rssMB: field(/Maximum resident set size \(kbytes\): (\d+)/) / 1024,
    user: field(/User time \(seconds\): ([\d.]+)/),
    sys: field(/System time \(seconds\): ([\d.]+)/),
    stdout: r.stdout ?? '',
  };
}

const node = (args: string[]): Timed => timed(process.execPath, ['--import', 'tsx', ...args]);
const load = (): string =>
  os
    .loadavg()
    .map((x) => x.toFixed(1))
    .join(' ');

interface Row {
  arch: string;
  tool: 'ours' | 'peer';
  date: string;
  loadBefore: string;
  loadAfter: string;
  modules: number;
  modulesTotal: number;
  slice?: string;
  wall: number;
  user: number;
  sys: number;
  rssMB: number;
  norm2: number;
  err2: number;
  err2Unclamped?: number;
  worst: number;
  iterations?: number;
  threads: number;
  /** Groups the peer's slices of one run (--run-id; without it a row stands alone). */
  run?: string;
}

function record(row: Row): void {
  appendFileSync(RESULTS, `${JSON.stringify(row)}\n`);
  console.log(JSON.stringify(row));
}

async function generate(arch: Arch, rank: number): Promise<{ base: string; tuned: string }> {
  const base = path.join(OUT, `${arch}-base.f16.safetensors`);
  const lora = path.join(OUT, `extract-${arch}-lcm${rank}.f16.safetensors`);
  const tuned = path.join(OUT, `extract-${arch}-tuned${rank}.f16.safetensors`);
  const self = fileURLToPath(import.meta.url);
  if (!existsSync(base))
    console.log(`generate ${base}: ${node([self, '--generate', arch, 'base', base]).seconds.toFixed(1)} s`);
  if (!existsSync(lora))
    console.log(`generate ${lora}: ${node([self, '--generate', arch, `lcm${rank}`, lora]).seconds.toFixed(1)} s`);
  if (!existsSync(tuned)) {
    const f = node([CLI, 'fuse', '--base', base, `${lora}:1`, '-o', tuned, '-q']);
    console.log(`fuse → ${tuned}: ${f.seconds.toFixed(1)} s`);
  }
  return { base, tuned };
}

function runOurs(arch: Arch, base: string, tuned: string, rank: number, threads: number): void {
  const o = path.join(OUT, `extract-${arch}-ours.safetensors`);
  rmSync(o, { force: true });
  const loadBefore = load();
  const r = node([
    CLI,
    'extract',
    '--base',
    base,
    '--tuned',
    tuned,
    '--rank',
    String(rank),
    '--threads',
    String(threads),
    '-o',
    o,
    '--json',
    '-q',
  ]);
  const rep = JSON.parse(r.stdout) as ExtractReport;
  record({
    arch,
    tool: 'ours',
    date: new Date().toISOString(),
    loadBefore,
    loadAfter: load(),
    modules: rep.modules.length,
    modulesTotal: rep.compared,
    wall: r.seconds,
    user: r.user,
    sys: r.sys,
    rssMB: r.rssMB,
    norm2: rep.overall.norm ** 2,
    err2: rep.overall.error ** 2,
    worst: rep.worst?.relError ?? 0,
    iterations: rep.modules.reduce((a, m) => a + m.iterations, 0) / rep.modules.length,
    threads,
  });
  rmSync(o, { force: true });
}

function runPeer(
  arch: Arch,
  base: string,
  tuned: string,
  rank: number,
  slice: string | undefined,
  limit: string | undefined,
): void {
  const o = path.join(OUT, `extract-${arch}-peer.safetensors`);
  const json = path.join(OUT, `extract-${arch}-peer.json`);
  const loadBefore = load();
  const r = timed('/usr/bin/python3', [
    PEER,
    '--base',
    base,
    '--tuned',
    tuned,
    '--dim',
    String(rank),
    '--conv-dim',
    String(rank),
    '--threads',
    '2',
    '--save-to',
    o,
    '--json',
    json,
    ...(slice ? ['--modules', slice] : []),
    ...(limit ? ['--time-limit', limit] : []),
  ]);
  const rep = JSON.parse(readFileSync(json, 'utf8')) as {
    modules: number;
    slice: string;
    modulesTotal: number;
    seconds: number;
    errorSeconds: number;
    norm2: number;
    err2: number;
    err2Unclamped: number;
    worst: { relError: number };
    threads: number;
  };
  // The peer's own error measurement (not part of kohya) is subtracted from the wall time; CPU and RSS include it.
  record({
    arch,
    tool: 'peer',
    date: new Date().toISOString(),
    loadBefore,
    loadAfter: load(),
    modules: rep.modules,
    modulesTotal: rep.modulesTotal,
    slice: rep.slice,
    wall: r.seconds - rep.errorSeconds,
    user: r.user,
    sys: r.sys,
    rssMB: r.rssMB,
    norm2: rep.norm2,
    err2: rep.err2,
    err2Unclamped: rep.err2Unclamped,
    worst: rep.worst.relError,
    threads: rep.threads,
    ...(runId ? { run: runId } : {}),
  });
  rmSync(o, { force: true });
  rmSync(json, { force: true });
}

/** The markdown table: one line per run of ours, one line per complete set of peer slices (summed). */
function table(): void {
  const rows = readFileSync(RESULTS, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Row);
  console.log(
    '| arch | tool | modules | wall s | CPU s user + sys | peak RSS MB | rel. error | worst module | note | load before → after |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  const line = (r: Row, modules: number, note: string): void => {
    console.log(
      `| ${r.arch} | ${r.tool === 'ours' ? `lora-mix (${r.threads} threads)` : 'kohya (torch peer, 2 threads)'} | ${modules} | ${r.wall.toFixed(1)} | ` +
        `${r.user.toFixed(1)} + ${r.sys.toFixed(1)} = ${(r.user + r.sys).toFixed(1)} | ${r.rssMB.toFixed(0)} | ` +
        `${Math.sqrt(r.err2 / r.norm2).toExponential(2)} | ${r.worst.toExponential(2)} | ${note} | ${r.loadBefore} → ${r.loadAfter} |`,
    );
  };
  for (const r of rows.filter((x) => x.tool === 'ours'))
    line(r, r.modules, `mean power iterations ${(r.iterations ?? 0).toFixed(2)}`);
  const group = (x: Row): string => `${x.arch} ${x.run ?? x.date}`;
  for (const g of new Set(rows.filter((x) => x.tool === 'peer').map(group))) {
    const slices = rows.filter((x) => x.tool === 'peer' && group(x) === g);
    const sum = (f: (x: Row) => number): number => slices.reduce((a, x) => a + f(x), 0);
    const first = slices[0] as Row;
    const combined: Row = {
      ...first,
      wall: sum((x) => x.wall),
      user: sum((x) => x.user),
      sys: sum((x) => x.sys),
      rssMB: Math.max(...slices.map((x) => x.rssMB)),
      norm2: sum((x) => x.norm2),
      err2: sum((x) => x.err2),
      worst: Math.max(...slices.map((x) => x.worst)),
      loadAfter: (slices[slices.length - 1] as Row).loadAfter,
    };
    const unclamped = Math.sqrt(sum((x) => x.err2Unclamped ?? 0) / combined.norm2);
    line(
      combined,
      sum((x) => x.modules),
      `${slices.length} slice(s) summed${first.run ? ` (run ${first.run})` : ''}; unclamped ${unclamped.toExponential(2)}`,
    );
  }
}

async function main(): Promise<void> {
  if (process.argv[2] === '--generate') {
    const [, , , arch, kind, file] = process.argv;
    const { generateBaseCheckpoint, generateLora } = await import('../src/fixtures/generate.js');
    if (kind === 'base') await generateBaseCheckpoint(file!, arch as Arch, 'full', { dtype: 'F16', seed: 7 });
    else
      await generateLora(file!, arch as Arch, 'full', {
        rank: Number(kind!.slice(3)),
        alpha: Number(kind!.slice(3)),
        targets: 'lcm',
        format: 'kohya',
        dtype: 'F16',
        seed: 11,
      });
    return;
  }
  if (process.argv.includes('--table')) {
    table();
    return;
  }
  const arch = arg('arch', 'sd15') as Arch;
  const runs = Number(arg('runs', '1'));
  const rank = Number(arg('rank', '64'));
  const threads = Number(arg('threads', '2'));
  const which = arg('which', 'ours');
  const slice = process.argv.includes('--modules') ? arg('modules', '') : undefined;
  mkdirSync(OUT, { recursive: true });
  console.log(`machine: ${os.cpus()[0]?.model ?? '?'} × ${os.cpus().length}, load average ${load()}`);
  const { base, tuned } = await generate(arch, rank);
  console.log(`inputs: ${base} (${(statSync(base).size / 1e9).toFixed(2)} GB), ${tuned}`);
  for (let i = 0; i < runs; i++) {
    if (which === 'ours') runOurs(arch, base, tuned, rank, threads);
    else if (which === 'peer')
      runPeer(
        arch,
        base,
        tuned,
        rank,
        slice,
        process.argv.includes('--time-limit') ? arg('time-limit', '') : undefined,
      );
    else throw new Error(`--which ours|peer, got ${which}`);
  }
}

await main();
