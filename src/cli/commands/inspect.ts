import * as path from 'node:path';
import { openSafetensors } from '../../node/files.js';
import type { SafetensorsFile } from '../../safetensors/index.js';
import type { DType } from '../../core/tensor.js';
import { UsageError } from '../../core/errors.js';
import { parseCommandArgs } from '../args.js';
import type { CliContext, Command } from '../context.js';
import { errorFromCode } from '../../core/errors.js';
import { formatProvenance, readProvenance } from '../../core/provenance.js';
import { exitCodeFor } from '../exit.js';
import { formatKind, inspectKind } from './inspect-kind.js';
import { formatValueScan, scanValues } from './inspect-values.js';

const HELP = `Usage: lora-mix inspect FILE [--json] [--summary] [--values]

Validate a safetensors file and print what its header holds: every tensor (name, dtype, shape), totals
(tensors, bytes, parameters, per dtype) and the __metadata__ strings. Only the header is read; a file that
breaks any rule of the format is reported with the rule, the tensor and the byte offsets involved.

It also says what the file is: a LoRA (format — kohya with diffusers or SGM paths, PEFT, old diffusers —,
architecture, modules by group, rank and alpha histograms, parameters, LCM-LoRA target coverage, kohya
training metadata; only the alphas are read), a base checkpoint (architecture, single-file or diffusers
naming, components), an adapter type lora-mix refuses (LoHa, LoKr, DoRA, …), or other safetensors.
The values of a LoRA's tensors are read and every NaN / ±Inf is counted per tensor (merge, convert and fuse
refuse such files; inspect reports them and exits 0); --values does the same for any file (reads all of it).
When a LoRA cannot be used the error is printed and the exit code is its family's (docs/errors.md): 1, since
the file's content is wrong (factors that do not fit together included).

Options:
  --json        print one JSON object (file, sizes, totals, metadata, tensors) instead of the table
  --summary     omit the per-tensor list
  --values      count NaN/Inf in every float tensor, whatever the file is (LoRAs: always)

Examples:
  lora-mix inspect lcm-lora-sdv1-5.safetensors
  lora-mix inspect sd_xl_base_1.0.safetensors --summary
  lora-mix inspect model.safetensors --json > header.json`;

export interface InspectTensor {
  name: string;
  dtype: DType;
  shape: number[];
  parameters: number;
  bytes: number;
  /** Absolute byte offset in the file. */
  offset: number;
}

export interface DtypeTotals {
  tensors: number;
  parameters: number;
  bytes: number;
}

/** Everything `inspect` shows about a file, as plain data (JSON output and the table both use it). */
export interface InspectRaw {
  file: string;
  byteLength: number;
  headerLength: number;
  dataOffset: number;
  totals: { tensors: number; parameters: number; bytes: number; byDtype: Partial<Record<DType, DtypeTotals>> };
  metadata: Record<string, string>;
  tensors: InspectTensor[];
}

export function inspectRaw(file: SafetensorsFile): InspectRaw {
  const byDtype: Partial<Record<DType, DtypeTotals>> = {};
  let parameters = 0,
    bytes = 0;
  const tensors: InspectTensor[] = file.tensors.map((t) => {
    const d = (byDtype[t.dtype] ??= { tensors: 0, parameters: 0, bytes: 0 });
    d.tensors++;
    d.parameters += t.numel;
    d.bytes += t.byteLength;
    parameters += t.numel;
    bytes += t.byteLength;
    return {
      name: t.name,
      dtype: t.dtype,
      shape: [...t.shape],
      parameters: t.numel,
      bytes: t.byteLength,
      offset: t.offset,
    };
  });
  return {
    file: file.name,
    byteLength: file.byteLength,
    headerLength: file.headerLength,
    dataOffset: file.dataOffset,
    totals: { tensors: tensors.length, parameters, bytes, byDtype },
    metadata: { ...file.metadata },
    tensors,
  };
}

function fmt(n: number): string {
  return n.toLocaleString('en-US');
}

