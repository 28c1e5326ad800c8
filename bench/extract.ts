/**
 * Extraction benchmark: `lora-mix extract --rank 64` on full-size synthetic checkpoints, tuned = base + an
 * LCM-LoRA-shaped LoRA (rank 64 on every LCM target: 278 modules for SD1.5), so the exact answer is known.
 *
 *   npx tsx bench/extract.ts [--arch sd15,sdxl] [--runs 1] [--rank 64]
 *
 * Inputs, generated once under bench/out/ (git-ignored) by child processes:
 *   <arch>-base.f16.safetensors        generateBaseCheckpoint, F16, seed 7 (as bench/fuse.ts)
 *   <arch>-lcm64.f16.safetensors       generateLora rank 64, alpha 64, LCM targets, kohya, seed 11
 *   <arch>-tuned.f16.safetensors       lora-mix fuse base + that LoRA (F16)
 * Each extract run is a child process (`node --import tsx src/cli/lora-mix.ts extract … --json`) under
 * /usr/bin/time -v: wall time and peak RSS from there, per-module errors from the JSON report.
 * Peer: kohya's networks/extract_lora_from_models.py needs PyTorch; it runs only when `python3 -c "import torch"`
 * works (Debian's python3-torch) and a copy of the script is given with --kohya PATH. Otherwise the peer is skipped
 * and the table says so.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
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

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? def) : def;
}

function timed(
  cmd: string,
  args: string[],
): { seconds: number; rssMB: number; cpu: number; stdout: string; status: number } {
  const t0 = performance.now();
  const r = spawnSync('/usr/bin/time', ['-v', cmd, ...args], { encoding: 'utf8', maxBuffer: 1 << 28, cwd: ROOT });
  const seconds = (performance.now() - t0) / 1000;
  const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr ?? '');
  const user = /User time \(seconds\): ([\d.]+)/.exec(r.stderr ?? '');
  const sys = /System time \(seconds\): ([\d.]+)/.exec(r.stderr ?? '');
  const cpu = Number(user?.[1] ?? Number.NaN) + Number(sys?.[1] ?? Number.NaN);
  if (r.status !== 0) {
    process.stderr.write((r.stderr ?? '').slice(0, 4000));
    throw new Error(`${args.join(' ')} failed (${r.status})`);
  }
  return { seconds, rssMB: m ? Number(m[1]) / 1024 : Number.NaN, cpu, stdout: r.stdout ?? '', status: r.status ?? -1 };
}

function node(args: string[]): ReturnType<typeof timed> {
  return timed(process.execPath, ['--import', 'tsx', ...args]);
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
  const archs = arg('arch', 'sd15').split(',') as Arch[];
  const runs = Number(arg('runs', '1'));
  const rank = Number(arg('rank', '64'));
  mkdirSync(OUT, { recursive: true });
  const torch = spawnSync('python3', ['-c', 'import torch'], { encoding: 'utf8' }).status === 0;
  console.log(
    `machine: ${os.cpus()[0]?.model ?? '?'} × ${os.cpus().length}, load average ${os
      .loadavg()
      .map((x) => x.toFixed(1))
      .join(' ')}`,
  );
  console.log(
    `peer (kohya extract_lora_from_models.py): ${torch ? 'PyTorch found' : 'skipped — python3 -c "import torch" fails here'}`,
  );
  for (const arch of archs) {
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
    for (let i = 0; i < runs; i++) {
      const o = path.join(OUT, `${arch}-extracted.safetensors`);
      rmSync(o, { force: true });
      const r = node([
        CLI,
        'extract',
        '--base',
        base,
        '--tuned',
        tuned,
        '--rank',
        String(rank),
        '-o',
        o,
        '--json',
        '-q',
      ]);
      const rep = JSON.parse(r.stdout) as ExtractReport;
      const worst = rep.worst ? rep.worst.relError : 0;
      const its = rep.modules.reduce((a, m) => a + m.iterations, 0) / rep.modules.length;
      console.log(
        `${arch} run ${i + 1}: ${rep.modules.length} modules, wall ${r.seconds.toFixed(1)} s (report ${rep.seconds.toFixed(1)} s), ` +
          `CPU ${r.cpu.toFixed(1)} s (user + sys), peak RSS ${r.rssMB.toFixed(0)} MB, overall rel. error ${rep.overall.relError.toExponential(2)}, worst module ${worst.toExponential(2)}, ` +
          `mean power iterations ${its.toFixed(2)}, output ${(statSync(o).size / 2 ** 20).toFixed(1)} MiB, load ${os.loadavg()[0]?.toFixed(1)}`,
      );
      rmSync(o, { force: true });
    }
  }
}

await main();
