import * as path from 'node:path';
import { UsageError } from '../../core/errors.js';
import { formatVerifyReport } from '../../verify/report.js';
import { verifyFusion } from '../../verify/fusion.js';
import { numberOption, parseCommandArgs } from '../args.js';
import type { CliContext, Command } from '../context.js';
import { blockOptions, loraArgs } from './fuse.js';

const HELP = `Usage: lora-mix verify --fused OUT --base CKPT A.safetensors[:W] [B.safetensors[:W] …]
                       [--probes N] [--tolerance T] [--seed S] [--allow-unmatched] [--all] [--json]

Check a fused checkpoint against its base and the LoRAs that went in, without running a UNet. For every fused
module and N random probe vectors x, compare W′x (fused) with Wx + Σ W·(alpha/rank)·up(down x) computed in f64
from the base and the LoRA factors. Each row may differ by what one rounding of W′ to its dtype (plus f32
accumulation) can cause; a module fails when its worst error exceeds T times that bound. Wrong key mappings,
transposed factors, wrong q/k/v slices and wrong weights all show up far above it — except where a delta is
smaller than the fused dtype's precision, which the report marks instead of passing silently.

Give the same LoRAs, weights and block options that fuse got.

Options:
  --fused OUT             the fused checkpoint (file or diffusers folder)
  --base CKPT             the base it was fused from
  --probes N              probe vectors per module (default 4)
  --tolerance T           allowed error in units of the rounding bound (default 2)
  --seed S                probe seed (default 0)
  --allow-unmatched       as given to fuse
  --blocks SPEC, --blocks-N SPEC   as given to fuse
  --all                   list every module (default: the 10 worst)
  --json                  print the report as JSON

Exit status: 0 when every module is within tolerance, 1 when one is not (or nothing was checked).

Example:
  lora-mix verify --fused sd15-lcm.safetensors --base sd15.safetensors lcm-lora-sdv1-5.safetensors:1.0 style.safetensors:0.8`;

export const verifyCommand: Command = {
  name: 'verify',
  summary: 'check a fused checkpoint against its base and LoRAs (per-module worst error)',
  help: HELP,
  async run(argv: string[], ctx: CliContext): Promise<number> {
    const { values, positionals } = parseCommandArgs('verify', argv, {
      fused: { type: 'string' },
      base: { type: 'string' },
      probes: { type: 'string' },
      tolerance: { type: 'string' },
      seed: { type: 'string' },
      'allow-unmatched': { type: 'boolean' },
      all: { type: 'boolean' },
      json: { type: 'boolean' },
      ...blockOptions(),
    });
    if (typeof values.fused !== 'string' || values.fused === '') {
      throw new UsageError(
        "verify: --fused OUT is required (the fused checkpoint). Run 'lora-mix verify --help' for usage.",
      );
    }
    if (typeof values.base !== 'string' || values.base === '') {
      throw new UsageError(
        "verify: --base CKPT is required (the checkpoint it was fused from). Run 'lora-mix verify --help' for usage.",
      );
    }
    const probes = numberOption('verify', 'probes', values.probes, { min: 1, max: 64, integer: true });
    const tolerance = numberOption('verify', 'tolerance', values.tolerance, { min: 0 });
    if (tolerance !== undefined && !(tolerance > 0))
      throw new UsageError('verify: --tolerance must be positive', 'USAGE_BAD_ARGUMENT');
    const seed = numberOption('verify', 'seed', values.seed, { min: 0, integer: true });
    const { paths, weights } = loraArgs('verify', positionals, values, ctx.cwd);
    const report = await verifyFusion(
      path.resolve(ctx.cwd, values.fused),
      path.resolve(ctx.cwd, values.base),
      paths,
      weights,
      {
        ...(probes !== undefined ? { probes } : {}),
        ...(tolerance !== undefined ? { tolerance } : {}),
        ...(seed !== undefined ? { seed } : {}),
        ...(values['allow-unmatched'] === true ? { allowUnmatched: true } : {}),
      },
    );
    ctx.out(
      values.json === true
        ? `${JSON.stringify(report, null, 2)}\n`
        : formatVerifyReport(report, { all: values.all === true }),
    );
    return report.ok ? 0 : 1;
  },
};
