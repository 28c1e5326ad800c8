/**
 * An exact streamed conversion writes its header from the input's header alone (readPlannedShapeTerm, then
 * exactShapeModule): for every base-free adapter fixture, the plain LoRA fixtures (kohya, PEFT, SGM paths; the full diff has bias deltas),
 * each module's written factor shapes, alpha and bias are those of the module read in full (readPlannedTerm), and
 * no tensor is read but the bias deltas.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import '../src/node.js';
import { openPath } from '../src/formats/index.js';
import { planLora, readPlannedShapeTerm, readPlannedTerm, type LoraFileLike } from '../src/formats/decode.js';
import { exactShapeModule } from '../src/lora/convert-module.js';
import type { LoraModule } from '../src/lora/types.js';

const FX = path.resolve(import.meta.dirname, '..', 'fixtures');
const FILES = [
  ...['full', 'locon-tucker', 'loha', 'loha-tucker', 'lokr'].map((k) => path.join(FX, 'adapters', `${k}.safetensors`)),
  path.join(FX, 'sd15', 'lcm-lora.kohya.safetensors'),
  path.join(FX, 'sd15', 'style-lora.peft.safetensors'),
  path.join(FX, 'sdxl', 'style-lora.kohya-sgm.safetensors'),
];

/** The file, with the names of the tensors readF32 was asked for. */
function counting(file: LoraFileLike): { file: LoraFileLike; reads: string[] } {
  const reads: string[] = [];
  return {
    reads,
    file: {
      name: file.name,
      tensors: file.tensors,
      metadata: file.metadata,
      readF32: (name) => {
        reads.push(name);
        return file.readF32(name);
      },
      ...(file.read ? { read: file.read.bind(file) } : {}),
    },
  };
}

const described = (m: LoraModule) => ({
  up: [...m.up.shape],
  down: [...m.down.shape],
  alpha: m.alpha,
  bias: m.bias ? Array.from(m.bias.data as Float32Array) : undefined,
});

describe('exact conversion: the written shapes from the header', () => {
  for (const f of FILES) {
    it(path.relative(FX, f), async () => {
      const opened = await openPath(f);
      try {
        const plan = await planLora(opened, {});
        const { file, reads } = counting(opened);
        const biasKeys = new Set<string>();
        let biases = 0;
        for (const m of plan.modules) {
          if (m.biasKey) biasKeys.add(m.biasKey);
          const db = m.adapter?.tensors.diff_b?.key;
          if (db) biasKeys.add(db);
          const fromHeader = exactShapeModule(await readPlannedShapeTerm(file, m), m.entry.path);
          const fromValues = exactShapeModule(await readPlannedTerm(opened, m), m.entry.path);
          expect(described(fromHeader), m.entry.path).toEqual(described(fromValues));
          if (fromHeader.bias) biases++;
        }
        expect(reads.filter((k) => !biasKeys.has(k))).toEqual([]);
        expect(reads.length).toBe(biasKeys.size);
        if (f.includes('full')) expect(biases).toBeGreaterThan(0);
      } finally {
        await opened.close();
      }
    });
  }
});
