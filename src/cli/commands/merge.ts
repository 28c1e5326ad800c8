import * as path from 'node:path';
import { UsageError } from '../../core/errors.js';
import { parseOutputDType, type KohyaPaths, type OutputDType } from '../../formats/index.js';
import { ARCH_LABEL, parseArch } from '../../layout/index.js';
import type { MergeReport, MergeWeight } from '../../lora/index.js';
import { mergeLoraFiles } from '../../node/merge-files.js';
import { numberOption, parseCommandArgs, parseWeightedSpec } from '../args.js';
import { describeComponents } from '../../lora/components.js';
import { methodFlagOptions, methodHelpLines, parseMethodFlags } from '../method-flags.js';
import { describeStack, STACK_HELP, STACK_OPTIONS, stackArgs } from '../stack-args.js';
import type { CliContext, Command } from '../context.js';
import { cliProvenance, type ReadTap, tapReads } from '../provenance.js';

/** Per-input block options --blocks-1 … --blocks-MAX. */
const MAX_BLOCK_INPUTS = 16;

const HELP = `Usage: lora-mix merge A.safetensors[:W] B.safetensors[:W] [C[:W] …] -o OUT
       lora-mix merge (--prompt "<lora:NAME:W> …" | --comfy-workflow FILE) --lora-dir DIR -o OUT
                      [--rank K | --min-energy E] [--method M [--density D] [--majority-sign S]
                      [--seed N] [--t T]] [--blocks SPEC] [--blocks-N SPEC]
                      [--format kohya|peft] [--kohya-paths diffusers|sgm] [--dtype fp16|bf16|fp32]
                      [--arch sd15|sdxl|ssd1b] [--allow-unmatched] [--threads N] [--json] [-q]

Write the weighted sum τ = W_A·τ_A + W_B·τ_B + … of LoRAs as one LoRA. W defaults to 1 and may be negative;
it may also be per-component strengths, unet=0.8,te=0.5 (te = both text encoders, te1= / te2= separately; a
component not named keeps 1).

By default the sum is exact: every module's factors are concatenated along the rank axis
(up = [W_A·s_A·up_A | W_B·s_B·up_B | …], down = [down_A; down_B; …], alpha = rank, s = alpha / rank), so its
delta is exactly Σ W·delta for any ranks and alphas, and the rank grows to the sum of the input ranks.
--rank / --min-energy instead write the best approximation of a smaller rank (Eckart–Young, from the factors,
never clipped), and the summary says how much of each module's delta is kept.
--method picks another way to combine the inputs (TIES, DARE, magnitude pruning, SLERP: PEFT's semantics on each
module's dense task tensors, one module at a time); those methods need --rank K and write the optimal rank-K
factors of their result (within 0.1% of the Eckart–Young error), reporting the norm kept per module.

Options:
  -o, --output OUT        the file to write (never one of the inputs; temp file, then rename)
  --rank K                reduce every module to at most rank K (modules already ≤ K stay exact)
  --min-energy E          per module, the smallest rank keeping a fraction E (0 < E ≤ 1) of the delta's
                          Frobenius norm, ‖Δ_k‖ / ‖Δ‖ ≥ E; with --rank, K caps it
${methodHelpLines()}
${STACK_HELP}
  --blocks SPEC           per-block multipliers for every input, e.g. "IN04=0,OUT05=0.5" (other blocks 1) or
                          a vector of 26/17 values (SD1.5) or 20/12 values (SDXL, SSD-1B) in LoRA Block Weight
                          order; BASE is the text encoder(s), M00 (or MID) the middle block
  --blocks-N SPEC         the same for input N only (1-based), replacing --blocks for it
  --format kohya|peft     output spelling (default kohya)
  --kohya-paths P         kohya UNet names: diffusers (default) or sgm
  --dtype D               fp16, bf16 or fp32 (default: the inputs' dtype when they agree, else fp32);
                          the arithmetic runs in f32/f64 and the factors are rounded to D only when written
  --arch A                read every input as this architecture instead of detecting it
  --base CKPT             the base checkpoint (file or diffusers folder) for DoRA, GLoRA, OFT and BOFT modules,
                          whose delta depends on the base weights; only those modules' weights are read
  --allow-unmatched       with --arch: drop modules the architecture lacks (e.g. SDXL LoRAs for SSD-1B)
  --threads N             worker threads for --rank / --min-energy (default: one per core; 1 = no workers)
  --json                  print the summary and the per-module report as JSON
  -q, --quiet             no progress on stderr (warnings and errors are still printed)

Examples:
  lora-mix merge lcm-lora-sdxl.safetensors:1.0 papercut.safetensors:0.8 -o lcm-papercut.safetensors
  lora-mix merge lcm.safetensors:1 style.safetensors:unet=0.8,te=0.3 -o out.safetensors
  lora-mix merge lcm.safetensors style.safetensors:0.8 -o out.safetensors --rank 64
  lora-mix merge a.safetensors:1 b.safetensors:-0.3 -o diff.safetensors --min-energy 0.99 --format peft
  lora-mix merge lcm.safetensors style.safetensors:0.8 -o out.safetensors --blocks-2 "IN04=0,OUT05=0.5"
  lora-mix merge a.safetensors b.safetensors -o ties.safetensors --method ties --density 0.2 --rank 64
  lora-mix merge a.safetensors b.safetensors -o dare.safetensors --method dare_ties --density 0.3 --seed 7 --rank 32
  lora-mix merge a.safetensors b.safetensors -o slerp.safetensors --method slerp --t 0.3 --rank 64
  lora-mix merge --prompt "<lora:lcm:1> <lora:style:0.8:0.5>" --lora-dir models/Lora -o stack.safetensors
  lora-mix merge --comfy-workflow workflow.json --lora-dir models/loras -o stack.safetensors`;

