import { UsageError } from '../../core/errors.js';
import {
  ARCH_LABEL,
  getLayout,
  loraParamCount,
  parseArch,
  type Component,
  type ModuleEntry,
} from '../../layout/index.js';
import { parseCommandArgs } from '../args.js';
import type { CliContext, Command } from '../context.js';

const COMPONENTS: readonly Component[] = ['unet', 'text_encoder', 'text_encoder_2'];
const RANK = 64;

const HELP = `Usage: lora-mix layout <sd15|sdxl|ssd1b> [--json] [--tiny] [--component NAME] [--lcm-only]

Print the module table of an architecture: every Linear/Conv2d weight a LoRA can target, with its canonical
path, single-file checkpoint key, both kohya spellings, PEFT key stem, shape and whether LCM-LoRA targets it.
The table is generated from the architecture's config, the same table lora-mix resolves every name through.

Options:
  --json              print a JSON array (one object per module) instead of the table
  --tiny              the tiny layout (same names, shrunk widths) used by fixtures and tests
  --component NAME    only unet, text_encoder or text_encoder_2
  --lcm-only          only the modules LCM-LoRA targets (UNet attentions, resnets, down/up-samplers)

Columns: path (canonical: component + diffusers path), single-file key (LDM/SGM/OpenCLIP name with the
checkpoint prefix; [a:b] = rows of a fused q/k/v tensor), kohya (diffusers paths), kohya (SGM paths),
PEFT stem (append .lora_A.weight / .lora_B.weight), shape, block (LoRA Block Weight ID), LCM target.

Examples:
  lora-mix layout sd15
  lora-mix layout sdxl --component unet --lcm-only
  lora-mix layout ssd1b --json > ssd1b-modules.json
  lora-mix layout sdxl --tiny --component text_encoder_2`;

function singleFileKey(m: ModuleEntry): string {
  if (m.singleFileRows) return `${m.singleFileWeightKey}[${m.singleFileRows[0]}:${m.singleFileRows[1]}]`;
  return m.singleFileTransposed ? `${m.singleFileWeightKey}ᵀ` : m.singleFileWeightKey;
}

function kohyaSpellings(m: ModuleEntry): { diffusers: string; sgm: string | null } {
  return { diffusers: m.kohyaNames[0]!, sgm: m.component === 'unet' ? (m.kohyaNames[1] ?? null) : null };
}

function jsonRow(m: ModuleEntry): Record<string, unknown> {
  const k = kohyaSpellings(m);
  return {
    path: m.path,
    component: m.component,
    localPath: m.localPath,
    singleFilePath: m.singleFilePath,
    singleFileWeightKey: m.singleFileWeightKey,
    ...(m.singleFileRows ? { singleFileRows: m.singleFileRows } : {}),
    ...(m.singleFileTransposed ? { singleFileTransposed: true } : {}),
    ...(m.extra ? { extra: m.extra } : {}),
    kohyaDiffusers: k.diffusers,
    kohyaSgm: k.sgm,
    peftStem: m.path,
    kind: m.kind,
    shape: m.shape,
    ...(m.kernel ? { kernel: m.kernel, stride: m.stride, padding: m.padding } : {}),
    group: m.group,
    block: m.block,
    lcmTarget: m.lcmTarget,
    loraParamsAtRank64: loraParamCount(m, RANK),
  };
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows
    .map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  '))
    .join('\n');
}

function fmt(n: number): string {
  return n.toLocaleString('en-US');
}

export const layoutCommand: Command = {
  name: 'layout',
  summary: 'print the module table of sd15, sdxl or ssd1b (names in every spelling, shapes, LCM targets)',
  help: HELP,
  async run(argv: string[], ctx: CliContext): Promise<number> {
    const { values, positionals } = parseCommandArgs('layout', argv, {
      json: { type: 'boolean' },
      tiny: { type: 'boolean' },
      component: { type: 'string' },
      'lcm-only': { type: 'boolean' },
    });
    if (positionals.length !== 1) {
      throw new UsageError(
        `layout: expected one architecture (sd15, sdxl or ssd1b), found ${positionals.length ? positionals.join(' ') : 'none'}. ` +
          `Run 'lora-mix layout --help' for usage.`,
        'USAGE_BAD_ARGUMENT',
      );
    }
    let arch;
    try {
      arch = parseArch(positionals[0]!);
    } catch (e) {
      throw new UsageError(`layout: ${(e as Error).message}`, 'USAGE_BAD_ARGUMENT');
    }
    const size = values.tiny === true ? 'tiny' : 'full';
    const layout = getLayout(arch, size);
    const component = values.component as string | undefined;
    if (component !== undefined) {
      if (!(COMPONENTS as readonly string[]).includes(component)) {
        throw new UsageError(
          `layout: --component expects unet, text_encoder or text_encoder_2, got '${component}'`,
          'USAGE_BAD_ARGUMENT',
        );
      }
      if (!layout.modules.some((m) => m.component === component)) {
        throw new UsageError(`layout: ${ARCH_LABEL[arch]} has no ${component}`, 'USAGE_BAD_ARGUMENT');
      }
    }
    const shown = layout.modules.filter(
      (m) => (component === undefined || m.component === component) && (values['lcm-only'] !== true || m.lcmTarget),
    );

    if (values.json === true) {
      ctx.out(
        shown.length === 0 ? '[]\n' : `[\n${shown.map((m) => `  ${JSON.stringify(jsonRow(m))}`).join(',\n')}\n]\n`,
      );
      return 0;
    }

    const rows: string[][] = [
      ['path', 'single-file key', 'kohya (diffusers)', 'kohya (SGM)', 'PEFT stem', 'shape', 'block', 'LCM'],
    ];
    for (const m of shown) {
      const k = kohyaSpellings(m);
      rows.push([
        m.path,
        singleFileKey(m),
        k.diffusers,
        k.sgm ?? '-',
        m.path,
        `[${m.shape.join(',')}]`,
        m.block ?? '-',
        m.lcmTarget ? 'yes' : 'no',
      ]);
    }
    ctx.out(`${table(rows)}\n\n`);

    const perComponent = COMPONENTS.map((c) => {
      const ms = shown.filter((m) => m.component === c);
      if (ms.length === 0) return null;
      const conv = ms.filter((m) => m.kind === 'conv2d').length;
      return `${c} ${fmt(ms.length)} (${fmt(ms.length - conv)} linear, ${fmt(conv)} conv2d)`;
    }).filter((x): x is string => x !== null);
    const lcm = shown.filter((m) => m.lcmTarget);
    const lcmParams = lcm.reduce((t, m) => t + loraParamCount(m, RANK), 0);
    const title = `${ARCH_LABEL[arch]}${size === 'tiny' ? ' (tiny)' : ''}`;
    ctx.out(`${title}: ${fmt(shown.length)} modules — ${perComponent.join(', ') || 'none'}\n`);
    ctx.out(`LCM-LoRA targets: ${fmt(lcm.length)} modules, ${fmt(lcmParams)} LoRA parameters at rank ${RANK}\n`);
    ctx.out(
      `PEFT keys: <PEFT stem>.lora_A.weight (down) / .lora_B.weight (up); kohya keys: <name>.lora_down.weight / .lora_up.weight / .alpha\n`,
    );
    return 0;
  },
};
