/**
 * The merge-method flags of `merge` and `fuse`, generated from the registry (src/lora/methods.ts): --method and
 * one flag per method parameter, their help lines, and the parsed API options.
 */
import { UsageError } from '../core/errors.js';
import { METHOD_NAMES, METHODS, PARAMS, type MethodParamName } from '../lora/methods.js';
import type { MethodOptions } from '../lora/methods.js';

const PARAM_NAMES = Object.keys(PARAMS) as MethodParamName[];

/** parseArgs option declarations for --method and every parameter flag. */
export function methodFlagOptions(): Record<string, { type: 'string' }> {
  const o: Record<string, { type: 'string' }> = { method: { type: 'string' } };
  for (const p of PARAM_NAMES) o[PARAMS[p].flag] = { type: 'string' };
  return o;
}

/** Help lines for the method flags (column layout of the commands' help). */
export function methodHelpLines(): string {
  const pad = (s: string) => `  ${s.padEnd(22)}  `;
  const lines = [
    `${pad('--method M')}${METHOD_NAMES.join('|')} (default concat, the exact sum; docs/methods.md)`,
    ...METHOD_NAMES.filter((m) => m !== 'concat').map((m) => `${' '.repeat(26)}${m}: ${METHODS[m].summary}`),
  ];
  for (const p of PARAM_NAMES) {
    const s = PARAMS[p];
    const arg = s.kind === 'choice' ? (s.choices ?? []).join('|') : s.kind === 'integer' ? 'N' : 'X';
    lines.push(`${pad(`--${s.flag} ${arg}`)}${s.doc} (default ${String(s.default)})`);
  }
  return lines.join('\n');
}

/** The method options given on the command line (unchecked values; resolveMethod checks them). */
export function parseMethodFlags(
  command: string,
  values: Record<string, unknown>,
): MethodOptions | { method?: undefined } {
  const out: Record<string, unknown> = {};
  if (values.method !== undefined) out.method = String(values.method);
  for (const p of PARAM_NAMES) {
    const s = PARAMS[p];
    const raw = values[s.flag];
    if (raw === undefined) continue;
    if (s.kind === 'choice') {
      out[p] = String(raw);
      continue;
    }
    const n = typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : Number.NaN;
    if (!Number.isFinite(n)) {
      throw new UsageError(`${command}: --${s.flag} expects a number, got '${String(raw)}'`, 'USAGE_BAD_ARGUMENT');
    }
    out[p] = n;
  }
  return out as MethodOptions;
}
