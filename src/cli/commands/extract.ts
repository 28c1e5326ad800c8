import * as path from 'node:path';
import { UsageError } from '../../core/errors.js';
import { extractLora, type ExtractOptions } from '../../fuse/extract.js';
import { formatExtractReport } from '../../fuse/extract-report.js';
import { numberOption, parseCommandArgs } from '../args.js';
import type { CliContext, Command } from '../context.js';
import { cliProvenance } from '../provenance.js';
import { parseFuseDtype } from './fuse.js';

const HELP = `Usage: lora-mix extract --base BASE --tuned TUNED -o OUT.safetensors
                        (--rank K | --min-energy E | --sv-ratio X | --sv-fro X | --sv-cumulative X)
                        [--max-rank K] [--conv-rank K] [--text-encoders] [--bias-diff] [--dtype f16|bf16|f32]
                        [--kohya-paths diffusers|sgm] [--seed N] [--threads N] [--all] [--json] [-q]

Turn a fine-tuned checkpoint into a LoRA: τ = TUNED − BASE, module by module, written as the best rank-K
factors of each module's difference (no clamping), with the error that truncation makes stated per module and
overall. Like kohya's extract_lora_from_models.py, LyCORIS's extract_locon.py or ComfyUI's LoraSave, minus their
0.99-quantile clamp, and streaming: both checkpoints are read one module at a time, never held whole.

BASE and TUNED are single-file checkpoints (SD1.5 LDM names, SDXL/SSD-1B SGM names), lone diffusers UNet files or
diffusers folders, in any mix, of the same architecture. Modules: every UNet Linear/Conv2d — the attentions,
resnets and down/up-samplers (LCM-LoRA's set), conv_in, conv_out and the time (and SDXL add) embeddings; with
--text-encoders also the text encoders. 3×3 convolutions are written as LoCon (lora_down [r, in, 3, 3], lora_up
[out, r, 1, 1]). A module whose difference is exactly zero is left out and counted. Each kept module's factors
come from a randomized truncated SVD (seeded, with power iterations until the error settles): within 1% of the
optimal error ‖Δ − Δ_K‖ of a full SVD. The error reported is measured on the factors as stored (after rounding to
--dtype). Biases and norm layers are not low-rank: with --bias-diff they are stored as full differences, as
ComfyUI's LoraSave does with bias_diff (<module>.diff_b beside the factors, <norm>.diff / <norm>.diff_b; ComfyUI
and lora-mix read them). Every other tensor that differs (embedding tables, the VAE, biases and norms without
--bias-diff) is named in the report as NOT in the LoRA.

Rank (one of):
  --rank K               K per module (capped by the module's size); with a rule below, the cap of that rule
  --min-energy E         the smallest rank keeping ‖Δ_k‖ ≥ E·‖Δ‖ (0 < E ≤ 1), e.g. 0.9
  --sv-ratio X           kohya's rule: keep singular values above σ_max / X, plus one
  --sv-fro X             kohya's rule: the rank whose Frobenius share first reaches X, plus one
  --sv-cumulative X      kohya's rule on Σσ (needs every singular value: slower)
Options:
  --base BASE            the original checkpoint (file or diffusers folder)
  --tuned TUNED          the fine-tuned (e.g. LCM-distilled) checkpoint
  -o, --output OUT       the LoRA file to write (kohya spelling)
  --max-rank K           cap of the rules above when --rank is not given (default 128)
  --conv-rank K          rank (or rule cap) of 3×3 convolutions; 0 leaves them out (default: as other modules)
  --text-encoders        also extract the text encoders (both need them)
  --bias-diff            also store the extracted modules' biases and the norm layers' weights and biases as full
                         differences (.diff_b / .diff, ComfyUI's bias_diff); counted in the report
  --dtype D              f16 (default), bf16 or f32 for the factors
  --kohya-paths P        UNet names in diffusers paths (default) or sgm paths
  --seed N               seed of the SVD sketch (default: a fixed one): same inputs and seed, same bytes
  --threads N            modules factored at once on worker threads (default: one per core, at most 4; 1 = no workers);
                         the output is the same for every N
  --all                  list every module in the text report (default: the 8 worst)
  --json                 print the full report (per module: rank, ‖Δ‖, error, relative error, kept energy) as JSON
  -q, --quiet            no progress on stderr

Examples:
  lora-mix extract --base sd15.safetensors --tuned lcm-dreamshaper.safetensors --rank 64 -o lcm-ds-lora.safetensors
  lora-mix extract --base sdxl-base/ --tuned sdxl-tuned.safetensors --min-energy 0.9 --max-rank 128 -o tau.safetensors
  lora-mix extract --base a.safetensors --tuned b.safetensors --rank 32 --conv-rank 0 --text-encoders --json -o t.safetensors
  lora-mix extract --base sd15.safetensors --tuned finetune.safetensors --rank 64 --bias-diff -o ft-lora.safetensors`;

