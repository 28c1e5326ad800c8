import * as path from 'node:path';
import { UsageError } from '../../core/errors.js';
import { loadLora, parseOutputDType, saveLora, type OutputDType } from '../../formats/index.js';
import { kohyaResize, type ResizeRule } from '../../lora/resize.js';
import { numberOption, parseCommandArgs } from '../args.js';
import { cliProvenance } from '../provenance.js';
import type { CliContext, Command } from '../context.js';
import { progressReporter } from './merge.js';

const HELP = `Usage: lora-mix resize IN -o OUT (--rank K | --sv-ratio X | --sv-fro X | --sv-cumulative X) [--max-rank K]
                      [--dtype fp16|bf16|fp32] [--format kohya|peft] [--json] [-q]

Change the rank of every module of a LoRA the way kohya's resize_lora.py does, with its rules for a per-module
(dynamic) rank chosen on the module's singular values S (of up·down, computed from the factors: no dense SVD):

  --rank K            every module to rank min(K, its rank)
  --sv-ratio X        keep the values above S_0 / X; rank = that count + 1 (kohya's index + 1)
  --sv-fro X          the smallest rank whose ‖·‖_F reaches X of the delta's, + 1 (0 < X ≤ 1)
  --sv-cumulative X   the smallest rank whose Σ S reaches X of the total, + 1 (0 < X ≤ 1)
  --max-rank K        never above K (kohya's --new_rank; kohya's default there is 4, lora-mix has none)

As in kohya, the dynamic rank is at least 2 (1 for a zero module) and the written delta is exactly the best rank-k
approximation of the module's delta (alpha = (alpha/r)·k keeps the scale); lora-mix never goes above a module's
own rank. The report gives kohya's per-module figures — Σ S kept, Frobenius norm kept, S_0/S_(k−1) — and the mean,
standard deviation and range of the Frobenius norm kept.

Options:
  -o, --output OUT        the file to write (never the input)
  --dtype D               fp16, bf16 or fp32 (default: the input's dtype)
  --format kohya|peft     output spelling (default kohya)
  --json                  print the report as JSON
  -q, --quiet             no progress on stderr

Examples:
  lora-mix resize style.safetensors -o style-r16.safetensors --rank 16
  lora-mix resize style.safetensors -o style-dyn.safetensors --sv-fro 0.9 --max-rank 32
  lora-mix resize style.safetensors -o style-ratio.safetensors --sv-ratio 8`;

export const resizeCommand: Command = {
  name: 'resize',
  summary: "change a LoRA's rank per module with kohya's rules (fixed, sv_ratio, sv_fro, sv_cumulative)",
  help: HELP,
  async run(argv: string[], ctx: CliContext): Promise<number> {
    const { values, positionals } = parseCommandArgs('resize', argv, {
      output: { type: 'string', short: 'o' },
      rank: { type: 'string' },
      'sv-ratio': { type: 'string' },
      'sv-fro': { type: 'string' },
      'sv-cumulative': { type: 'string' },
      'max-rank': { type: 'string' },
      dtype: { type: 'string' },
      format: { type: 'string' },
      json: { type: 'boolean' },
      quiet: { type: 'boolean', short: 'q' },
    });
    if (positionals.length !== 1) {
      throw new UsageError("resize: expected one input LoRA. Run 'lora-mix resize --help' for usage.");
    }
    if (typeof values.output !== 'string' || values.output === '') {
      throw new UsageError("resize: -o OUT is required. Run 'lora-mix resize --help' for usage.");
    }
    const rules: ResizeRule[] = [];
    const rank = numberOption('resize', 'rank', values.rank, { min: 1, integer: true });
    if (rank !== undefined) rules.push({ rank });
    const ratio = numberOption('resize', 'sv-ratio', values['sv-ratio']);
    if (ratio !== undefined) rules.push({ svRatio: ratio });
    const fro = numberOption('resize', 'sv-fro', values['sv-fro']);
    if (fro !== undefined) rules.push({ svFro: fro });
    const cum = numberOption('resize', 'sv-cumulative', values['sv-cumulative']);
    if (cum !== undefined) rules.push({ svCumulative: cum });
    if (rules.length !== 1) {
      throw new UsageError(
        'resize: give exactly one of --rank K, --sv-ratio X, --sv-fro X, --sv-cumulative X',
        'USAGE_BAD_ARGUMENT',
      );
    }
    const maxRank = numberOption('resize', 'max-rank', values['max-rank'], { min: 1, integer: true });
    const format = values.format === undefined ? 'kohya' : String(values.format);
    if (format !== 'kohya' && format !== 'peft') {
      throw new UsageError(`resize: --format expects kohya or peft, got '${format}'`, 'USAGE_BAD_ARGUMENT');
    }
    let dtype: OutputDType | undefined;
    if (values.dtype !== undefined) {
      dtype = parseOutputDType(String(values.dtype));
      if (!dtype) throw new UsageError(`resize: --dtype expects fp16, bf16 or fp32`, 'USAGE_BAD_ARGUMENT');
    }
    const input = path.resolve(ctx.cwd, positionals[0] ?? '');
    const output = path.resolve(ctx.cwd, values.output);
    const lora = await loadLora(input);
    const progress = values.quiet === true ? null : progressReporter(ctx, 'resize');
    let result;
    try {
      result = kohyaResize(lora, {
        rule: rules[0] ?? { rank: 1 },
        ...(maxRank !== undefined ? { maxRank } : {}),
        ...(progress ? { onProgress: progress.update } : {}),
      });
    } finally {
      progress?.end();
    }
    const outDtype: OutputDType =
      dtype ?? (lora.dtype === 'F16' || lora.dtype === 'BF16' || lora.dtype === 'F32' ? lora.dtype : 'F32');
    const rule = rules[0] ?? { rank: 1 };
    const provenance = await cliProvenance('resize', ctx.cwd, [{ file: input }], {
      ...rule,
      ...(maxRank !== undefined ? { maxRank } : {}),
      format,
      dtype: outDtype,
    });
    const written = await saveLora(result.lora, output, {
      format,
      dtype: outDtype,
      metadata: provenance,
      refuseOverwrite: [input],
    });
    const { report } = result;
    if (values.json === true) {
      ctx.out(
        `${JSON.stringify({ input: positionals[0], output: values.output, dtype: outDtype, bytes: written.byteLength, report }, null, 2)}\n`,
      );
      return 0;
    }
    const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
    const lines = [
      `resized ${positionals[0]} → ${values.output} (${format}, ${outDtype}), ${report.modules.length} modules`,
      `  rank ${report.rankAfter.min === report.rankAfter.max ? report.rankAfter.min : `${report.rankAfter.min}–${report.rankAfter.max} (mean ${report.rankAfter.mean.toFixed(1)})`}`,
      `  Frobenius norm kept: mean ${pct(report.meanFroRetained)}, std ${pct(report.stdFroRetained)}, min ${pct(report.minFroRetained)}, max ${pct(report.maxFroRetained)}`,
      ...report.modules.map(
        (m) =>
          `    ${m.path}: rank ${m.rankBefore} → ${m.rankAfter}, sum(S) kept ${pct(m.sumRetained)}, fro kept ${pct(m.froRetained)}, S0/S${m.rankAfter - 1} ${m.maxRatio.toFixed(1)}`,
      ),
    ];
    ctx.out(`${lines.join('\n')}\n`);
    return 0;
  },
};

export const command: Command = resizeCommand;
