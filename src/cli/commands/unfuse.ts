import * as path from 'node:path';
import { UsageError } from '../../core/errors.js';
import { unfuseLoras } from '../../fuse/unfuse.js';
import { formatUnfuseReport } from '../../fuse/extract-report.js';
import { numberOption, parseCommandArgs } from '../args.js';
import type { CliContext, Command } from '../context.js';
import { deferredProvenance, tapReads } from '../provenance.js';
import { blockOptions, fuseProgress, loraArgs, parseFuseDtype } from './fuse.js';

const HELP = `Usage: lora-mix unfuse --fused FUSED A.safetensors[:W] [B.safetensors[:W] …] -o OUT
                       [--base ORIGINAL] [--dtype f32|f16|bf16] [--allow-unmatched] [--on-overflow error|clamp]
                       [--blocks SPEC] [--blocks-N SPEC] [--threads N] [--no-fsync] [--json] [-q]

Take LoRAs back out of a fused checkpoint: W″ = FUSED − (W_A·τ_A + W_B·τ_B + …), streamed through the same path as
'lora-mix fuse' (same planner, kernel and writer), the delta built from the LoRAs' factors in f32 and rounded once.
Give the same LoRAs and weights (and block weights) that were fused.

How close it gets: the fused file was rounded once (up to ½ ulp of each fused value), so no unfuse can promise the
original bits; this one gives every element within ½ ulp(fused) + ½ ulp(result) of the original (plus the f32
rounding of the delta, far below one f16/bf16 ulp). Where |W + Δ| stays in the binade of |W| that is at most one
ulp of the original. diffusers' unfuse_lora subtracts in the weight dtype and drifts further.

Every adapter kind can be taken out. LoRA, LoCon, LoHa, LoKr and full diffs subtract W·Δ. DoRA and GLoRA deltas
depend on the original weight W0, so W0 is recovered from the fused weight: DoRA (fused with ComfyUI's rule
F = (1 − W)·W0 + W·m·V/‖V‖, V = W0 + ΔW) per row or input channel from the norm equation
‖V‖ = (‖F + (1 − W)·ΔW‖ − W·m)/(1 − W); GLoRA by solving W0·(I + W·s·a1·a2) = F − W·s·b1·b2 (Woodbury, an r × r
system); OFT/BOFT by inverting their row transform (per block of rows for OFT). A DoRA fused at W = 1 cannot be undone (the fused rows have norm m and ‖V‖ is gone: LORA_CANNOT_UNFUSE),
nor a GLoRA whose system is singular or ill-conditioned; rounding of the fused file is amplified about
1/|1 − W| times for DoRA.

With --base ORIGINAL the result is compared with the original over every weight the LoRAs change: a histogram of
the distance in ulps of the original's dtype, the worst element, and the count beyond the bound above. A LoRA or a
weight that was not fused shows up there as an implausible distance (reported as a warning). Without --base, a
LoRA the fused file's lora-mix metadata does not list is warned about.

Options:
  --fused FUSED           the fused checkpoint (file or diffusers folder)
  -o, --output OUT        the file (or folder) to write
  --base ORIGINAL         the checkpoint before fusion, to report the distance in ulps
  --dtype, --allow-unmatched, --on-overflow, --blocks, --blocks-N, --threads, --no-fsync: as in 'lora-mix fuse'
  --json                  print the report as JSON
  -q, --quiet             no progress on stderr

Examples:
  lora-mix unfuse --fused sd15-lcm.safetensors lcm-lora-sdv1-5.safetensors:1.0 -o sd15-back.safetensors
  lora-mix unfuse --fused sd15-lcm.safetensors lcm-lora-sdv1-5.safetensors:1.0 -o back.safetensors --base sd15.safetensors
  lora-mix unfuse --fused sd15-dora.safetensors my-dora.safetensors:0.8 -o sd15-back.safetensors`;

export const unfuseCommand: Command = {
  name: 'unfuse',
  summary: 'subtract fused LoRAs from a checkpoint (one rounding; --base reports the distance in ulps)',
  help: HELP,
  async run(argv: string[], ctx: CliContext): Promise<number> {
    const { values, positionals } = parseCommandArgs('unfuse', argv, {
      fused: { type: 'string' },
      base: { type: 'string' },
      output: { type: 'string', short: 'o' },
      dtype: { type: 'string' },
      'allow-unmatched': { type: 'boolean' },
      'on-overflow': { type: 'string' },
      'no-fsync': { type: 'boolean' },
      threads: { type: 'string' },
      json: { type: 'boolean' },
      quiet: { type: 'boolean', short: 'q' },
      ...blockOptions(),
    });
    if (typeof values.fused !== 'string' || values.fused === '')
      throw new UsageError("unfuse: --fused FUSED is required. Run 'lora-mix unfuse --help' for usage.");
    if (typeof values.output !== 'string' || values.output === '')
      throw new UsageError("unfuse: -o OUT is required. Run 'lora-mix unfuse --help' for usage.");
    const onOverflow = values['on-overflow'] ?? 'error';
    if (onOverflow !== 'error' && onOverflow !== 'clamp')
      throw new UsageError(
        `unfuse: --on-overflow expects error or clamp, got '${String(onOverflow)}'`,
        'USAGE_BAD_ARGUMENT',
      );
    const dtype = parseFuseDtype('unfuse', values.dtype);
    const threads = numberOption('unfuse', 'threads', values.threads, { min: 1, max: 64, integer: true });
    const { paths, weights } = loraArgs('unfuse', positionals, values, ctx.cwd);
    const fused = path.resolve(ctx.cwd, values.fused);
    const tap = tapReads(paths);
    const progress = values.quiet === true ? null : fuseProgress(ctx, 'unfuse');
    let report;
    try {
      const provenance = await deferredProvenance(
        'unfuse',
        ctx.cwd,
        paths.map((file, i) => ({ file, weight: weights[i] })),
        { onOverflow, ...(dtype ? { dtype } : {}) },
        [{ file: fused, role: 'fused' }],
        tap.sha256,
      );
      report = await unfuseLoras(fused, paths, weights, {
        out: path.resolve(ctx.cwd, values.output),
        metadata: provenance.metadata,
        lateMetadata: provenance.late,
        onOverflow,
        ...(typeof values.base === 'string' ? { base: path.resolve(ctx.cwd, values.base) } : {}),
        ...(dtype ? { dtype } : {}),
        ...(threads !== undefined ? { threads } : {}),
        ...(values['allow-unmatched'] === true ? { allowUnmatched: true } : {}),
        ...(values['no-fsync'] === true ? { fsync: false } : {}),
        ...(progress ? { onProgress: progress.update } : {}),
      });
    } finally {
      progress?.end();
      await tap.close();
    }
    if (values.json === true) ctx.out(`${JSON.stringify(report, null, 2)}\n`);
    else ctx.out(formatUnfuseReport(report));
    if (!values.json) for (const w of report.warnings) ctx.err(`lora-mix unfuse: warning: ${w}\n`);
    return 0;
  },
};
