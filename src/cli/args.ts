import { existsSync } from 'node:fs';
import path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from '../core/errors.js';
import { parseComponentStrengths, type ComponentStrengths } from '../lora/components.js';

type Options = NonNullable<ParseArgsConfig['options']>;

/**
 * Parse a command's arguments with node:util's parseArgs, turning its errors into UsageError
 * (so the CLI prints a clean message and exits 2). `--help`/`-h` is always accepted.
 */
export function parseCommandArgs<O extends Options>(
  command: string,
  argv: string[],
  options: O,
): {
  values: Record<string, string | boolean | string[] | boolean[] | undefined>;
  positionals: string[];
  help: boolean;
} {
  try {
    const { values, positionals, tokens } = parseArgs({
      args: argv,
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
      tokens: true,
    });
    refuseRepeated(command, options, tokens ?? []);
    const v = values as Record<string, string | boolean | string[] | boolean[] | undefined>;
    return { values: v, positionals, help: v.help === true };
  } catch (e) {
    if (e instanceof UsageError) throw e;
    const msg = e instanceof Error ? e.message : String(e);
    throw new UsageError(`${command}: ${msg}. Run 'lora-mix ${command} --help' for usage.`, 'USAGE_BAD_ARGUMENT');
  }
}

/**
 * A value option (`-o OUT`, `--rank K`, `--base B` …) given twice is a mistake, not "the last one wins": which one
 * did the user mean? Options declared `multiple` may repeat; boolean flags may too (saying it twice is harmless).
 */
function refuseRepeated(
  command: string,
  options: Options,
  tokens: readonly { kind: string; name?: string; rawName?: string; value?: string | undefined }[],
): void {
  const seen = new Map<string, string>();
  for (const t of tokens) {
    if (t.kind !== 'option' || t.name === undefined) continue;
    const o = options[t.name];
    if (o?.type !== 'string' || o.multiple === true) continue;
    const spelled = `${t.rawName ?? `--${t.name}`} ${t.value ?? ''}`.trim();
    const before = seen.get(t.name);
    if (before !== undefined) {
      throw new UsageError(
        `${command}: --${t.name} given twice ('${before}' and '${spelled}'); give it once. Run 'lora-mix ${command} --help' for usage.`,
        'USAGE_BAD_ARGUMENT',
        { option: t.name, found: [before, spelled] },
      );
    }
    seen.set(t.name, spelled);
  }
}

/** Parse a number option, with a clear error naming the option. */
export function numberOption(
  command: string,
  name: string,
  raw: unknown,
  { min, max, integer }: { min?: number; max?: number; integer?: boolean } = {},
): number | undefined {
  if (raw === undefined) return undefined;
  const n = Number(raw);
  const bad =
    typeof raw !== 'string' ||
    raw.trim() === '' ||
    !Number.isFinite(n) ||
    (integer === true && !Number.isInteger(n)) ||
    (min !== undefined && n < min) ||
    (max !== undefined && n > max);
  if (bad) {
    const range = [min !== undefined ? `≥ ${min}` : '', max !== undefined ? `≤ ${max}` : '']
      .filter(Boolean)
      .join(' and ');
    throw new UsageError(
      `${command}: --${name} expects ${integer ? 'an integer' : 'a number'}${range ? ` ${range}` : ''}, got '${String(raw)}'`,
      'USAGE_BAD_ARGUMENT',
    );
  }
  return n;
}

/** A weight must be a finite number: ':1e400' (rounds to Infinity), ':Infinity' and ':NaN' are the same mistake. */
function finiteWeight(command: string, spec: string, raw: string): number {
  const lower = raw.toLowerCase().replace(/^[-+]/, '');
  const n = lower === 'nan' ? Number.NaN : lower.startsWith('inf') ? Number.POSITIVE_INFINITY : Number(raw);
  if (!Number.isFinite(n)) {
    throw new UsageError(
      `${command}: '${spec}' — the weight '${raw}' is not a finite number${lower === 'nan' || lower.startsWith('inf') ? '' : ' (it is too large for a double)'}; use a value such as 0.8`,
      'USAGE_BAD_ARGUMENT',
      { found: raw },
    );
  }
  return n;
}

/**
 * Split 'path.safetensors:0.8' into path and weight. The weight is optional (default given). A spec that names an
 * existing file or folder (relative to `cwd`) is a path whatever it contains ('style:v2.safetensors',
 * 'a:1.safetensors'); otherwise only a trailing ':<number>' is a weight, and a path with another ':' (a Windows
 * drive) keeps it.
 */
export function parseWeighted(
  command: string,
  spec: string,
  defaultWeight: number,
  cwd?: string,
): { path: string; weight: number } {
  if (cwd !== undefined && spec !== '' && existsSync(path.resolve(cwd, spec))) {
    return { path: spec, weight: defaultWeight };
  }
  const m = /^(.*):([-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|infinity|nan))$/i.exec(spec);
  if (m && m[1] !== '') return { path: m[1]!, weight: finiteWeight(command, spec, m[2]!) };
  if (/:[^\\/]*$/.test(spec) && !/^[A-Za-z]:[\\/]/.test(spec)) {
    throw new UsageError(
      `${command}: '${spec}' — the weight after ':' must be a number, e.g. lcm.safetensors:1.0 (no file of that name exists either)`,
      'USAGE_BAD_ARGUMENT',
    );
  }
  return { path: spec, weight: defaultWeight };
}

/**
 * Split 'path.safetensors:0.8' or 'path.safetensors:unet=0.8,te=0.5' (per-component strengths; te1= / te2= for
 * the two SDXL text encoders) into path, weight and components. A plain number applies to every component.
 */
export function parseWeightedSpec(
  command: string,
  spec: string,
  defaultWeight: number,
  cwd?: string,
): { path: string; weight: number; components?: ComponentStrengths } {
  if (cwd !== undefined && spec !== '' && existsSync(path.resolve(cwd, spec))) {
    return { path: spec, weight: defaultWeight };
  }
  const m = /^(.*):((?:unet|te1|te2|te)\s*=[^\\/]*)$/.exec(spec);
  if (m && m[1] !== '') {
    const components = parseComponentStrengths(m[2] ?? '', command);
    if (components) return { path: m[1] ?? '', weight: 1, components };
  }
  return parseWeighted(command, spec, defaultWeight, cwd);
}