function choice<T extends string>(option: string, raw: unknown, allowed: readonly T[]): T | undefined {
  if (raw === undefined) return undefined;
  if (typeof raw === 'string' && (allowed as readonly string[]).includes(raw)) return raw as T;
  throw new UsageError(
    `merge: --${option} expects ${allowed.join(' or ')}, got '${String(raw)}'`,
    'USAGE_BAD_ARGUMENT',
  );
}

/** A progress reporter: a redrawn bar on a terminal, a line per quarter otherwise. */
export function progressReporter(
  ctx: CliContext,
  label: string,
): { update: (done: number, total: number) => void; end: () => void } {
  let lastShown = -1;
  let drawn = false;
  return {
    update(done, total) {
      if (total <= 0) return;
      if (ctx.isTTY) {
        const pct = Math.floor((100 * done) / total);
        if (pct === lastShown && done !== total) return;
        lastShown = pct;
        const width = 30;
        const filled = Math.round((width * done) / total);
        ctx.err(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} modules`);
        drawn = true;
      } else {
        const quarter = Math.floor((4 * done) / total);
        if (quarter === lastShown || quarter === 0) return;
        lastShown = quarter;
        ctx.err(`${label}: ${done}/${total} modules\n`);
      }
    },
    end() {
      if (drawn) ctx.err('\n');
      drawn = false;
    },
  };
}

function describeRanks(r: MergeReport['rankBefore']): string {
  return r.min === r.max ? String(r.min) : `${r.min}–${r.max} (mean ${r.mean.toFixed(1)})`;
}

export const mergeCommand: Command = {
  name: 'merge',
  summary: 'weighted sum of LoRAs (exact by default; optional optimal rank reduction, block weights)',
  help: HELP,
  async run(argv: string[], ctx: CliContext): Promise<number> {
    // Each input is hashed (provenance) from the merge's own reads.
    const tap = tapReads();
    try {
      return await runMerge(argv, ctx, tap);
    } finally {
      await tap.close();
    }
  },
};

async function runMerge(argv: string[], ctx: CliContext, tap: ReadTap): Promise<number> {
  const blockOptions: Record<string, { type: 'string' }> = {};
  for (let i = 1; i <= MAX_BLOCK_INPUTS; i++) blockOptions[`blocks-${i}`] = { type: 'string' };
  const { values, positionals } = parseCommandArgs('merge', argv, {
    output: { type: 'string', short: 'o' },
    rank: { type: 'string' },
    'min-energy': { type: 'string' },
    blocks: { type: 'string' },
    ...blockOptions,
    ...methodFlagOptions(),
    ...STACK_OPTIONS,
    format: { type: 'string' },
    'kohya-paths': { type: 'string' },
    dtype: { type: 'string' },
    arch: { type: 'string' },
    'allow-unmatched': { type: 'boolean' },
    base: { type: 'string' },
    threads: { type: 'string' },
    json: { type: 'boolean' },
    quiet: { type: 'boolean', short: 'q' },
  });
  if (typeof values.output !== 'string' || values.output === '') {
    throw new UsageError("merge: -o OUT is required (the file to write). Run 'lora-mix merge --help' for usage.");
  }
  const stack = await stackArgs('merge', values, positionals, ctx.cwd);
  if (!stack && positionals.length === 0) {
    throw new UsageError(
      "merge: expected at least one input LoRA (FILE or FILE:WEIGHT), or --prompt / --comfy-workflow with --lora-dir. Run 'lora-mix merge --help' for usage.",
    );
  }
  if (
    stack &&
    (values.blocks !== undefined || Object.keys(values).some((k) => /^blocks-\d+$/.test(k) && values[k] !== undefined))
  ) {
    throw new UsageError(
      'merge: --blocks does not combine with --prompt / --comfy-workflow (use lbw= in the prompt)',
      'USAGE_BAD_ARGUMENT',
    );
  }
  const rank = numberOption('merge', 'rank', values.rank, { min: 1, integer: true });
  const minEnergy = numberOption('merge', 'min-energy', values['min-energy'], { max: 1 });
  if (minEnergy !== undefined && !(minEnergy > 0)) {
    throw new UsageError(
      `merge: --min-energy expects a fraction in (0, 1], got '${String(values['min-energy'])}'`,
      'USAGE_BAD_ARGUMENT',
    );
  }
  const threads = numberOption('merge', 'threads', values.threads, { min: 1, max: 256, integer: true });
  const methodOptions = parseMethodFlags('merge', values);
  const format = choice('format', values.format, ['kohya', 'peft'] as const) ?? 'kohya';
  const kohyaPaths = choice<KohyaPaths>('kohya-paths', values['kohya-paths'], ['diffusers', 'sgm']);
  if (kohyaPaths && format !== 'kohya')
    throw new UsageError('merge: --kohya-paths applies only to --format kohya', 'USAGE_BAD_ARGUMENT');
  let dtype: OutputDType | undefined;
  if (values.dtype !== undefined) {
    dtype = parseOutputDType(String(values.dtype));
    if (!dtype)
      throw new UsageError(
        `merge: --dtype expects fp16, bf16 or fp32, got '${String(values.dtype)}'`,
        'USAGE_BAD_ARGUMENT',
      );
  }
  for (let i = positionals.length + 1; i <= MAX_BLOCK_INPUTS; i++) {
    if (values[`blocks-${i}`] !== undefined) {
      throw new UsageError(
        `merge: --blocks-${i} given but there are only ${positionals.length} input(s)`,
        'USAGE_BAD_ARGUMENT',
      );
    }
  }
  if (values['allow-unmatched'] === true && values.arch === undefined) {
    throw new UsageError(
      `merge: --allow-unmatched needs --arch (the architecture whose modules are kept); without it nothing says which modules to drop. Run 'lora-mix merge --help' for usage.`,
      'USAGE_BAD_ARGUMENT',
    );
  }
  const arch = typeof values.arch === 'string' ? parseArch(values.arch) : undefined;
  const specs = stack
    ? stack.entries.map((e) => ({
        path: path.relative(ctx.cwd, e.file) || e.file,
        weight: e.unet === e.te ? e.unet : 1,
        ...(e.unet === e.te ? {} : { components: { unet: e.unet, te: e.te } }),
      }))
    : positionals.map((p) => parseWeightedSpec('merge', p, 1, ctx.cwd));
  const inputs = stack ? stack.paths : specs.map((s) => path.resolve(ctx.cwd, s.path));
  const output = path.resolve(ctx.cwd, values.output);

  const base = typeof values.base === 'string' ? path.resolve(ctx.cwd, values.base) : undefined;
  const weights: MergeWeight[] = specs.map((s, i) => {
    if (stack) return stack.weights[i] ?? 1;
    const blocks = values[`blocks-${i + 1}`] ?? values.blocks;
    if (typeof blocks !== 'string' && !s.components) return s.weight;
    return { weight: s.weight, ...(typeof blocks === 'string' ? { blocks } : {}), ...(s.components ?? {}) };
  });
  const progress =
    values.quiet === true ? { update: () => undefined, end: () => undefined } : progressReporter(ctx, 'merge');
  // The API call does the work (streamed module by module when it reduces, else in memory); the CLI adds the
  // provenance, hashed from the merge's own reads, once the output dtype is known.
  tap.want(inputs);
  let result: Awaited<ReturnType<typeof mergeLoraFiles>>;
  try {
    result = await mergeLoraFiles(inputs, weights, output, {
      ...methodOptions,
      ...(threads !== undefined ? { threads } : {}),
      ...(rank !== undefined ? { rank } : {}),
      ...(minEnergy !== undefined ? { minEnergy } : {}),
      ...(arch ? { arch } : {}),
      ...(values['allow-unmatched'] === true ? { allowUnmatched: true } : {}),
      ...(base !== undefined ? { base } : {}),
      onProgress: progress.update,
      format,
      ...(kohyaPaths ? { kohyaPaths } : {}),
      ...(dtype ? { dtype } : {}),
      metadata: ({ dtype: outDtype }) => {
        progress.end();
        return cliProvenance(
          'merge',
          ctx.cwd,
          inputs.map((file, i) => ({ file, weight: weights[i] })),
          {
            format,
            ...(kohyaPaths ? { kohyaPaths } : {}),
            dtype: outDtype,
            ...(rank !== undefined ? { rank } : {}),
            ...(minEnergy !== undefined ? { minEnergy } : {}),
            ...methodOptions,
          },
          [],
          tap.sha256,
        );
      },
    });
  } finally {
    progress.end();
  }
  const { report, seconds, stats, byteLength, dtype: outDtype, inputs: loras } = result;
  const lora = { arch: result.arch, size: result.size };
  const written = { byteLength, stats };

  const inputList = specs.map((s, i) => ({
    file: s.path,
    weight: s.weight,
    ...(s.components ? { components: describeComponents(s.components) } : {}),
    ...(typeof (values[`blocks-${i + 1}`] ?? values.blocks) === 'string'
      ? { blocks: String(values[`blocks-${i + 1}`] ?? values.blocks) }
      : {}),
    format: loras[i]!.format,
    dtype: loras[i]!.dtype,
    modules: loras[i]!.modules.size,
  }));
  if (values.json === true) {
    ctx.out(
      `${JSON.stringify(
        {
          output: values.output,
          format,
          ...(format === 'kohya' ? { kohyaPaths: kohyaPaths ?? 'diffusers' } : {}),
          dtype: outDtype,
          arch: lora.arch,
          size: lora.size,
          inputs: inputList,
          ...(stack
            ? {
                stack: {
                  source: stack.source,
                  entries: stack.entries.map((e) => ({
                    origin: e.origin,
                    name: e.name,
                    file: path.relative(ctx.cwd, e.file) || e.file,
                    unet: e.unet,
                    te: e.te,
                    ...(e.lbw !== undefined ? { lbw: e.lbw } : {}),
                    ...(e.dyn !== undefined ? { dyn: e.dyn } : {}),
                  })),
                  warnings: stack.warnings,
                },
              }
            : {}),
          options: {
            ...methodOptions,
            ...(rank !== undefined ? { rank } : {}),
            ...(minEnergy !== undefined ? { minEnergy } : {}),
          },
          bytes: written.byteLength,
          flushedToZero: written.stats.flushedToZero,
          seconds,
          report,
        },
        null,
        2,
      )}\n`,
    );
  } else {
    const lines = [
      `merged ${loras.length} LoRA(s) → ${values.output} (${format}${format === 'kohya' ? `, ${kohyaPaths ?? 'diffusers'} paths` : ''}, ${outDtype})`,
      ...(stack ? describeStack(stack, ctx.cwd) : []),
      ...inputList.map(
        (x) =>
          `  ${x.components ? `(${x.components})` : `${x.weight >= 0 ? '+' : '−'}${Math.abs(x.weight)}`} × ${x.file}${x.blocks ? ` [blocks ${x.blocks}]` : ''} (${x.modules} modules, ${x.format} ${x.dtype})`,
      ),
      `  ${ARCH_LABEL[lora.arch]}${lora.size === 'tiny' ? ' (tiny)' : ''}: ${report.written} modules written` +
        (report.dropped.length > 0 ? `, ${report.dropped.length} dropped (zero weight or zero delta)` : ''),
      `  rank ${describeRanks(report.rankBefore)} → ${describeRanks(report.rankAfter)}` +
        (report.exact ? ' (exact sum)' : ''),
    ];
    if (!report.exact) {
      lines.push(
        `  norm kept ‖Δ_k‖/‖Δ‖: mean ${report.meanNormKept.toFixed(4)}, min ${report.minNormKept.toFixed(4)}; ` +
          `relative error ‖Δ − Δ_k‖/‖Δ‖ over all reduced modules ${report.relativeError.toExponential(3)}`,
      );
      const worst = [...report.modules]
        .filter((m) => !m.dropped && m.normKept < 1)
        .sort((a, b) => a.normKept - b.normKept)
        .slice(0, 3);
      for (const m of worst)
        lines.push(`    lowest: ${m.path} rank ${m.rankBefore} → ${m.rankAfter}, norm kept ${m.normKept.toFixed(4)}`);
    }
    lines.push(
      `  ${written.byteLength.toLocaleString('en-US')} bytes; time ${seconds.total.toFixed(2)} s ` +
        `(load ${seconds.load.toFixed(2)} s, merge ${seconds.merge.toFixed(2)} s, write ${seconds.write.toFixed(2)} s)`,
    );
    ctx.out(`${lines.join('\n')}\n`);
  }
  for (const w of stack?.warnings ?? []) ctx.err(`lora-mix merge: warning: ${w}\n`);
  if (written.stats.flushedToZero > 0) {
    ctx.err(
      `lora-mix merge: warning: ${written.stats.flushedToZero} non-zero factor value(s) became 0 in ${outDtype} ` +
        '(too small for the format); --dtype fp32 or bf16 keeps them\n',
    );
  }
  return 0;
}

export const command: Command = mergeCommand;