function count(n: number, what: string): string {
  return `${fmt(n)} ${what}${n === 1 ? '' : 's'}`;
}

function clip(s: string, max = 160): string {
  const one = s.replace(/\s+/g, ' ');
  return one.length > max ? `${one.slice(0, max - 1)}… (${fmt(s.length)} chars)` : one;
}

/** The human-readable rendering of inspectRaw's result. */
export function formatInspect(raw: InspectRaw, { summary = false }: { summary?: boolean } = {}): string {
  const lines: string[] = [];
  lines.push(`file        ${raw.file}`);
  lines.push(
    `size        ${fmt(raw.byteLength)} bytes (header ${fmt(raw.headerLength)} bytes, data from byte ${fmt(raw.dataOffset)})`,
  );
  lines.push(
    `tensors     ${fmt(raw.totals.tensors)}, ${count(raw.totals.parameters, 'parameter')}, ${count(raw.totals.bytes, 'byte')}`,
  );
  for (const [dtype, d] of Object.entries(raw.totals.byDtype)) {
    lines.push(
      `  ${dtype.padEnd(9)} ${count(d.tensors, 'tensor')}, ${count(d.parameters, 'parameter')}, ${count(d.bytes, 'byte')}`,
    );
  }
  const keys = Object.keys(raw.metadata);
  lines.push(`metadata    ${keys.length === 0 ? 'none' : count(keys.length, 'key')}`);
  for (const k of keys) lines.push(`  ${k}: ${clip(raw.metadata[k]!)}`);
  if (!summary && raw.tensors.length > 0) {
    lines.push('');
    const rows = raw.tensors.map((t) => [t.name, t.dtype, `[${t.shape.join(', ')}]`]);
    const w0 = Math.max(4, ...rows.map((r) => r[0]!.length));
    const w1 = Math.max(5, ...rows.map((r) => r[1]!.length));
    lines.push(`${'name'.padEnd(w0)}  ${'dtype'.padEnd(w1)}  shape`);
    for (const r of rows) lines.push(`${r[0]!.padEnd(w0)}  ${r[1]!.padEnd(w1)}  ${r[2]}`);
  }
  return lines.join('\n');
}

export const inspectCommand: Command = {
  name: 'inspect',
  summary: 'validate a safetensors file and list its tensors, totals and metadata',
  help: HELP,
  async run(argv: string[], ctx: CliContext): Promise<number> {
    const { values, positionals } = parseCommandArgs('inspect', argv, {
      json: { type: 'boolean' },
      summary: { type: 'boolean' },
      values: { type: 'boolean' },
    });
    if (positionals.length !== 1) {
      throw new UsageError(
        `inspect: expected one FILE, got ${positionals.length === 0 ? 'none' : positionals.join(' ')}. Run 'lora-mix inspect --help' for usage.`,
      );
    }
    const file = await openSafetensors(path.resolve(ctx.cwd, positionals[0]!));
    try {
      const raw = inspectRaw(file);
      raw.file = positionals[0]!;
      const kind = await inspectKind(file);
      const scan = kind.kind === 'lora' || values.values === true ? await scanValues(file) : undefined;
      if (values.json === true) {
        if (values.summary === true) raw.tensors = [];
        ctx.out(`${JSON.stringify({ ...kind, ...(scan ? { values: scan } : {}), ...raw }, null, 2)}\n`);
      } else {
        const made = readProvenance(raw.metadata);
        ctx.out(
          `${formatKind(kind)}\n${formatValueScan(scan)}\n${made ? `${formatProvenance(made)}\n` : ''}\n${formatInspect(raw, { summary: values.summary === true })}\n`,
        );
      }
      return 'error' in kind
        ? exitCodeFor(errorFromCode(kind.error.code, kind.error.message, { ...kind.error.details }))
        : 0;
    } finally {
      await file.close();
    }
  },
};

/** The command object under the generic name the CLI registry convention also allows. */
export const command: Command = inspectCommand;
