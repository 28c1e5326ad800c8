/**
 * The merge page offers the library's merge methods (the registry in src/lora/methods.ts), with one field per
 * parameter generated from it: every method is listed, a method's result in the page equals the library's in
 * Node, bad parameter values and wrong input counts are shown at their field and clear when fixed.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bufferSource } from '../../src/core/memory.js';
import { decodeLora, serializeLora } from '../../src/formats/index.js';
import { deltaOf, METHOD_NAMES, METHODS, mergeLoras, requirePlain } from '../../src/lora/index.js';
import { parseSafetensors } from '../../src/safetensors/index.js';
import { clearAll, FIXTURE, mergeOutcome, openPage, upload, type PageSession } from './page-helpers.js';

const load = async (path: string) =>
  requirePlain(await decodeLora(await parseSafetensors(bufferSource(new Uint8Array(readFileSync(path)), path))));

describe('merge methods in the page (headless Chromium)', () => {
  let s: PageSession;
  beforeAll(async () => {
    s = await openPage();
  });
  afterAll(async () => {
    await s?.close();
  });

  it('lists every method of the registry and shows the chosen method’s parameters', async () => {
    const { page } = s;
    const offered = await page.$$eval('#method option', (os) => os.map((o) => (o as HTMLOptionElement).value));
    expect(offered).toEqual(METHOD_NAMES);
    for (const name of METHOD_NAMES) {
      await page.selectOption('#method', name);
      const fields = await page.$$eval('#method-params [id^="param-"]:not(.field-error):not(.hint)', (es) =>
        es.map((e) => e.id.replace('param-', '')),
      );
      expect(fields, name).toEqual([...METHODS[name].params]);
    }
    await page.selectOption('#method', 'concat');
  });

  it('merges with TIES at a target rank like the library does in Node', async () => {
    const { page } = s;
    await upload(page, [FIXTURE.lcm, FIXTURE.style]);
    await page.selectOption('#method', 'ties');
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('true');
    expect(await page.textContent('#status')).toMatch(/target rank/);
    await page.fill('#rank', '6');
    await page.fill('#param-density', '0.5');
    await page.selectOption('#dtype', 'F32');
    expect(await mergeOutcome(page)).toBe('result');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
    const path = join(s.dir, 'ties.safetensors');
    await download.saveAs(path);

    const node = mergeLoras([await load(FIXTURE.lcm), await load(FIXTURE.style)], [1, 0.8], {
      method: 'ties',
      density: 0.5,
      rank: 6,
    });
    // Factors of a rank-K result are unique only up to a rotation: compare the updates B·A, module by module.
    const bytes = new Uint8Array(readFileSync(path));
    const fromPage = requirePlain(await decodeLora(await parseSafetensors(bufferSource(bytes, 'page'))));
    const fromNode = requirePlain(
      await decodeLora(
        await parseSafetensors(bufferSource(serializeLora(node.lora, { format: 'kohya', dtype: 'F32' }), 'node')),
      ),
    );
    expect([...fromPage.modules.keys()]).toEqual([...fromNode.modules.keys()]);
    // The page's WASM products do not round exactly like Node's (modules agree to ~1e-6, not bit for bit), and the
    // SVD stops by a predicted-gain rule: a module near the threshold can stop one half-step apart in the two
    // engines, and its rank-K factors then differ by a few 1e-4 of the update (each within the 0.1% error bound
    // test/lora-svd.test.ts holds the SVD to). So: every module within 1e-3 (Frobenius, relative), and the typical
    // module — the median — within 1e-5, which a different method, rank or density would not meet.
    const gaps: number[] = [];
    for (const [path, m] of fromNode.modules) {
      const q = deltaOf(m).data;
      const p = deltaOf(fromPage.modules.get(path)!).data;
      let d2 = 0;
      let n2 = 0;
      for (let i = 0; i < q.length; i++) {
        d2 += ((p[i] ?? Number.NaN) - (q[i] ?? 0)) ** 2;
        n2 += (q[i] ?? 0) ** 2;
      }
      const gap = n2 > 0 ? Math.sqrt(d2 / n2) : Math.sqrt(d2);
      expect(gap, path).toBeLessThanOrEqual(1e-3);
      gaps.push(gap);
    }
    gaps.sort((a, b) => a - b);
    expect(gaps[Math.floor(gaps.length / 2)] ?? Number.NaN).toBeLessThanOrEqual(1e-5);
    const compared = gaps.length;
    expect(compared).toBeGreaterThan(0);
    const meta = await parseSafetensors(bufferSource(bytes, 'page'));
    const record = JSON.parse(meta.metadata.lora_mix_merge ?? '{}') as Record<string, unknown>;
    expect(JSON.stringify(record)).toContain('ties');
  });

  it('shows a bad parameter at its field and the input count at the method, and both clear', async () => {
    const { page } = s;
    await page.fill('#param-density', '0');
    expect(await page.locator('#param-density-error').isVisible()).toBe(true);
    expect(await page.textContent('#param-density-error')).toContain('OPTION_INVALID');
    expect(await page.getAttribute('#param-density', 'aria-invalid')).toBe('true');
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('true');
    await page.fill('#param-density', '0.3');
    expect(await page.locator('#param-density-error').isHidden()).toBe(true);
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('false');

    await upload(page, [FIXTURE.stylePeft]);
    await page.selectOption('#method', 'slerp');
    expect(await page.locator('#method-error').isVisible()).toBe(true);
    expect(await page.textContent('#method-error')).toContain('exactly 2 inputs');
    await page.locator('#loras li button.remove').last().click();
    expect(await page.locator('#method-error').isHidden()).toBe(true);
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('false');
    await page.selectOption('#method', 'concat');
    await page.fill('#rank', '');
    await clearAll(page);
    expect(s.errors).toEqual([]);
  });

  it('takes per-component strengths in a weight field (unet=…,te=…), like the CLI, byte-identical to Node', async () => {
    const { page } = s;
    await upload(page, [FIXTURE.lcm, FIXTURE.style]);
    await page.selectOption('#dtype', 'F32');
    const weight = page.locator('#loras input.weight').nth(1);
    await weight.fill('unet=0.5,tee=1');
    expect(await page.locator('#loras .field-error:visible').first().textContent()).toContain('OPTION_INVALID');
    expect(await weight.getAttribute('aria-invalid')).toBe('true');
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('true');
    await weight.fill('unet=0.5,te=0');
    expect(await weight.getAttribute('aria-invalid')).toBeNull();
    expect(await mergeOutcome(page)).toBe('result');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
    const path = join(s.dir, 'components.safetensors');
    await download.saveAs(path);
    const node = mergeLoras([await load(FIXTURE.lcm), await load(FIXTURE.style)], [1, { weight: 1, unet: 0.5, te: 0 }]);
    const expected = serializeLora(node.lora, { format: 'kohya', dtype: 'F32' });
    const fromPage = await parseSafetensors(bufferSource(new Uint8Array(readFileSync(path)), 'page'));
    const fromNode = await parseSafetensors(bufferSource(expected, 'node'));
    expect(fromPage.tensors.map((t) => t.name)).toEqual(fromNode.tensors.map((t) => t.name));
    for (const t of fromNode.tensors) {
      const same = Buffer.from(await fromPage.read(t.name)).equals(Buffer.from(await fromNode.read(t.name)));
      expect(same, t.name).toBe(true);
    }
    await clearAll(page);
  });
});
