/** Helpers for the merge-method tests: the per-module request mergeLoras would build, and its dense result. */
import { methodRequest, planMerge, type MergeOptions } from '../src/lora/merge.js';
import { methodDelta } from '../src/lora/method-module.js';
import type { MethodModuleRequest } from '../src/lora/method-module.js';
import type { Lora } from '../src/lora/types.js';

export { methodDelta };

export function methodRequestOf(
  loras: Lora[],
  weights: number[],
  options: MergeOptions,
  path = 'unet.m',
): MethodModuleRequest {
  const plan = planMerge(loras, weights, options);
  const pm = plan.modules.find((m) => m.path === path);
  if (!pm) throw new Error(`no module ${path}`);
  return methodRequest(plan, pm);
}
