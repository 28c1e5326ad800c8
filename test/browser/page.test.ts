/**
 * End to end: the merge page (examples/web) in headless Chromium. Upload the sd15 fixture LCM-LoRA and style LoRA,
 * merge at 1.0 / 0.8, capture the download, and check in Node that the file holds the same deltas as the library
 * computes in Node from the same inputs (and the same bytes). Bad files show their typed error.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBrowser, REPO_ROOT } from '../../scripts/build-browser.js';
import { mergeCommand } from '../../src/cli/commands/merge.js';
import { decodeLora, serializeLora, type LoadedLora } from '../../src/formats/index.js';
import { bufferSource } from '../../src/core/memory.js';
import { readProvenance } from '../../src/core/provenance.js';
import { deltaOf, mergeLoras, requirePlain, type Lora } from '../../src/lora/index.js';
import { parseSafetensors } from '../../src/safetensors/index.js';
import { openSession, tempDir, type BrowserSession } from './harness.js';

const LCM = join(REPO_ROOT, 'fixtures/sd15/lcm-lora.kohya.safetensors');
const STYLE = join(REPO_ROOT, 'fixtures/sd15/style-lora.kohya.safetensors');
const STYLE_PEFT = join(REPO_ROOT, 'fixtures/sd15/style-lora.peft.safetensors');

async function load(bytes: Uint8Array, name: string): Promise<Omit<LoadedLora, 'modules'> & Lora> {
  return requirePlain(await decodeLora(await parseSafetensors(bufferSource(bytes, name))));
}
const loadPath = (path: string) => load(new Uint8Array(readFileSync(path)), path.split('/').pop()!);

/** Largest |a − b| and largest |b| over two deltas of the same shape. */
function deltaGap(a: Float32Array, b: Float64Array): { gap: number; scale: number } {
  let gap = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    gap = Math.max(gap, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return { gap, scale };
}

describe('merge page (examples/web) in headless Chromium', () => {
  const tmp = tempDir('page');
  let session: BrowserSession;
  /** The file the page produced for 1.0·LCM + 0.8·style (kohya, F16). */
  let pageMerge: Uint8Array | undefined;

  beforeAll(async () => {
    const built = await buildBrowser({ outDir: tmp.dir });
    session = await openSession({ root: built.webDir });
    await session.page.waitForSelector('body[data-ready="true"]');
  });
  afterAll(async () => {
    await session?.close();
    tmp.remove();
  });

  /** Upload files, wait until every card is read, return the cards' text. */
  async function upload(paths: string[]): Promise<void> {
    const { page } = session;
    await page.setInputFiles('#files', paths);
    await page.waitForFunction(() => document.querySelectorAll('#loras .loading').length === 0);
  }

  async function clearAll(): Promise<void> {
    const { page } = session;
    while ((await page.locator('#loras li').count()) > 0) await page.locator('#loras li button.remove').first().click();
  }

  /** Click Merge, wait for the result, download it; returns the file's bytes and the summary line. */
  async function mergeAndDownload(): Promise<{ bytes: Uint8Array; summary: string; fileName: string }> {
    const { page } = session;
    const before = await page.evaluate(() => document.body.dataset.merged ?? '');
    await page.click('#merge');
    await page.waitForFunction(
      (prev) => (document.body.dataset.merged ?? '') !== prev || !document.getElementById('error')!.hidden,
      before,
    );
    const error = await page.locator('#error');
    if (await error.isVisible()) throw new Error(`the page reported: ${await error.textContent()}`);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
    const path = join(tmp.dir, `download-${Date.now()}.safetensors`);
    await download.saveAs(path);
    return {
      bytes: new Uint8Array(readFileSync(path)),
      summary: (await page.textContent('#summary')) ?? '',
      fileName: download.suggestedFilename(),
    };
  }

  it('describes each dropped LoRA and suggests 1.0 for the LCM-LoRA and 0.8 for the style LoRA', async () => {
    await upload([LCM, STYLE]);
    const { page } = session;
    const cards = page.locator('#loras li.lora');
    expect(await cards.count()).toBe(2);
    const lcmCard = cards.nth(0);
    const styleCard = cards.nth(1);
    expect(await lcmCard.locator('.name').textContent()).toContain('lcm-lora.kohya.safetensors');
    expect(await lcmCard.locator('.badge').textContent()).toBe('LCM-LoRA');
    expect(await styleCard.locator('.badge').count()).toBe(0);
    const lcmInfo = (await lcmCard.locator('.facts').textContent()) ?? '';
    const lcm = await loadPath(LCM);
    expect(lcmInfo).toContain('kohya');
    expect(lcmInfo).toContain('SD 1.5');
    expect(lcmInfo).toContain(`${lcm.modules.size} modules`);
    expect(lcmInfo).toContain(`rank ${[...lcm.modules.values()][0]!.down.shape[0]}`);
    expect(await lcmCard.locator('input.weight').inputValue()).toBe('1');
    expect(await styleCard.locator('input.weight').inputValue()).toBe('0.8');
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('false');
  });

  it('merges at 1.0 / 0.8 and the downloaded file equals the Node merge of the same inputs', async () => {
    const { page } = session;
    await page.locator('#loras li.lora input.weight').nth(0).fill('1.0');
    await page.locator('#loras li.lora input.weight').nth(1).fill('0.8');
    const { bytes, summary, fileName } = await mergeAndDownload();
    pageMerge = bytes;
    expect(fileName).toMatch(/\.safetensors$/);
    expect(summary).toContain('exact weighted sum');

    const lcm = await loadPath(LCM);
    const style = await loadPath(STYLE);
    const merged = await load(bytes, 'downloaded.safetensors');
    expect(merged.format).toBe('kohya');
    expect(merged.arch).toBe('sd15');
    expect(merged.dtype).toBe('F16');

    // 1. Deltas: every module of either input is there, with delta = 1.0·Δ_lcm + 0.8·Δ_style (f16 factors).
    const paths = new Set([...lcm.modules.keys(), ...style.modules.keys()]);
    expect(new Set(merged.modules.keys())).toEqual(paths);
    let worst = 0;
    for (const path of paths) {
      const a = lcm.modules.get(path);
      const b = style.modules.get(path);
      const da = a ? deltaOf(a).data : undefined;
      const db = b ? deltaOf(b).data : undefined;
      const n = (da ?? db)!.length;
      const expected = new Float64Array(n);
      for (let i = 0; i < n; i++) expected[i] = (da ? da[i]! : 0) + 0.8 * (db ? db[i]! : 0);
      const got = deltaOf(merged.modules.get(path)!).data;
      const { gap, scale } = deltaGap(got, expected);
      worst = Math.max(worst, gap / (scale || 1));
      // Factors are stored in f16 (relative rounding 2^-11 each): the delta is within a few 2^-11 of exact.
      expect(gap, path).toBeLessThanOrEqual(4 * 2 ** -11 * scale + 1e-12);
    }
    expect(worst).toBeGreaterThan(0); // the comparison saw real, non-zero deltas

    // 2. Bytes: the library in Node, same inputs and options, writes the same tensors.
    const node = mergeLoras([lcm, style], [1.0, 0.8]);
    const nodeBytes = serializeLora(node.lora, { format: 'kohya', dtype: 'F16' });
    const fromPage = await parseSafetensors(bufferSource(bytes, 'page'));
    const fromNode = await parseSafetensors(bufferSource(nodeBytes, 'node'));
    expect(fromPage.tensors.map((t) => t.name)).toEqual(fromNode.tensors.map((t) => t.name));
    for (const t of fromNode.tensors) {
      expect(Buffer.from(await fromPage.read(t.name)).equals(Buffer.from(await fromNode.read(t.name))), t.name).toBe(
        true,
      );
    }
    // The merge is recorded in the metadata, with the weights.
    const record = JSON.parse(fromPage.metadata.lora_mix_merge ?? '{}') as { inputs?: { weight?: unknown }[] };
    expect(record.inputs?.map((i) => i.weight)).toEqual([1, 0.8]);
  });

  it('writes the same tensors as `lora-mix merge A:1.0 B:0.8` on the command line', async () => {
    expect(pageMerge, 'the page merge above must have run').toBeDefined();
    const out = join(tmp.dir, 'cli-merge.safetensors');
    const printed: string[] = [];
    const code = await mergeCommand.run(
      [`${LCM}:1.0`, `${STYLE}:0.8`, '-o', out, '--format', 'kohya', '--dtype', 'fp16'],
      {
        out: (t) => printed.push(t),
        err: () => undefined,
        isTTY: false,
        cwd: tmp.dir,
      },
    );
    expect(code, printed.join('')).toBe(0);
    const cli = await parseSafetensors(bufferSource(new Uint8Array(readFileSync(out)), 'cli'));
    const page = await parseSafetensors(bufferSource(pageMerge!, 'page'));
    expect(page.tensors.map((t) => t.name)).toEqual(cli.tensors.map((t) => t.name));
    for (const t of cli.tensors) {
      expect(Buffer.from(await page.read(t.name)).equals(Buffer.from(await cli.read(t.name))), t.name).toBe(true);
    }
    // Provenance: the same record as the CLI's (inputs with size, SHA-256 and weight; the options), except that
    // the page names each file by its name and the CLI by its path.
    const fromCli = readProvenance(cli.metadata);
    const fromPage = readProvenance(page.metadata);
    expect(fromPage).toBeDefined();
    expect(fromPage!.command).toBe('merge');
    expect(fromPage!.options).toEqual(fromCli!.options);
    expect(fromPage!.inputs.map((i) => i.name)).toEqual([LCM, STYLE].map((p) => basename(p)));
    const shas = [LCM, STYLE].map((p) => createHash('sha256').update(readFileSync(p)).digest('hex'));
    expect(fromPage!.inputs.map((i) => i.sha256)).toEqual(shas);
    expect(fromPage!.inputs.map(({ name: _n, ...rest }) => rest)).toEqual(
      fromCli!.inputs.map(({ name: _n, ...rest }) => rest),
    );
  });

  it('writes PEFT at a target rank when asked (optimal rank-k, reported as not exact)', async () => {
    const { page } = session;
    await page.fill('#rank', '6');
    await page.selectOption('#format', 'peft');
    await page.selectOption('#dtype', 'F32');
    const { bytes, summary } = await mergeAndDownload();
    expect(summary).toMatch(/norm kept: mean [\d.]+ %/);
    const merged = await load(bytes, 'downloaded-peft.safetensors');
    expect(merged.format).toBe('peft');
    expect(merged.dtype).toBe('F32');
    const ranks = new Set([...merged.modules.values()].map((m) => m.down.shape[0] ?? Number.NaN));
    expect(Math.max(...ranks)).toBeLessThanOrEqual(6);
    const lcm = await loadPath(LCM);
    const style = await loadPath(STYLE);
    const node = mergeLoras([lcm, style], [1.0, 0.8], { rank: 6 });
    const nodeBytes = serializeLora(node.lora, { format: 'peft', dtype: 'F32' });
    const fromPage = await parseSafetensors(bufferSource(bytes, 'page'));
    const fromNode = await parseSafetensors(bufferSource(nodeBytes, 'node'));
    expect(fromPage.tensors.map((t) => t.name)).toEqual(fromNode.tensors.map((t) => t.name));
    for (const t of fromNode.tensors) {
      const p = await fromPage.readF32(t.name);
      const q = await fromNode.readF32(t.name);
      let gap = 0;
      let scale = 0;
      for (let i = 0; i < q.length; i++) {
        gap = Math.max(gap, Math.abs(p[i]! - q[i]!));
        scale = Math.max(scale, Math.abs(q[i]!));
      }
      expect(gap, t.name).toBeLessThanOrEqual(1e-5 * scale + 1e-12);
    }
    await page.fill('#rank', '');
    await page.selectOption('#format', 'kohya');
    await page.selectOption('#dtype', 'auto');
  });

  it('shows the typed error code and message for bad files, and refuses to mix architectures', async () => {
    const { page } = session;
    await clearAll();
    await upload([
      join(REPO_ROOT, 'fixtures/bad/oft.safetensors'),
      join(REPO_ROOT, 'fixtures/bad/truncated.safetensors'),
    ]);
    const bad = page.locator('#loras li.bad');
    expect(await bad.count()).toBe(2);
    const loha = (await bad.nth(0).textContent()) ?? '';
    expect(loha).toContain('FORMAT_UNSUPPORTED_ADAPTER');
    expect(loha).toContain('oft.safetensors');
    expect(loha).toMatch(/OFT/);
    const truncated = (await bad.nth(1).textContent()) ?? '';
    expect(truncated).toContain('SAFETENSORS_TRUNCATED');
    expect(truncated).toContain('truncated.safetensors');
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('true');

    await clearAll();
    await upload([STYLE_PEFT, join(REPO_ROOT, 'fixtures/sdxl/lcm-lora.kohya.safetensors')]);
    expect(await page.locator('#loras li.lora:not(.bad)').count()).toBe(2);
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('true');
    expect(await page.textContent('#status')).toMatch(/different architectures/);
    const facts = (await page.locator('#loras li.lora .facts').first().textContent()) ?? '';
    expect(facts).toContain('PEFT');
    await clearAll();
  });

  it('reports a bad block-weight string with its error code', async () => {
    const { page } = session;
    await upload([LCM, STYLE]);
    await page.fill('#blocks', 'IN99=0');
    // Checked as it is typed, against the inputs' architecture: the field says what is wrong, Merge waits.
    await page.waitForSelector('#blocks-error:not([hidden])');
    expect(await page.textContent('#blocks-error')).toContain('OPTION_INVALID');
    expect(await page.textContent('#blocks-error')).toContain('IN99');
    expect(await page.getAttribute('#blocks', 'aria-invalid')).toBe('true');
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('true');
    await page.fill('#blocks', 'IN04=0,OUT05=0.5');
    expect(await page.locator('#blocks-error').isHidden()).toBe(true);
    const { summary } = await mergeAndDownload();
    expect(summary).toContain('SD 1.5 LoRA');
    expect(session.errors).toEqual([]);
  });
});
