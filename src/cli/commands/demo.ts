import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { IoError, UsageError } from '../../core/errors.js';
import { describeLora, loadLora, saveLora, type LoadedLora, type LoraSummary } from '../../formats/index.js';
import { fuseLoras } from '../../fuse/index.js';
import { verifyFusion } from '../../verify/index.js';
import { fmtBytes } from '../../fuse/report.js';
import type { FuseReport } from '../../fuse/types.js';
import type { VerifyReport } from '../../verify/types.js';
import { openSafetensors } from '../../node/files.js';
import { ARCH_LABEL, parseArch } from '../../layout/index.js';
import type { Arch } from '../../layout/types.js';
import { mergeLoras, type MergeReport } from '../../lora/index.js';
import {
  checkFusedSampling,
  loadVerifyNet,
  withRuntimeLoras,
  type FusedSamplingCheck,
  type VerifyNet,
} from '../../verify/index.js';
import { parseCommandArgs } from '../args.js';
import type { CliContext, Command } from '../context.js';

const HELP = `Usage: lora-mix demo [--arch sd15|sdxl|ssd1b] [--keep DIR] [--json]

Run the whole pipeline on the small fixtures bundled with lora-mix (real key names and structure, tiny widths):

  1. inspect   an LCM-LoRA (every LCM-LoRA target) and a style LoRA (UNet attention + text encoders)
  2. merge     τ = 1.0·τ_LCM + 0.8·τ_style, exactly (factors concatenated along the rank), saved as a LoRA
  3. fuse      the merged LoRA into the fixture base checkpoint (tensors keep their dtype, F16)
  4. verify    every fused module against base + 1.0·LCM + 0.8·style, from the original LoRAs' factors
  5. sample    4 LCM steps with the verification network, a small denoiser whose layers are modules of the
               checkpoint (two UNet transformer blocks, a resnet time projection, a text-encoder layer each),
               once with the fused weights and once with the base weights and both LoRAs applied at run time

and print what happened: inputs, coverage, the verification, how closely the two samplers agree (in units of one
rounding of the fused weights) and how strongly each LoRA acts in the fused sample (1 = as asked), and timings.
Exit code 1 when the verification or the sampler comparison fails.

Options:
  --arch A      sd15 (default), sdxl or ssd1b
  --keep DIR    keep the merged LoRA and the fused checkpoint in DIR (created if needed) instead of a temporary
                folder that is removed at the end
  --json        print the report as JSON

Examples:
  lora-mix demo
  lora-mix demo --arch sdxl --keep demo-out
  npm start`;

const WEIGHTS = [1.0, 0.8] as const;

/** The package root (fixtures/ lives there), from this file's place: src/cli/commands/ or dist/cli/commands/. */
function packageRoot(): string {
  return fileURLToPath(new URL('../../../', import.meta.url));
}

function fixtures(arch: Arch): { dir: string; base: string; lcm: string; style: string } {
  const dir = path.join(packageRoot(), 'fixtures', arch);
  // SD1.5 LoRAs are trained with diffusers-path kohya names, SDXL / SSD-1B ones with SGM paths.
  const style = arch === 'sd15' ? 'style-lora.kohya.safetensors' : 'style-lora.kohya-sgm.safetensors';
  const files = {
    dir,
    base: path.join(dir, 'base.safetensors'),
    lcm: path.join(dir, 'lcm-lora.kohya.safetensors'),
    style: path.join(dir, style),
  };
  for (const f of [files.base, files.lcm, files.style]) {
    if (!existsSync(f)) {
      throw new IoError(
        'INPUT_NOT_FOUND',
        `demo: the bundled fixture ${f} is missing; the demo runs from a lora-mix checkout or a package that includes fixtures/`,
        { file: f },
      );
    }
  }
  return files;
}

const now = (): number => performance.now() / 1000;