export const extractCommand: Command = {
  name: 'extract',
  summary: 'turn a fine-tuned checkpoint into a LoRA (tuned − base, rank-K SVD, error stated), streaming',
  help: HELP,
  async run(argv: string[], ctx: CliContext): Promise<number> {
    const { values, positionals } = parseCommandArgs('extract', argv, {
      base: { type: 'string' },
      tuned: { type: 'string' },
      output: { type: 'string', short: 'o' },
      rank: { type: 'string' },
      'min-energy': { type: 'string' },
      'sv-ratio': { type: 'string' },
      'sv-fro': { type: 'string' },
      'sv-cumulative': { type: 'string' },
      'max-rank': { type: 'string' },
      'conv-rank': { type: 'string' },
      'text-encoders': { type: 'boolean' },
      'bias-diff': { type: 'boolean' },
      dtype: { type: 'string' },
      'kohya-paths': { type: 'string' },
      seed: { type: 'string' },
      threads: { type: 'string' },
      all: { type: 'boolean' },
      json: { type: 'boolean' },
      quiet: { type: 'boolean', short: 'q' },
    });
    if (positionals.length > 0)
      throw new UsageError(`extract: unexpected argument '${positionals[0]}'; use --base, --tuned and -o`);
    for (const [flag, what] of [
      ['base', 'the original checkpoint'],
      ['tuned', 'the fine-tuned checkpoint'],
      ['output', 'the LoRA to write'],
    ] as const) {
      if (typeof values[flag] !== 'string' || values[flag] === '') {
        const name = flag === 'output' ? '-o OUT' : `--${flag} FILE`;
        throw new UsageError(`extract: ${name} is required (${what}). Run 'lora-mix extract --help' for usage.`);
      }
    }
    const num = (name: string, o: { min?: number; max?: number; integer?: boolean }) =>
      numberOption('extract', name, values[name], o);
    const rank = num('rank', { min: 1, max: 4096, integer: true });
    const rules = {
      minEnergy: num('min-energy', { min: Number.MIN_VALUE, max: 1 }),
      svRatio: num('sv-ratio', { min: 1 }),
      svFro: num('sv-fro', { min: Number.MIN_VALUE, max: 1 }),
      svCumulative: num('sv-cumulative', { min: Number.MIN_VALUE, max: 1 }),
    };
    const given = Object.entries(rules).filter(([, v]) => v !== undefined);
    if (given.length > 1)
      throw new UsageError(
        'extract: give one of --min-energy, --sv-ratio, --sv-fro, --sv-cumulative',
        'USAGE_BAD_ARGUMENT',
      );
    if (given.length === 0 && rank === undefined) {
      throw new UsageError(
        "extract: choose a rank: --rank K, or a rule (--min-energy, --sv-ratio, --sv-fro, --sv-cumulative). Run 'lora-mix extract --help' for usage.",
      );
    }
    const maxRank = num('max-rank', { min: 1, max: 4096, integer: true });
    const convRank = num('conv-rank', { min: 0, max: 4096, integer: true });
    const seed = num('seed', { min: 0, max: 2 ** 32 - 1, integer: true });
    const threads = num('threads', { min: 1, max: 256, integer: true });
    const dtype = parseFuseDtype('extract', values.dtype);
    const kp = values['kohya-paths'];
    if (kp !== undefined && kp !== 'diffusers' && kp !== 'sgm')
      throw new UsageError(
        `extract: --kohya-paths expects diffusers or sgm, got '${String(kp)}'`,
        'USAGE_BAD_ARGUMENT',
      );
    let shown = -1;
    const base = path.resolve(ctx.cwd, values.base as string);
    const tuned = path.resolve(ctx.cwd, values.tuned as string);
    const provenance = await cliProvenance(
      'extract',
      ctx.cwd,
      [],
      {
        ...(rank !== undefined ? { rank } : {}),
        ...Object.fromEntries(given),
        ...(maxRank !== undefined ? { maxRank } : {}),
        ...(convRank !== undefined ? { convRank } : {}),
        ...(dtype ? { dtype } : {}),
        ...(seed !== undefined ? { seed } : {}),
      },
      [
        { file: base, role: 'base' },
        { file: tuned, role: 'tuned' },
      ],
    );
    const options: ExtractOptions = {
      out: path.resolve(ctx.cwd, values.output as string),
      metadata: provenance,
      ...(rank !== undefined ? { rank } : {}),
      ...Object.fromEntries(given),
      ...(maxRank !== undefined ? { maxRank } : {}),
      ...(convRank !== undefined ? { convRank } : {}),
      ...(values['text-encoders'] === true ? { textEncoders: true } : {}),
      ...(values['bias-diff'] === true ? { biasDiff: true } : {}),
      ...(dtype ? { dtype } : {}),
      ...(kp ? { kohyaPaths: kp } : {}),
      ...(seed !== undefined ? { seed } : {}),
      ...(threads !== undefined ? { threads } : {}),
      ...(values.quiet === true
        ? {}
        : {
            onProgress: (p) => {
              const q = Math.floor((10 * p.modulesDone) / p.modulesTotal);
              if (q === shown && p.modulesDone !== p.modulesTotal) return;
              shown = q;
              ctx.err(
                ctx.isTTY
                  ? `\rextract: ${p.modulesDone}/${p.modulesTotal} modules (${p.seconds.toFixed(1)} s)${p.modulesDone === p.modulesTotal ? '\n' : ''}`
                  : `extract: ${p.modulesDone}/${p.modulesTotal} modules (${p.seconds.toFixed(1)} s)\n`,
              );
            },
          }),
    };
    const report = await extractLora(base, tuned, options);
    ctx.out(
      values.json === true ? `${JSON.stringify(report, null, 2)}\n` : formatExtractReport(report, values.all === true),
    );
    return 0;
  },
};
