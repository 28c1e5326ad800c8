/**
 * Per-component strengths: one input's weight split by model component, `unet=0.8,te=0.5` (te = every text
 * encoder; te1 = text_encoder, te2 = text_encoder_2 separately, overriding te). ComfyUI's strength_model /
 * strength_clip and diffusers' set_adapters per-component weights are the same idea. A component not named keeps
 * the input's overall weight (factor 1).
 */
import { OptionError } from '../core/errors.js';

export interface ComponentStrengths {
  readonly unet?: number;
  /** Both text encoders (SD1.5's only one). */
  readonly te?: number;
  readonly te1?: number;
  readonly te2?: number;
}

export const COMPONENT_KEYS = ['unet', 'te', 'te1', 'te2'] as const;
export type ComponentKey = (typeof COMPONENT_KEYS)[number];

/** The component of a canonical module path: 'unet', 'te1' (text_encoder) or 'te2' (text_encoder_2). */
export function componentOf(path: string): 'unet' | 'te1' | 'te2' | null {
  if (path.startsWith('unet.')) return 'unet';
  if (path.startsWith('text_encoder_2.')) return 'te2';
  if (path.startsWith('text_encoder.')) return 'te1';
  return null;
}

/** The multiplier a module gets from per-component strengths (1 for a component not named). */
export function componentFactor(s: ComponentStrengths, path: string): number {
  const c = componentOf(path);
  if (c === 'unet') return s.unet ?? 1;
  if (c === 'te1') return s.te1 ?? s.te ?? 1;
  if (c === 'te2') return s.te2 ?? s.te ?? 1;
  return 1;
}

/** True when `x` names at least one component strength. */
export function hasComponents(x: object): boolean {
  return COMPONENT_KEYS.some((k) => (x as Record<string, unknown>)[k] !== undefined);
}

/** Check strengths given through the API: finite numbers under known keys. `name` names the input in errors. */
export function checkComponents(s: ComponentStrengths, name: string, op = 'merge'): void {
  for (const k of COMPONENT_KEYS) {
    const v = s[k];
    if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v))) {
      throw new OptionError(
        'OPTION_INVALID',
        `${op}: the ${k} strength of ${name} must be a finite number, found ${String(v)}`,
        {
          key: k,
          found: v,
        },
      );
    }
  }
}

const ITEM = /^\s*(unet|te|te1|te2)\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$/;

/**
 * Parse `unet=0.8,te=0.5` (any of unet, te, te1, te2, each at most once). Returns null when `text` is not of that
 * form at all (so callers can try other spellings); throws OptionError when it is, but wrongly.
 */
export function parseComponentStrengths(text: string, op = 'merge'): ComponentStrengths | null {
  if (!/^\s*(unet|te|te1|te2)\s*=/.test(text)) return null;
  const out: Record<string, number> = {};
  for (const item of text.split(',')) {
    const m = ITEM.exec(item);
    if (!m) {
      throw new OptionError(
        'OPTION_INVALID',
        `${op}: '${item.trim()}' in '${text}' is not a component strength; expected unet=X, te=X, te1=X or te2=X`,
        { found: text, expected: 'unet=X,te=X (te1=X, te2=X)' },
      );
    }
    const key = m[1] ?? '';
    if (out[key] !== undefined) {
      throw new OptionError('OPTION_INVALID', `${op}: '${key}' is given twice in '${text}'`, { key, found: text });
    }
    out[key] = Number(m[2]);
  }
  return out;
}

/** 'unet=0.8,te=0.5' for reports (only the keys given). */
export function describeComponents(s: ComponentStrengths): string {
  return COMPONENT_KEYS.filter((k) => s[k] !== undefined)
    .map((k) => `${k}=${s[k]}`)
    .join(',');
}
