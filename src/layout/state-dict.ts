/**
 * The tensors of a whole checkpoint as a layout describes them, in file order: what a checkpoint writer, a renamer
 * or the fuser walks. A single file stores some diffusers tensors together (OpenCLIP-G q/k/v rows of one
 * `in_proj_weight`) or transposed (`text_projection`); these lists give the on-disk shape and the parts.
 */
import type { Component, Layout, StateDictEntry } from './types.js';

/** One tensor of a single-file checkpoint. */
export interface SingleFileTensor {
  readonly key: string;
  readonly component: Component;
  /** Shape in the single file (fused rows stacked, transposed where the file stores the transpose). */
  readonly shape: readonly number[];
  /** The diffusers tensors it holds: one, or the q/k/v row slices in row order. */
  readonly parts: readonly StateDictEntry[];
}

const ALL: readonly Component[] = ['unet', 'text_encoder', 'text_encoder_2'];

/** Every single-file tensor of the chosen components (default: all), in layout order. */
export function singleFileTensors(layout: Layout, components: readonly Component[] = ALL): SingleFileTensor[] {
  const byKey = new Map<string, { key: string; component: Component; parts: StateDictEntry[] }>();
  for (const s of layout.stateDict) {
    if (!components.includes(s.component)) continue;
    const t = byKey.get(s.singleFileKey);
    if (t) t.parts.push(s);
    else byKey.set(s.singleFileKey, { key: s.singleFileKey, component: s.component, parts: [s] });
  }
  return [...byKey.values()].map(({ key, component, parts }) => {
    const first = parts[0]!;
    let shape: number[];
    if (first.singleFileRows) {
      parts.sort((a, b) => a.singleFileRows![0] - b.singleFileRows![0]);
      shape = [parts[parts.length - 1]!.singleFileRows![1], ...first.shape.slice(1)];
    } else {
      shape = first.transposed ? [...first.shape].reverse() : [...first.shape];
    }
    return { key, component, shape, parts };
  });
}

/** Every tensor of one component's diffusers file: key and shape, in layout order. */
export function diffusersTensors(layout: Layout, component: Component): { key: string; shape: readonly number[] }[] {
  return layout.stateDict
    .filter((s) => s.component === component)
    .map((s) => ({ key: s.diffusersKey, shape: s.shape }));
}
