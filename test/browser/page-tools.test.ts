/**
 * The page's resize, fuse and analyze tools (section 4) in headless Chromium: each result equals what the Node API
 * computes from the same inputs (tensors within one rounding — Chromium's WASM has relaxed-SIMD FMA — kohya's resize
 * figures, the analysis text and picture exactly), carries
 * provenance with the inputs' SHA-256, and is withdrawn when the inputs or options change.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { bufferSource, memorySink } from '../../src/core/memory.js';
import { readProvenance } from '../../src/core/provenance.js';
import { decodeLora, serializeLora } from '../../src/formats/index.js';
import { fuseLoras } from '../../src/fuse/index.js';
import { analyzeHtml, analyzeLoras, formatAnalyzeReport, kohyaResize, termDelta } from '../../src/lora/index.js';
import { parseSafetensors, type SafetensorsFile } from '../../src/safetensors/index.js';
import { baseProvenance } from '../../src/node/provenance.js';
import { REPO_ROOT } from '../../scripts/build-browser.js';
import { clearAll, FIXTURE, openPage, upload, type PageSession } from './page-helpers.js';

const BASE = join(REPO_ROOT, 'fixtures/sd15/base.safetensors');

const open = async (bytes: Uint8Array, name: string) => parseSafetensors(bufferSource(bytes, name));
const load = async (path: string) =>
  decodeLora(await parseSafetensors(bufferSource(new Uint8Array(readFileSync(path)), basename(path))));
const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/**
 * The same tensors (names, dtypes, shapes) with values within `rel` of the largest |value| of each tensor: Chromium's
 * WASM has relaxed SIMD (fused multiply-add) where Node's may not, so products can round differently in the last
 * bit. Returns how many tensors were bit-identical.
 */
async function sameTensors(a: SafetensorsFile, b: SafetensorsFile, rel: number): Promise<number> {
  expect(a.tensors.map((t) => [t.name, t.dtype, t.shape])).toEqual(b.tensors.map((t) => [t.name, t.dtype, t.shape]));
  let identical = 0;
  for (const t of b.tensors) {
    const [x, y] = [await a.readF32(t.name), await b.readF32(t.name)];
    let gap = 0;
    let scale = 0;
    for (let i = 0; i < y.length; i++) {
      gap = Math.max(gap, Math.abs((x[i] ?? Number.NaN) - (y[i] ?? 0)));
      scale = Math.max(scale, Math.abs(y[i] ?? 0));
    }
    expect(gap, t.name).toBeLessThanOrEqual(rel * scale);
    if (gap === 0) identical++;
  }
  return identical;
}

/** Per module, the page's delta within 1e-4 of the Node delta's largest entry (as the TIES page test). */
async function sameDeltas(page: Uint8Array, node: Uint8Array): Promise<void> {
  const [a, b] = [await decodeLora(await open(page, 'page')), await decodeLora(await open(node, 'node'))];
  expect([...a.modules.keys()]).toEqual([...b.modules.keys()]);
  for (const [path, term] of b.modules) {
    const y = termDelta(term);
    const x = termDelta(a.modules.get(path)!);
    let gap = 0;
    let scale = 0;
    for (let i = 0; i < y.length; i++) {
      gap = Math.max(gap, Math.abs((x[i] ?? Number.NaN) - (y[i] ?? 0)));
      scale = Math.max(scale, Math.abs(y[i] ?? 0));
    }
    expect(gap, path).toBeLessThanOrEqual(1e-4 * scale + 1e-12);
  }
}