function describeInput(s: LoraSummary): string {
  const groups = Object.entries(s.byGroup)
    .map(([g, n]) => `${g} ${n}`)
    .join(', ');
  const ranks = s.ranks.map((r) => r.value).join('/');
  const alphas = s.alphas.map((a) => a.value).join('/');
  const spelling = s.format === 'kohya' && s.kohyaPaths ? `kohya, ${s.kohyaPaths} paths` : (s.format ?? 'LoRA');
  return (
    `${spelling}, ${s.dtype ?? '?'}, ${s.modules} modules (${groups}), rank ${ranks}, alpha ${alphas}; ` +
    `LCM-LoRA targets covered ${s.lcmTargets.covered}/${s.lcmTargets.total}`
  );
}

const sci = (x: number): string => (x === 0 ? '0' : x.toExponential(1));
const secs = (x: number): string => `${x.toFixed(2)} s`;

interface DemoReport {
  arch: Arch;
  fixtures: string;
  outputs: { dir: string; kept: boolean; merged: string; fused: string };
  inputs: { role: string; file: string; weight: number; summary: LoraSummary }[];
  merge: {
    modules: number;
    rankBefore: MergeReport['rankBefore'];
    rankAfter: MergeReport['rankAfter'];
    exact: boolean;
    bytes: number;
    dtype: string;
  };
  fuse: FuseReport;
  verify: Omit<VerifyReport, 'modules'>;
  sampler: {
    network: { modules: number; blocks: readonly string[]; timeProjection: string; textLayers: readonly string[] };
    steps: number;
    seed: number;
    shape: readonly number[];
    timesteps: readonly number[];
    difference: number;
    maxAbsDiff: number;
    floor: number;
    ratio: number;
    signal: number;
    dtype: string;
    effects: { lora: string; effect: number; standardError: number; resolution: number }[];
    tolerance: number;
    ok: boolean;
    conclusive: boolean;
  };
  seconds: { inspect: number; merge: number; fuse: number; verify: number; sample: number; total: number };
  ok: boolean;
}

function relative(p: string): string {
  const r = path.relative(packageRoot(), p);
  return r.startsWith('..') || path.isAbsolute(r) ? p : r.split(path.sep).join('/');
}

