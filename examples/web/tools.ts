/**
 * The page's resize, fuse and analyze controls (section 4): what each tool would run now, as a request with a key,
 * or why it cannot run. Pure functions over field values; app.ts drives the DOM and the worker.
 */
import { LoraMixError } from '../../src/core/errors.js';
import { checkResizeOptions, type ResizeRule } from '../../src/lora/resize.js';
import type { FuseRequest, MergeRequest, ResizeRequest } from './protocol.js';
import { type FileIdentity, fileKey, requestKey } from './state.js';

export type ToolKind = 'resize' | 'fuse' | 'analyze';

export type ToolPlan<T> = { request: T; key: string } | { blocker: string };

const RULES = ['rank', 'svRatio', 'svFro', 'svCumulative'] as const;

/** A resize request from the form, checked by the library's own rule check (the CLI's flags in its messages). */
export function planResize(fields: {
  id: number | undefined;
  fileName: string | undefined;
  rule: string;
  value: string;
  maxRank: string;
  format: 'kohya' | 'peft';
  dtype: MergeRequest['dtype'];
}): ToolPlan<ResizeRequest> {
  if (fields.id === undefined || fields.fileName === undefined) return { blocker: 'Add a LoRA to resize.' };
  const ruleName = (RULES as readonly string[]).includes(fields.rule)
    ? (fields.rule as (typeof RULES)[number])
    : 'rank';
  const value = Number(fields.value.trim());
  if (fields.value.trim() === '' || !Number.isFinite(value))
    return { blocker: `The resize value must be a number, found "${fields.value.trim()}".` };
  const max = fields.maxRank.trim();
  const maxRank = max === '' ? undefined : Number(max);
  if (maxRank !== undefined && !(Number.isInteger(maxRank) && maxRank >= 1))
    return { blocker: `Max rank must be a whole number ≥ 1, found "${max}".` };
  const rule = { [ruleName]: value } as unknown as ResizeRule;
  try {
    checkResizeOptions({ rule, ...(maxRank !== undefined ? { maxRank } : {}) });
  } catch (e) {
    return { blocker: e instanceof LoraMixError ? `${e.code} — ${e.message}` : String(e) };
  }
  const request: ResizeRequest = {
    id: fields.id,
    rule,
    ...(maxRank !== undefined ? { maxRank } : {}),
    format: fields.format,
    dtype: fields.dtype,
    fileName: `${fields.fileName.replace(/\.safetensors$/i, '')}.resized.safetensors`,
  };
  const { fileName: _f, ...keyed } = request;
  return { request, key: JSON.stringify(['resize', keyed]) };
}

/** A fuse request: the merge inputs (weights, blocks, method) into the chosen base. */
export function planFuse(
  merge: MergeRequest | null,
  mergeBlocker: string | null,
  base: (FileIdentity & { name: string }) | undefined,
  dtype: FuseRequest['dtype'],
): ToolPlan<FuseRequest> {
  if (!base) return { blocker: 'Choose a base checkpoint to fuse into.' };
  if (!merge) return { blocker: mergeBlocker ?? 'Add at least one LoRA.' };
  const request: FuseRequest = {
    merge,
    dtype,
    fileName: `${base.name.replace(/\.safetensors$/i, '')}.fused.safetensors`,
  };
  return { request, key: JSON.stringify(['fuse', requestKey(merge), fileKey(base), dtype]) };
}

/** An analysis of the merge inputs at their weights. */
export function planAnalyze(merge: MergeRequest | null, mergeBlocker: string | null): ToolPlan<MergeRequest> {
  if (!merge) return { blocker: mergeBlocker ?? 'Add at least one LoRA.' };
  return { request: merge, key: JSON.stringify(['analyze', requestKey(merge)]) };
}
