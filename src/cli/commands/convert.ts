import * as path from 'node:path';
import { UsageError } from '../../core/errors.js';
import {
  describeLora,
  loadLora,
  type LoadedLora,
  parseOutputDType,
  saveLora,
  type KohyaPaths,
  type OutputDType,
} from '../../formats/index.js';
import { ARCH_LABEL, parseArch } from '../../layout/index.js';
import { numberOption, parseCommandArgs, parseWeightedSpec } from '../args.js';
import { convertedMetadata } from '../../lora/convert.js';
import { exactShapeModule } from '../../lora/convert-module.js';
import { mergeLoras, type MergeWeight } from '../../lora/merge.js';
import { convertLoraParallel, convertStreaming } from '../../node/convert-stream.js';
import { resolveBaseTermsThreaded } from '../../node/delta-pool.js';
import { describeComponents } from '../../lora/components.js';
import { formatConversionReport, type ConversionReport } from '../../lora/conversion-report.js';
import { termLabel } from '../../lora/terms/index.js';
import type { Lora, Term } from '../../lora/types.js';
import { progressReporter } from './merge.js';
import type { CliContext, Command } from '../context.js';
import { cliProvenance, type ReadTap, tapReads } from '../provenance.js';

const HELP = `Usage: lora-mix convert IN[:W] -o OUT --to kohya|peft [--kohya-paths diffusers|sgm] [--dtype fp16|bf16|fp32]
                        [--rank K | --min-energy E] [--base CKPT] [--arch sd15|sdxl|ssd1b] [--allow-unmatched]
                        [--threads N] [--json] [-q]

Rewrite a LoRA in another spelling without changing what it does: every module's factors and alpha are kept,
so the delta (alpha / rank) · up · down of every module is the same (exactly the same bytes when the dtype is
kept; one rounding when --dtype changes it).

IN may be any spelling lora-mix reads: kohya (lora_unet_… with diffusers or SGM paths, lora_te_, lora_te1_,
lora_te2_), PEFT / diffusers (unet.….lora_A.weight, with or without base_model.model.), or the old diffusers
attention-processor format. The architecture is detected from names and shapes.

Adapter files (LyCORIS LoCon with Tucker cores, LoHa, LoKr, full diffs; DoRA, GLoRA, OFT, BOFT with --base) become plain
LoRAs: exact without a rank cap (each module's exact factors: Khatri–Rao for LoHa, Kronecker of the factors for
LoKr, the dense delta where that is smaller). With --rank K / --min-energy E every module is written as the
optimal approximation of its exact delta (Eckart–Young: its SVD computed from the factors, or for a large exact
rank such as a LoHa's r1·r2 the dense delta's randomized SVD, within about 0.1 % of the optimal error), and the
report gives per module the relative error ‖Δ − Δ_k‖/‖Δ‖ and the norm kept ‖Δ_k‖/‖Δ‖, then their mean and worst.

IN:W (a number, or per-component strengths unet=0.8,te=0.5 with te1= / te2= for SDXL's two text encoders) writes
W·τ instead — the strengths baked into the factors (up scaled, alpha = rank), exact; a component at 0 is left out.

Options:
  -o, --output OUT        the file to write (never the input; written to a temp file, then renamed)
  --to kohya|peft         kohya: .lora_down/.lora_up/.alpha per module; peft: .lora_A/.lora_B with the
                          alphas in the 'lora_adapter_metadata' JSON (r, lora_alpha, rank/alpha patterns)
  --kohya-paths P         UNet names in kohya output: diffusers (default; what LCM-LoRA files use,
                          lora_unet_down_blocks_…) or sgm (lora_unet_input_blocks_…, what kohya writes for SDXL)
  --dtype D               fp16, bf16 or fp32 (default: the input's dtype)
  --arch A                treat the input as this architecture instead of detecting it
  --rank K                write every module at most rank K, the best rank-K approximation (modules whose
                          exact rank is ≤ K stay exact)
  --min-energy E          per module, the smallest rank keeping ‖Δ_k‖/‖Δ‖ ≥ E (0 < E ≤ 1); with --rank, K caps it
  --threads N             worker threads, each converting one module at a time (default: one per core)
  -q, --quiet             no progress on stderr
  --base CKPT             the base checkpoint (file or diffusers folder) for DoRA, GLoRA, OFT and BOFT modules,
                          whose delta depends on the base weights; only those modules' weights are read
  --allow-unmatched       with --arch: drop modules the architecture lacks (e.g. an SDXL LoRA for SSD-1B)
  --json                  print the result as JSON

Examples:
  lora-mix convert pytorch_lora_weights.safetensors -o lcm-kohya.safetensors --to kohya
  lora-mix convert style.safetensors:unet=0.8,te=0 -o style-unet.safetensors --to kohya   (bakes the strengths in)
  lora-mix convert style_sdxl.safetensors -o style_peft.safetensors --to peft
  lora-mix convert loha.safetensors -o loha-as-lora.safetensors --to kohya              (exact)
  lora-mix convert loha.safetensors -o loha-r16.safetensors --to kohya --rank 16 --json  (optimal rank 16)
  lora-mix convert dora.safetensors -o dora-lora.safetensors --to kohya --base sd15.safetensors --min-energy 0.95
  lora-mix convert lcm-lora-sdxl.safetensors -o lcm-sgm.safetensors --to kohya --kohya-paths sgm --dtype fp16
  lora-mix convert lcm-lora-sdxl.safetensors -o lcm-ssd1b.safetensors --to kohya --arch ssd1b --allow-unmatched`;