function formatReport(r: DemoReport): string {
  const lines: string[] = [];
  const arch = `${ARCH_LABEL[r.arch]} (tiny fixtures)`;
  lines.push(`lora-mix demo — ${arch}: merge an LCM-LoRA with a style LoRA, fuse, verify, sample`);
  lines.push('');
  lines.push('inputs');
  for (const i of r.inputs)
    lines.push(`  ${i.weight.toFixed(1)} × ${i.role.padEnd(10)} ${i.file}: ${describeInput(i.summary)}`);
  const rank = (x: MergeReport['rankBefore']): string => (x.min === x.max ? String(x.min) : `${x.min}–${x.max}`);
  lines.push('merge');
  lines.push(
    `  ${r.inputs.map((i) => `${i.weight.toFixed(1)}·${i.role}`).join(' + ')} → ${r.merge.modules} modules, rank ${rank(r.merge.rankAfter)}` +
      `${r.merge.exact ? ' (exact sum: factors concatenated along the rank)' : ''}; saved ${r.outputs.merged} (kohya, ${r.merge.dtype}, ${fmtBytes(r.merge.bytes)})`,
  );
  const f = r.fuse;
  lines.push('fuse');
  lines.push(
    `  into ${relative(f.base)} (${f.naming}) → ${r.outputs.fused} (${f.outputDtype === 'as stored' ? 'dtypes as stored' : f.outputDtype})`,
  );
  const groups = Object.entries(f.byGroup)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([g, n]) => `${g} ${n}`)
    .join(', ');
  lines.push(
    `  ${f.modulesFused} modules fused (${groups}); unmatched ${f.unmatched.length}; ` +
      `tensors ${f.tensors.fused} fused, ${f.tensors.copied} copied, ${f.tensors.converted} converted; overflow ${f.overflow.total === 0 ? 'none' : f.overflow.total}`,
  );
  lines.push(`  kernel ${f.kernel}`);
  const v = r.verify;
  lines.push('verify');
  const worst = v.worst ? `; worst ${v.worst.worstRatio.toFixed(2)}× the rounding bound (${v.worst.path})` : '';
  lines.push(
    `  ${v.checked} modules against base + ${r.inputs.map((i) => `${i.weight.toFixed(1)}·${i.role}`).join(' + ')} (original factors): ` +
      `${v.ok ? 'OK' : `FAILED (${v.failed} module(s))`}, tolerance ${v.tolerance}×${worst}`,
  );
  if (v.inconclusive > 0) {
    lines.push(
      `  ${v.inconclusive} of them are inconclusive on their own: their delta is within a few roundings of the stored weights`,
    );
    lines.push('  (the sampler check below sees all the modules of its network together)');
  }
  const s = r.sampler;
  lines.push('sample');
  lines.push(
    `  verification network: ${s.network.modules} modules of the checkpoint (${s.network.blocks.length} transformer blocks, ` +
      `a time projection, ${s.network.textLayers.length} text-encoder layer(s)); ${s.steps} LCM steps (t = ${s.timesteps.join(', ')}), ` +
      `seed ${s.seed}, latent [${s.shape.join(', ')}]`,
  );
  lines.push(
    `  fused vs base + runtime LoRAs: rms difference ${sci(s.difference)} (max ${sci(s.maxAbsDiff)}) = ${s.ratio.toFixed(2)}× one ` +
      `${s.dtype} rounding of the fused weights (${sci(s.floor)}); tolerance ${s.tolerance}×`,
  );
  lines.push(`  the LoRAs move the sample by ${sci(s.signal)} rms (${(s.signal / s.floor).toFixed(1)}× that rounding)`);
  lines.push(
    `  effect of each LoRA in the fused sample (1 = as asked): ` +
      s.effects.map((e) => `${e.lora} ${e.effect.toFixed(3)} ± ${e.standardError.toFixed(3)}`).join(', '),
  );
  lines.push(
    `  ${s.ok ? 'OK' : 'FAILED'}${s.conclusive ? '' : ' (inconclusive: the deltas are below the storage precision)'}`,
  );
  const t = r.seconds;
  lines.push('');
  lines.push(
    `time: ${secs(t.total)} (inspect ${secs(t.inspect)}, merge ${secs(t.merge)}, fuse ${secs(t.fuse)}, verify ${secs(t.verify)}, sample ${secs(t.sample)})`,
  );
  lines.push(r.outputs.kept ? `outputs kept in ${r.outputs.dir}` : 'temporary outputs removed');
  lines.push(r.ok ? 'result: OK' : 'result: FAILED');
  return `${lines.join('\n')}\n`;
}

