import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { IoError, UsageError } from '../../core/errors.js';
import { loadLora } from '../../formats/index.js';
import { analyzeLoras, type AnalyzeInput } from '../../lora/analyze.js';
import { formatAnalyzeReport } from '../../lora/analyze-format.js';
import { analyzeHtml } from '../../lora/analyze-html.js';
import { numberOption, parseCommandArgs, parseWeighted } from '../args.js';
import type { CliContext, Command } from '../context.js';
import { resolveBaseTermsThreaded } from '../../node/delta-pool.js';
import { registerTemp, releaseTemp, tempPathFor } from '../../node/temp-files.js';

const HELP = `Usage: lora-mix analyze A.safetensors[:W] [B.safetensors[:W] …] [--json] [--html OUT.html]
                        [--density D] [--modules] [--base CKPT] [--threads N] [-q]

Show how weighted LoRAs interact before merging or fusing them — why a style washes out next to an LCM-LoRA
(diffusers #6156), which blocks one LoRA dominates, where they cancel. Per module and per block (kohya/LBW block IDs;
BASE = text encoders), with M = Σ W·τ the merged delta:
  ‖W·τ‖        each input's norm
  share        its share of the merged delta's energy, ⟨W·τ, M⟩ / ‖M‖² (shares add to 100%; negative = pulls against)
  cos(i,j)     the cosine of two weighted deltas
  sign conflicts  among entries where ≥ 2 inputs are non-zero (after TIES trimming at --density), the fraction
               whose signs differ: what TIES's sign election would drop
Norms, shares and cosines are exact, from the Gram matrices of the LoRAs' factors (no dense delta for plain LoRAs).
Sign conflicts need entries: every entry of a module up to 2^18 of them, evenly spaced whole rows beyond that.
The summary names the blocks where one input has ≥ 80% of the merged energy or where the merged energy falls
below 80% of the inputs' sum (cancelling), and suggests block weights (--blocks-N for merge/fuse) that bring a
dominating input's norm down to the strongest other input's in those blocks.

Options:
  --json           print the full report (every module and block) as JSON
  --html OUT.html  also write a self-contained page with the per-block bars and a cosine heat map (inline SVG)
  --density D      TIES trimming density for the sign conflicts, 0 < D ≤ 1 (default 1: every entry)
  --modules        list every module in the text report
  --base CKPT      the base checkpoint (file or diffusers folder): DoRA, GLoRA, OFT and BOFT modules, whose delta
                   depends on the base weights, are analysed as their exact deltas against it (without it they are
                   left out and the report says how many); only those modules' weights are read
  --threads N      worker threads for those deltas (default: one per core; 1 = no workers)
  -q, --quiet      no progress on stderr

Examples:
  lora-mix analyze lcm-lora-sdv1-5.safetensors:1 style.safetensors:0.8
  lora-mix analyze lcm-lora-sdxl.safetensors:1 style-xl.safetensors:1 --html interference.html --density 0.2
  lora-mix analyze lcm-lora-sdv1-5.safetensors:1 dora-style.safetensors:0.8 --base v1-5-pruned-emaonly.safetensors`;

export const analyzeCommand: Command = {
  name: 'analyze',
  summary: 'how weighted LoRAs interact: norms, energy shares, cosines, sign conflicts per block (text/JSON/HTML)',
  help: HELP,
  async run(argv: string[], ctx: CliContext): Promise<number> {
    const { values, positionals } = parseCommandArgs('analyze', argv, {
      json: { type: 'boolean' },
      html: { type: 'string' },
      density: { type: 'string' },
      modules: { type: 'boolean' },
      base: { type: 'string' },
      threads: { type: 'string' },
      quiet: { type: 'boolean', short: 'q' },
    });
    if (positionals.length === 0)
      throw new UsageError("analyze: expected at least one LoRA (FILE or FILE:WEIGHT). Run 'lora-mix analyze --help'.");
    const density = numberOption('analyze', 'density', values.density, { min: Number.MIN_VALUE, max: 1 });
    const threads = numberOption('analyze', 'threads', values.threads, { min: 1, max: 256, integer: true });
    const base = typeof values.base === 'string' ? path.resolve(ctx.cwd, values.base) : undefined;
    const inputs: AnalyzeInput[] = [];
    for (const spec of positionals) {
      const s = parseWeighted('analyze', spec, 1, ctx.cwd);
      const file = path.resolve(ctx.cwd, s.path);
      if (values.quiet !== true) ctx.err(`analyze: reading ${s.path}\n`);
      const lora = await loadLora(file);
      // DoRA / GLoRA / OFT / BOFT modules become their exact dense deltas against the base.
      const resolved = base !== undefined ? await resolveBaseTermsThreaded(lora, base, threads) : lora;
      inputs.push({ name: s.path, lora: resolved, weight: s.weight });
    }
    const report = analyzeLoras(inputs, density !== undefined ? { density } : {});
    if (typeof values.html === 'string') {
      const target = path.resolve(ctx.cwd, values.html);
      if (positionals.some((p) => path.resolve(ctx.cwd, parseWeighted('analyze', p, 1, ctx.cwd).path) === target))
        throw new IoError('OUTPUT_WOULD_OVERWRITE_INPUT', `analyze: --html ${values.html} would overwrite an input`, {
          file: values.html,
        });
      const tmp = tempPathFor(target);
      registerTemp(tmp);
      try {
        await fs.writeFile(tmp, analyzeHtml(report));
        await fs.rename(tmp, target);
        releaseTemp(tmp);
      } catch (e) {
        await fs.rm(tmp, { force: true });
        releaseTemp(tmp);
        throw new IoError('IO_WRITE_FAILED', `analyze: could not write ${values.html}: ${(e as Error).message}`, {
          file: values.html,
        });
      }
      if (values.quiet !== true) ctx.err(`analyze: wrote ${values.html}\n`);
    }
    ctx.out(
      values.json === true
        ? `${JSON.stringify(report, null, 2)}\n`
        : formatAnalyzeReport(report, values.modules === true),
    );
    return 0;
  },
};