describe('page tools: resize, fuse, analyze (headless Chromium)', () => {
  let s: PageSession;
  beforeAll(async () => {
    s = await openPage();
  });
  afterAll(async () => {
    await s?.close();
  });

  beforeEach(async () => {
    await clearAll(s.page);
  });

  async function download(selector: string, name: string): Promise<Uint8Array> {
    const [d] = await Promise.all([s.page.waitForEvent('download'), s.page.click(selector)]);
    const path = join(s.dir, name);
    await d.saveAs(path);
    return new Uint8Array(readFileSync(path));
  }

  it("resizes with kohya's sv_fro rule: the same ranks, deltas (to 1e-4) and figures as kohyaResize in Node, with provenance", async () => {
    const { page } = s;
    await upload(page, [FIXTURE.style]);
    await page.selectOption('#resize-rule', 'svFro');
    await page.fill('#resize-value', '1.5');
    expect(await page.textContent('#resize-error')).toContain('OPTION_INVALID');
    expect(await page.getAttribute('#resize', 'aria-disabled')).toBe('true');
    await page.fill('#resize-value', '0.9');
    await page.fill('#resize-max', '3');
    expect(await page.locator('#resize-error').isHidden()).toBe(true);
    await page.selectOption('#dtype', 'F32');
    await page.click('#resize');
    await page.waitForSelector('body[data-resize]');
    const bytes = await download('#resize-download', 'resized.safetensors');

    const node = kohyaResize(await load(FIXTURE.style), { rule: { svFro: 0.9 }, maxRank: 3 });
    const expected = serializeLora(node.lora, { format: 'kohya', dtype: 'F32' });
    const got = await open(bytes, 'page');
    expect(got.tensors.map((t) => [t.name, t.shape])).toEqual(
      (await open(expected, 'node')).tensors.map((t) => [t.name, t.shape]),
    );
    await sameDeltas(bytes, expected);
    const seen = await page.evaluate(
      () => (window as unknown as { loraMixPage: { resizes: { meanFroRetained: number }[] } }).loraMixPage.resizes,
    );
    expect(seen.at(-1)?.meanFroRetained).toBeCloseTo(node.report.meanFroRetained, 12);
    expect(await page.textContent('#resize-summary')).toContain('Frobenius norm kept: mean');
    const p = readProvenance(got.metadata);
    expect(p?.command).toBe('resize');
    expect(p?.inputs[0]?.sha256).toBe(sha(FIXTURE.style));
    expect(p?.options).toMatchObject({ svFro: 0.9, maxRank: 3, dtype: 'F32', format: 'kohya' });

    // Another rule value withdraws the file.
    await page.fill('#resize-value', '0.8');
    expect(await page.locator('#resize-result').isHidden()).toBe(true);
    expect(await page.locator('#tools-stale').isVisible()).toBe(true);
    await page.selectOption('#dtype', 'auto');
    await page.selectOption('#resize-rule', 'rank');
    await page.fill('#resize-value', '8');
    await page.fill('#resize-max', '');
    await clearAll(page);
  });

  it('analyzes two LoRAs: the same text and picture as analyzeLoras in Node, shown in a sandboxed frame', async () => {
    const { page } = s;
    await upload(page, [FIXTURE.lcm, FIXTURE.style]);
    await page.locator('#loras input.weight').nth(1).fill('0.8');
    await page.click('#analyze');
    await page.waitForSelector('body[data-analyze]');
    const report = analyzeLoras([
      { name: basename(FIXTURE.lcm), lora: await load(FIXTURE.lcm), weight: 1 },
      { name: basename(FIXTURE.style), lora: await load(FIXTURE.style), weight: 0.8 },
    ]);
    expect(await page.textContent('#analysis-text')).toBe(formatAnalyzeReport(report));
    expect(await page.getAttribute('#analysis-frame', 'srcdoc')).toBe(analyzeHtml(report));
    expect(await page.getAttribute('#analysis-frame', 'sandbox')).toBe('');
    const frame = page.frameLocator('#analysis-frame');
    expect(await frame.locator('svg').count()).toBeGreaterThan(0);

    await page.locator('#loras input.weight').nth(1).fill('0.5');
    expect(await page.locator('#analysis').isHidden()).toBe(true);
    expect(await page.locator('#tools-stale').isVisible()).toBe(true);
    await clearAll(page);
  });

  it('fuses into a base checkpoint: the tensors of fuseLoras in Node (within one f16 rounding), provenance with the base header hash', async () => {
    const { page } = s;
    await upload(page, [FIXTURE.lcm, FIXTURE.style]);
    await page.locator('#loras input.weight').nth(1).fill('0.8');
    expect(await page.getAttribute('#fuse', 'aria-disabled')).toBe('true'); // no base yet
    // Without the save dialog the fused file is offered as a download (the dialog path: page-fuse.test.ts).
    await page.evaluate(() => {
      (window as unknown as { showSaveFilePicker: unknown }).showSaveFilePicker = undefined;
    });
    await page.setInputFiles('#base', BASE);
    await page.waitForFunction(() => document.getElementById('fuse')?.getAttribute('aria-disabled') === 'false');
    await page.click('#fuse');
    await page.waitForFunction(
      () => document.body.dataset.fuse !== undefined || !document.getElementById('error')!.hidden,
    );
    expect(await page.locator('#error').isHidden(), (await page.textContent('#error')) ?? '').toBe(true);
    const bytes = await download('#fuse-download', 'fused.safetensors');

    const sink = memorySink('node-fused');
    await fuseLoras(BASE, [await load(FIXTURE.lcm), await load(FIXTURE.style)], [1, 0.8], {
      out: sink,
      device: 'cpu',
      threads: 1,
    });
    const got = await open(bytes, 'page');
    // F16 weights: within one rounding (2^-11 relative) of Node's; most tensors are bit-identical.
    const identical = await sameTensors(got, await open(sink.bytes(), 'node'), 2 ** -10);
    expect(identical).toBeGreaterThan(got.tensors.length / 2);
    const p = readProvenance(got.metadata);
    expect(p?.command).toBe('fuse');
    const base = await baseProvenance(BASE, basename(BASE));
    expect(p?.inputs[0]).toEqual(base);
    expect(p?.inputs.slice(1).map((i) => [i.sha256, i.weight])).toEqual([
      [sha(FIXTURE.lcm), '1'],
      [sha(FIXTURE.style), '0.8'],
    ]);
    const seen = await page.evaluate(
      () => (window as unknown as { loraMixPage: { fuses: { modulesFused: number }[] } }).loraMixPage.fuses,
    );
    expect(seen.at(-1)?.modulesFused).toBeGreaterThan(0);

    await page.selectOption('#fuse-dtype', 'F32');
    expect(await page.locator('#fuse-result').isHidden()).toBe(true);
    expect(s.errors).toEqual([]);
    await clearAll(page);
  });
});