export const demoCommand: Command = {
  name: 'demo',
  summary: 'merge, fuse, verify and sample the bundled fixtures end to end (what `npm start` runs)',
  help: HELP,
  async run(argv: string[], ctx: CliContext): Promise<number> {
    const { values, positionals } = parseCommandArgs('demo', argv, {
      arch: { type: 'string' },
      keep: { type: 'string' },
      json: { type: 'boolean' },
    });
    if (positionals.length > 0) {
      throw new UsageError(
        `demo: unexpected argument '${positionals[0]}'. Run 'lora-mix demo --help' for usage.`,
        'USAGE_BAD_ARGUMENT',
      );
    }
    if (values.keep !== undefined && (typeof values.keep !== 'string' || values.keep === '')) {
      throw new UsageError('demo: --keep expects a folder', 'USAGE_BAD_ARGUMENT');
    }
    const arch = values.arch === undefined ? 'sd15' : parseArch(String(values.arch));
    const fx = fixtures(arch);
    const keep = typeof values.keep === 'string' ? path.resolve(ctx.cwd, values.keep) : undefined;
    const dir = keep ?? (await mkdtemp(path.join(tmpdir(), 'lora-mix-demo-')));
    try {
      if (keep) await mkdir(keep, { recursive: true });
      const report = await runDemo(arch, fx, dir, keep !== undefined);
      ctx.out(values.json === true ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
      return report.ok ? 0 : 1;
    } finally {
      if (!keep) await rm(dir, { recursive: true, force: true });
    }
  },
};

async function loadNet(file: string): Promise<VerifyNet> {
  const f = await openSafetensors(file);
  try {
    return await loadVerifyNet(f);
  } finally {
    await f.close();
  }
}

async function runDemo(arch: Arch, fx: ReturnType<typeof fixtures>, dir: string, kept: boolean): Promise<DemoReport> {
  const t0 = now();
  const roles = [
    { role: 'LCM-LoRA', file: fx.lcm },
    { role: 'style', file: fx.style },
  ];
  const loras: LoadedLora[] = [];
  for (const r of roles) loras.push(await loadLora(r.file));
  const inputs = roles.map((r, i) => ({
    role: r.role,
    file: relative(r.file),
    weight: WEIGHTS[i]!,
    summary: describeLora(loras[i]!),
  }));
  const t1 = now();

  const merged = mergeLoras(loras, [...WEIGHTS]);
  const mergedPath = path.join(dir, `${arch}-lcm-style.safetensors`);
  // F32: the merged factors are stored without rounding, so the fused checkpoint can be checked against the originals.
  const written = await saveLora(merged.lora, mergedPath, {
    format: 'kohya',
    dtype: 'F32',
    refuseOverwrite: [fx.lcm, fx.style, fx.base],
  });
  const t2 = now();

  const fusedPath = path.join(dir, `${arch}-base-lcm-style.safetensors`);
  const fuse = await fuseLoras(fx.base, [mergedPath], [1], { out: fusedPath });
  const t3 = now();

  const verify = await verifyFusion(fusedPath, fx.base, loras, [...WEIGHTS]);
  const t4 = now();

  const base = await loadNet(fx.base);
  const fused = await loadNet(fusedPath);
  const runtime = withRuntimeLoras(base, loras, [...WEIGHTS]);
  const check: FusedSamplingCheck = checkFusedSampling(fused, runtime);
  const t5 = now();

  const c = check.comparison;
  const { modules: _modules, ...verifySummary } = verify;
  void _modules;
  const ok = verify.ok && check.ok;
  return {
    arch,
    fixtures: relative(fx.dir),
    outputs: {
      dir,
      kept,
      merged: kept ? mergedPath : path.basename(mergedPath),
      fused: kept ? fusedPath : path.basename(fusedPath),
    },
    inputs,
    merge: {
      modules: merged.report.written,
      rankBefore: merged.report.rankBefore,
      rankAfter: merged.report.rankAfter,
      exact: merged.report.exact,
      bytes: written.byteLength,
      dtype: 'F32',
    },
    fuse,
    verify: verifySummary,
    sampler: {
      network: {
        modules: runtime.spec.modules.length,
        blocks: runtime.spec.blocks,
        timeProjection: runtime.spec.timeProjection,
        textLayers: runtime.spec.textLayers,
      },
      steps: c.steps,
      seed: c.seed,
      shape: c.shape,
      timesteps: c.timesteps,
      difference: check.difference,
      maxAbsDiff: c.maxAbsDiff,
      floor: check.floor,
      ratio: check.ratio,
      signal: check.signal,
      dtype: check.dtype,
      effects: check.effects.map((e) => ({
        lora: roles[e.input]!.role,
        effect: e.effect,
        standardError: e.standardError,
        resolution: e.resolution,
      })),
      tolerance: check.tolerance,
      ok: check.ok,
      conclusive: check.conclusive,
    },
    seconds: { inspect: t1 - t0, merge: t2 - t1, fuse: t3 - t2, verify: t4 - t3, sample: t5 - t4, total: t5 - t0 },
    ok,
  };
}

export const command: Command = demoCommand;