function choice<T extends string>(option: string, raw: unknown, allowed: readonly T[]): T | undefined {
  if (raw === undefined) return undefined;
  if (typeof raw === 'string' && (allowed as readonly string[]).includes(raw)) return raw as T;
  throw new UsageError(
    `convert: --${option} expects ${allowed.join(' or ')}, got '${String(raw)}'`,
    'USAGE_BAD_ARGUMENT',
  );
}

export const convertCommand: Command = {
  name: 'convert',
  summary: 'rewrite a LoRA as kohya or PEFT (same deltas), optionally in another dtype',
  help: HELP,
  async run(argv: string[], ctx: CliContext): Promise<number> {
    // The input is hashed (provenance) from the conversion's own reads.
    const tap = tapReads();
    try {
      return await runConvert(argv, ctx, tap);
    } finally {
      await tap.close();
    }
  },
};

async function runConvert(argv: string[], ctx: CliContext, tap: ReadTap): Promise<number> {
  const { values, positionals } = parseCommandArgs('convert', argv, {
    output: { type: 'string', short: 'o' },
    to: { type: 'string' },
    'kohya-paths': { type: 'string' },
    dtype: { type: 'string' },
    arch: { type: 'string' },
    'allow-unmatched': { type: 'boolean' },
    base: { type: 'string' },
    rank: { type: 'string' },
    'min-energy': { type: 'string' },
    threads: { type: 'string' },
    quiet: { type: 'boolean', short: 'q' },
    json: { type: 'boolean' },
  });
  if (positionals.length !== 1) {
    throw new UsageError(
      `convert: expected one input file, got ${positionals.length === 0 ? 'none' : positionals.join(' ')}. Run 'lora-mix convert --help' for usage.`,
    );
  }
  if (typeof values.output !== 'string' || values.output === '') {
    throw new UsageError("convert: -o OUT is required (the file to write). Run 'lora-mix convert --help' for usage.");
  }
  const to = choice('to', values.to, ['kohya', 'peft'] as const);
  if (!to) throw new UsageError("convert: --to kohya|peft is required. Run 'lora-mix convert --help' for usage.");
  const kohyaPaths = choice<KohyaPaths>('kohya-paths', values['kohya-paths'], ['diffusers', 'sgm']);
  if (kohyaPaths && to !== 'kohya')
    throw new UsageError('convert: --kohya-paths applies only to --to kohya', 'USAGE_BAD_ARGUMENT');
  let dtype: OutputDType | undefined;
  if (values.dtype !== undefined) {
    dtype = parseOutputDType(String(values.dtype));
    if (!dtype)
      throw new UsageError(
        `convert: --dtype expects fp16, bf16 or fp32, got '${String(values.dtype)}'`,
        'USAGE_BAD_ARGUMENT',
      );
  }
  if (values['allow-unmatched'] === true && values.arch === undefined) {
    throw new UsageError(
      `convert: --allow-unmatched needs --arch (the architecture whose modules are kept); without it nothing says which modules to drop. Run 'lora-mix convert --help' for usage.`,
      'USAGE_BAD_ARGUMENT',
    );
  }
  const rank = numberOption('convert', 'rank', values.rank, { min: 1, integer: true });
  const minEnergy = numberOption('convert', 'min-energy', values['min-energy'], { max: 1 });
  if (minEnergy !== undefined && !(minEnergy > 0)) {
    throw new UsageError(
      `convert: --min-energy expects a fraction in (0, 1], got '${String(values['min-energy'])}'`,
      'USAGE_BAD_ARGUMENT',
    );
  }
  const threads = numberOption('convert', 'threads', values.threads, { min: 1, max: 256, integer: true });
  const arch = typeof values.arch === 'string' ? parseArch(values.arch) : undefined;
  const spec = parseWeightedSpec('convert', positionals[0]!, 1, ctx.cwd);
  const input = path.resolve(ctx.cwd, spec.path);
  const output = path.resolve(ctx.cwd, values.output);

  tap.want([input]);
  const decode = {
    ...(arch ? { arch } : {}),
    ...(values['allow-unmatched'] === true ? { allowUnmatched: true } : {}),
  };
  // IN:W or IN:unet=…,te=…: the written LoRA is W·τ (per component), exact (rank unchanged); a component
  // at weight 0 is left out.
  const weighted = spec.components !== undefined || spec.weight !== 1;
  const weight: MergeWeight = spec.components ? { weight: spec.weight, ...spec.components } : spec.weight;
  const target = {
    ...(rank !== undefined ? { rank } : {}),
    ...(minEnergy !== undefined ? { minEnergy } : {}),
  };
  const capped = rank !== undefined || minEnergy !== undefined;
  const progress = values.quiet === true ? null : progressReporter(ctx, 'convert');
  const provenanceOf = () =>
    cliProvenance(
      'convert',
      ctx.cwd,
      [
        {
          file: input,
          ...(weighted ? { weight: spec.components ? { weight: spec.weight, ...spec.components } : spec.weight } : {}),
        },
      ],
      { format: to, ...(kohyaPaths ? { kohyaPaths } : {}), ...(dtype ? { dtype } : {}), ...target },
      [],
      tap.sha256,
    );
  const saveOptions = {
    format: to,
    ...(kohyaPaths ? { kohyaPaths } : {}),
    ...(dtype ? { dtype } : {}),
    refuseOverwrite: [input],
  };
  // Module by module on worker threads, memory bounded (src/node/convert-stream.ts); files that need --base, weights,
  // norm differences or embeddings are converted in memory — the same per-module function, the same bytes.
  const streamed =
    weighted || typeof values.base === 'string'
      ? null
      : await convertStreaming(input, output, {
          ...(capped ? { target } : {}),
          ...(threads !== undefined ? { threads } : {}),
          ...(progress ? { onProgress: progress.update } : {}),
          decode,
        });
  let lora: LoadedLora;
  let parameters: number;
  let written: number;
  let reduction: ConversionReport | undefined;
  let result: Awaited<ReturnType<typeof saveLora>>;
  try {
    if (streamed) {
      lora = streamed.lora;
      parameters = describeLora(streamed.plan).parameters;
      written = streamed.lora.modules.size;
      if (streamed.report) reduction = streamed.report;
      result = await streamed.save(output, { ...saveOptions, metadata: await provenanceOf() });
    } else {
      const loaded = await loadLora(input, decode);
      // DoRA / GLoRA / OFT / BOFT modules become their exact dense deltas against the base (LORA_NEEDS_BASE
      // without --base), computed on worker threads (src/node/delta-pool.ts).
      lora =
        typeof values.base === 'string'
          ? await resolveBaseTermsThreaded(loaded, path.resolve(ctx.cwd, values.base), threads)
          : loaded;
      parameters = describeLora(lora).parameters;
      // The exact conversion's record and the written dims (each term's exact factor shapes); a capped conversion
      // gets both from convertLoraParallel, from the input's metadata.
      const merged = weighted ? mergeLoras([lora], [weight]).lora : null;
      let toWrite: Lora<Term> = {
        ...(merged ?? lora),
        metadata: capped
          ? lora.metadata
          : convertedMetadata(
              lora.metadata,
              undefined,
              merged ? merged.modules.values() : [...lora.modules].map(([p, t]) => exactShapeModule(t, p)),
            ),
      };
      if (capped) {
        const converted = await convertLoraParallel(toWrite, target, {
          ...(threads !== undefined ? { threads } : {}),
          ...(progress ? { onProgress: progress.update } : {}),
        });
        toWrite = converted.lora;
        if (converted.report) reduction = relabel(converted.report, loaded);
      }
      written = toWrite.modules.size;
      result = await saveLora(toWrite, output, { ...saveOptions, metadata: await provenanceOf() });
    }
  } finally {
    progress?.end();
    await streamed?.dispose();
  }
  const outDtype =
    dtype ?? (lora.dtype === 'F16' || lora.dtype === 'BF16' || lora.dtype === 'F32' ? lora.dtype : 'F32');
  const report = {
    input: positionals[0]!,
    output: values.output,
    from: { format: lora.format, ...(lora.kohyaPaths ? { kohyaPaths: lora.kohyaPaths } : {}), dtype: lora.dtype },
    to: { format: to, ...(to === 'kohya' ? { kohyaPaths: kohyaPaths ?? 'diffusers' } : {}), dtype: outDtype },
    arch: lora.arch,
    size: lora.size,
    modules: written,
    ...(weighted ? { weight: spec.components ? describeComponents({ ...spec.components }) : spec.weight } : {}),
    parameters,
    bytes: result.byteLength,
    unmatched: lora.unmatched,
    flushedToZero: result.stats.flushedToZero,
    notes: lora.notes,
    ...(reduction ? { reduction } : {}),
  };
  if (values.json === true) {
    ctx.out(`${JSON.stringify(report, null, 2)}\n`);
  } else {
    const spell = (f: { format: string; kohyaPaths?: string }) =>
      f.kohyaPaths ? `${f.format} (${f.kohyaPaths} paths)` : f.format;
    ctx.out(
      `${[
        `${report.input} → ${report.output}`,
        `  ${spell(report.from)} ${report.from.dtype} → ${spell(report.to)} ${report.to.dtype}`,
        `  ${ARCH_LABEL[lora.arch]}${lora.size === 'tiny' ? ' (tiny)' : ''}, ${report.modules} modules, ${report.parameters.toLocaleString('en-US')} parameters, ${result.byteLength.toLocaleString('en-US')} bytes written`,
        ...(lora.unmatched.length > 0
          ? [
              `  ${lora.unmatched.length} module(s)/key(s) of the input not written (not in ${ARCH_LABEL[lora.arch]}), e.g. ${lora.unmatched[0]!.key}`,
            ]
          : []),
        ...lora.notes.map((n) => `  note: ${n}`),
        ...(reduction ? formatConversionReport(reduction) : []),
      ].join('\n')}\n`,
    );
  }
  if (result.stats.flushedToZero > 0) {
    ctx.err(
      `lora-mix convert: warning: ${result.stats.flushedToZero} non-zero factor value(s) became 0 in ${outDtype} (too small for the format); --dtype fp32 or bf16 keeps them\n`,
    );
  }
  return 0;
}

/** The report with each module's kind as the input file has it (a weighted input's modules are plain by then). */
function relabel(report: ConversionReport, input: Lora<Term>): ConversionReport {
  return {
    ...report,
    modules: report.modules.map((m) => {
      const t = input.modules.get(m.path);
      return { ...m, kind: t ? termLabel(t) : m.kind };
    }),
  };
}

export const command: Command = convertCommand;
