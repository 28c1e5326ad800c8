import * as path from 'node:path';
import { UsageError } from '../../core/errors.js';
import { fuseLoras } from '../../fuse/fuse.js';
import { fmtBytes, formatFuseReport } from '../../fuse/report.js';
import type { FuseDType, FuseProgress } from '../../fuse/types.js';
import type { MergeWeight } from '../../lora/merge.js';
import { numberOption, parseCommandArgs, parseWeightedSpec } from '../args.js';
import { methodFlagOptions, methodHelpLines, parseMethodFlags } from '../method-flags.js';
import { describeStack, STACK_HELP, STACK_OPTIONS, stackArgs } from '../stack-args.js';
import type { CliContext, Command } from '../context.js';
import { deferredProvenance, tapReads } from '../provenance.js';

const HELP = `Usage: lora-mix fuse --base CKPT A.safetensors[:W] [B.safetensors[:W] …] -o OUT
       lora-mix fuse --base CKPT (--prompt "<lora:NAME:W> …" | --comfy-workflow FILE) --lora-dir DIR -o OUT
                     [--method M [--density D] [--majority-sign S] [--seed N] [--t T]]
                     [--device cpu|gpu] [--dtype f32|f16|bf16] [--allow-unmatched]
                     [--on-overflow error|clamp] [--allow-nonfinite-base] [--root-checkpoint omit|fuse] [--blocks SPEC] [--blocks-N SPEC] [--threads N]
                     [--no-fsync] [--json] [-q]

Add τ = W_A·τ_A + W_B·τ_B + … to the weights of a base checkpoint and write the fused checkpoint, which then
samples like the base with the LoRAs applied (with an LCM-LoRA: in 4 steps, no LoRA loader needed).

CKPT is a single-file checkpoint (SD1.5 LDM names, SDXL/SSD-1B SGM names; text encoders and VAE optional, so a
UNet-only file works, with 'model.diffusion_model.', 'diffusion_model.' or bare 'input_blocks.…' keys), a lone
diffusers UNet file, or a diffusers folder (OUT is then a new folder; model_index.json decides its components;
every other file is copied byte for byte, also components stored only as pytorch_model.bin that the LoRAs do
not change; a single-file checkpoint at the folder's root is left out unless --root-checkpoint fuse). Tensors stream in file order: untouched ones are copied byte for byte; each
targeted weight gets Σ W·(alpha/rank)·up·down in f32 (from the LoRAs' factors, never a dense delta per input)
and is rounded once to the output dtype. Memory stays at a few tensors, whatever the checkpoint's size.

W is a number, or per-component strengths: unet=0.8,te=0.5 (te = both text encoders; te1= / te2= separately;
a component not named keeps 1). --method applies a merge method (docs/methods.md) to each module's dense task
tensors and adds its dense result, with no rank reduction.

Before anything is written, every LoRA module must land on one base weight of the right shape (the run stops and
lists the modules that do not, unless --allow-unmatched). Values beyond the output dtype's range (F16: 65504)
stop the run (default) or are clamped (--on-overflow clamp); either way they are counted per tensor. A base weight
the LoRAs change that already holds NaN/Inf stops the run (FORMAT_NONFINITE, naming it) unless
--allow-nonfinite-base; untouched tensors are copied byte for byte whatever they hold. The output is
written to a temporary file beside OUT and renamed at the end: a failed run leaves nothing, and an input is never
overwritten.

Options:
  --base CKPT             the base checkpoint (file or diffusers folder)
  -o, --output OUT        the file (or, for a folder base, the new folder) to write
  --device cpu|gpu        cpu (default): WASM SIMD on worker threads. gpu: gpu.js on its best GPU backend; when
                          gpu.js finds none (as in Node without a GPU) the CPU kernel runs and the summary says so
  --dtype D               f32, f16 or bf16 for every float tensor (default: each tensor keeps its dtype)
  --allow-unmatched       skip (and list) LoRA modules the base has no weight for, e.g. text-encoder modules on a
                          UNet-only file, or an SDXL LoRA on SSD-1B
  --on-overflow M         error (default) or clamp to the dtype's largest finite value
  --allow-nonfinite-base  fuse even when a changed base weight already holds NaN/Inf (they stay NaN/Inf; counted)
  --root-checkpoint M     folder bases: a single-file checkpoint beside the components is left out of the output
                          (omit, default) or fused too (fuse); the summary says which
${methodHelpLines()}
${STACK_HELP}
  --blocks SPEC           per-block multipliers for every LoRA (see 'lora-mix merge --help')
  --blocks-N SPEC         per-block multipliers for LoRA N only (1-based)
  --threads N             CPU threads (default: one per core)
  --no-fsync              do not wait for the disk to confirm the output (no fsync): still written to a
                          temporary file and renamed (never a partial file at OUT after a failed run), but a
                          power loss or OS crash in the next seconds can leave OUT empty or truncated. Saves
                          the final flush only; on the benchmark machine the disk is not the bottleneck and the
                          gain is within noise (bench/RESULTS.md)
  --json                  print the report as JSON
  -q, --quiet             no progress on stderr

Examples:
  lora-mix fuse --base sd15.safetensors lcm-lora-sdv1-5.safetensors:1.0 style.safetensors:0.8 -o sd15-lcm.safetensors
  lora-mix fuse --base sdxl-base/ lcm-lora-sdxl.safetensors -o sdxl-lcm/ --dtype f16
  lora-mix fuse --base sd15.safetensors lcm.safetensors:1 style.safetensors:unet=0.8,te=0.3 -o out.safetensors
  lora-mix fuse --base sd15.safetensors a.safetensors b.safetensors -o ties.safetensors --method ties --density 0.2
  lora-mix fuse --base sd15.safetensors lcm.safetensors -o /scratch/sd15-lcm.safetensors --no-fsync
  lora-mix verify --fused sd15-lcm.safetensors --base sd15.safetensors lcm-lora-sdv1-5.safetensors:1.0 style.safetensors:0.8`;

