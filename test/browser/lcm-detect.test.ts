/** The page's LCM-LoRA detection (examples/web/lcm.ts) on the fixtures of every architecture. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { defaultWeightFor, lcmEvidence, LCM_WEIGHT, STYLE_WEIGHT } from '../../examples/web/lcm.js';
import { REPO_ROOT } from '../../scripts/build-browser.js';
import { decodeLora, describeLora } from '../../src/formats/index.js';
import { bufferSource } from '../../src/core/memory.js';
import { parseSafetensors } from '../../src/safetensors/index.js';

async function summaryOf(rel: string) {
  const lora = await decodeLora(
    await parseSafetensors(bufferSource(new Uint8Array(readFileSync(join(REPO_ROOT, 'fixtures', rel))), rel)),
  );
  return { lora, summary: describeLora(lora) };
}

describe('LCM-LoRA detection for default weights', () => {
  for (const arch of ['sd15', 'sdxl', 'ssd1b']) {
    it(`${arch}: the LCM-shaped fixture is detected by name and, renamed, by its coverage; the style LoRA is not`, async () => {
      const lcm = await summaryOf(`${arch}/lcm-lora.kohya.safetensors`);
      expect(lcmEvidence('lcm-lora.kohya.safetensors', lcm.lora.metadata, lcm.summary)).toBe('file name');
      // The released LCM-LoRA files are called pytorch_lora_weights.safetensors: coverage decides.
      const byCoverage = lcmEvidence('pytorch_lora_weights.safetensors', {}, lcm.summary);
      expect(byCoverage).toMatch(/^covers \d+ of \d+ LCM-LoRA target modules$/);
      expect(defaultWeightFor(byCoverage)).toBe(LCM_WEIGHT);

      const style = await summaryOf(`${arch}/style-lora.kohya${arch === 'sd15' ? '' : '-sgm'}.safetensors`);
      const none = lcmEvidence('style-lora.safetensors', style.lora.metadata, style.summary);
      expect(none).toBeNull();
      expect(defaultWeightFor(none)).toBe(STYLE_WEIGHT);
    });
  }

  it('reads the name a LoRA gives itself in its metadata', async () => {
    const style = await summaryOf('sd15/style-lora.kohya.safetensors');
    expect(lcmEvidence('weights.safetensors', { ss_output_name: 'LCM_LoRA_sd15' }, style.summary)).toBe(
      'metadata ss_output_name',
    );
    expect(lcmEvidence('weights.safetensors', { ss_output_name: 'watercolor' }, style.summary)).toBeNull();
  });
});