const DTYPES: Record<string, FuseDType> = {
  f32: 'F32',
  fp32: 'F32',
  float32: 'F32',
  f16: 'F16',
  fp16: 'F16',
  float16: 'F16',
  bf16: 'BF16',
  bfloat16: 'BF16',
};

export function parseFuseDtype(command: string, raw: unknown): FuseDType | undefined {
  if (raw === undefined) return undefined;
  const d = typeof raw === 'string' ? DTYPES[raw.toLowerCase()] : undefined;
  if (!d)
    throw new UsageError(`${command}: --dtype expects f32, f16 or bf16, got '${String(raw)}'`, 'USAGE_BAD_ARGUMENT');
  return d;
}

function fmtTime(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '--';
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, '0')}s` : `${s.toFixed(0)}s`;
}

/** Progress on stderr: a bar redrawn in place on a terminal (tensors, bytes, ETA), a line per quarter otherwise. */
export function fuseProgress(ctx: CliContext, label: string): { update: (p: FuseProgress) => void; end: () => void } {
  let last = -1;
  let lastDraw = 0;
  let drawn = false;
  return {
    update(p) {
      if (p.bytesTotal <= 0) return;
      const frac = Math.min(1, p.bytesDone / p.bytesTotal);
      if (ctx.isTTY) {
        const t = Date.now();
        if (t - lastDraw < 100 && p.tensorsDone !== p.tensorsTotal) return;
        lastDraw = t;
        const width = 28;
        const filled = Math.round(width * frac);
        const eta = frac > 0.02 ? (p.seconds * (1 - frac)) / frac : NaN;
        ctx.err(
          `\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${p.tensorsDone}/${p.tensorsTotal} tensors, ` +
            `${fmtBytes(p.bytesDone)}/${fmtBytes(p.bytesTotal)}, ETA ${fmtTime(eta)}   `,
        );
        drawn = true;
      } else {
        const q = Math.floor(frac * 4);
        if (q === last || q === 0) return;
        last = q;
        ctx.err(
          `${label}: ${p.tensorsDone}/${p.tensorsTotal} tensors, ${fmtBytes(p.bytesDone)}/${fmtBytes(p.bytesTotal)} (${p.seconds.toFixed(1)} s)\n`,
        );
      }
    },
    end() {
      if (drawn) ctx.err('\n');
    },
  };
}

const MAX_BLOCK_INPUTS = 16;

/** Weighted LoRA positionals with optional --blocks / --blocks-N, shared by fuse and verify. */
export function loraArgs(
  command: string,
  positionals: string[],
  values: Record<string, unknown>,
  cwd: string,
): { paths: string[]; weights: MergeWeight[] } {
  if (positionals.length === 0) {
    throw new UsageError(
      `${command}: expected at least one LoRA (FILE or FILE:WEIGHT). Run 'lora-mix ${command} --help' for usage.`,
    );
  }
  if (positionals.length > MAX_BLOCK_INPUTS) {
    throw new UsageError(`${command}: at most ${MAX_BLOCK_INPUTS} LoRAs at once`, 'USAGE_BAD_ARGUMENT');
  }
  for (let i = positionals.length + 1; i <= MAX_BLOCK_INPUTS; i++) {
    if (values[`blocks-${i}`] !== undefined) {
      throw new UsageError(
        `${command}: --blocks-${i} given but there are only ${positionals.length} LoRA(s)`,
        'USAGE_BAD_ARGUMENT',
      );
    }
  }
  const specs = positionals.map((p) => parseWeightedSpec(command, p, 1, cwd));
  const weights: MergeWeight[] = specs.map((s, i) => {
    const blocks = values[`blocks-${i + 1}`] ?? values.blocks;
    if (typeof blocks !== 'string' && !s.components) return s.weight;
    return { weight: s.weight, ...(typeof blocks === 'string' ? { blocks } : {}), ...(s.components ?? {}) };
  });
  return { paths: specs.map((s) => path.resolve(cwd, s.path)), weights };
}

export function blockOptions(): Record<string, { type: 'string' }> {
  const o: Record<string, { type: 'string' }> = { blocks: { type: 'string' } };
  for (let i = 1; i <= MAX_BLOCK_INPUTS; i++) o[`blocks-${i}`] = { type: 'string' };
  return o;
}

export const fuseCommand: Command = {
  name: 'fuse',
  summary: 'add weighted LoRAs into a base checkpoint (single file or diffusers folder), streaming',
  help: HELP,
  async run(argv: string[], ctx: CliContext): Promise<number> {
    const { values, positionals } = parseCommandArgs('fuse', argv, {
      base: { type: 'string' },
      output: { type: 'string', short: 'o' },
      device: { type: 'string' },
      dtype: { type: 'string' },
      'allow-unmatched': { type: 'boolean' },
      'on-overflow': { type: 'string' },
      'allow-nonfinite-base': { type: 'boolean' },
      'root-checkpoint': { type: 'string' },
      threads: { type: 'string' },
      'no-fsync': { type: 'boolean' },
      json: { type: 'boolean' },
      quiet: { type: 'boolean', short: 'q' },
      ...blockOptions(),
      ...methodFlagOptions(),
      ...STACK_OPTIONS,
    });
    if (typeof values.base !== 'string' || values.base === '') {
      throw new UsageError(
        "fuse: --base CKPT is required (the checkpoint to fuse into). Run 'lora-mix fuse --help' for usage.",
      );
    }
    if (typeof values.output !== 'string' || values.output === '') {
      throw new UsageError(
        "fuse: -o OUT is required (the fused checkpoint to write). Run 'lora-mix fuse --help' for usage.",
      );
    }
    const device = values.device ?? 'cpu';
    if (device !== 'cpu' && device !== 'gpu')
      throw new UsageError(`fuse: --device expects cpu or gpu, got '${String(device)}'`, 'USAGE_BAD_ARGUMENT');
    const onOverflow = values['on-overflow'] ?? 'error';
    if (onOverflow !== 'error' && onOverflow !== 'clamp') {
      throw new UsageError(
        `fuse: --on-overflow expects error or clamp, got '${String(onOverflow)}'`,
        'USAGE_BAD_ARGUMENT',
      );
    }
    const dtype = parseFuseDtype('fuse', values.dtype);
    const rootCheckpoint = values['root-checkpoint'];
    if (rootCheckpoint !== undefined && rootCheckpoint !== 'omit' && rootCheckpoint !== 'fuse') {
      throw new UsageError(
        `fuse: --root-checkpoint expects omit or fuse, got '${String(rootCheckpoint)}'`,
        'USAGE_BAD_ARGUMENT',
      );
    }
    const threads = numberOption('fuse', 'threads', values.threads, { min: 1, max: 64, integer: true });
    const stack = await stackArgs('fuse', values, positionals, ctx.cwd);
    const { paths, weights } = stack ?? loraArgs('fuse', positionals, values, ctx.cwd);
    const methodOptions = parseMethodFlags('fuse', values);
    const base = path.resolve(ctx.cwd, values.base);
    // Each LoRA is hashed from the fuse's own reads (the header is rewritten with the hashes at the end).
    const tap = tapReads(paths);
    const progress = values.quiet === true ? null : fuseProgress(ctx, 'fuse');
    let report;
    try {
      const provenance = await deferredProvenance(
        'fuse',
        ctx.cwd,
        paths.map((file, i) => ({ file, weight: weights[i] })),
        { device, onOverflow, ...(dtype ? { dtype } : {}), ...(methodOptions as object) },
        [{ file: base, role: 'base' }],
        tap.sha256,
      );
      report = await fuseLoras(base, paths, weights, {
        out: path.resolve(ctx.cwd, values.output),
        metadata: provenance.metadata,
        lateMetadata: provenance.late,
        ...(methodOptions as object),
        device,
        onOverflow,
        ...(dtype ? { dtype } : {}),
        ...(threads !== undefined ? { threads } : {}),
        ...(values['allow-unmatched'] === true ? { allowUnmatched: true } : {}),
        ...(values['allow-nonfinite-base'] === true ? { allowNonfiniteBase: true } : {}),
        ...(rootCheckpoint ? { rootCheckpoint } : {}),
        ...(values['no-fsync'] === true ? { fsync: false } : {}),
        ...(progress ? { onProgress: progress.update } : {}),
      });
    } finally {
      progress?.end();
      await tap.close();
    }
    if (values.json === true) {
      ctx.out(
        `${JSON.stringify(stack ? { ...report, stack: { source: stack.source, entries: stack.entries, warnings: stack.warnings } } : report, null, 2)}\n`,
      );
    } else {
      ctx.out(`${stack ? `${describeStack(stack, ctx.cwd).join('\n')}\n` : ''}${formatFuseReport(report)}`);
    }
    for (const w of stack?.warnings ?? []) ctx.err(`lora-mix fuse: warning: ${w}\n`);
    return 0;
  },
};
