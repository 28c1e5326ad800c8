/**
 * The merge page keeps its state honest: a result is offered only for the inputs and options that made it, errors
 * go away when their cause does, a file added twice is flagged, an all-zero merge is an error card, files that are
 * not safetensors are named by kind, and mixed architectures are explained file by file.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clearAll, FIXTURE, mergeOutcome, openPage, upload, type PageSession } from './page-helpers.js';

describe('merge page state (headless Chromium)', () => {
  let s: PageSession;
  beforeAll(async () => {
    s = await openPage();
  });
  afterAll(async () => {
    await s?.close();
  });

  async function offered(): Promise<boolean> {
    const { page } = s;
    return (await page.locator('#result').isVisible()) && (await page.getAttribute('#download', 'href')) !== null;
  }

  it('withdraws the download when a weight, an option or the file list changes', async () => {
    const { page } = s;
    await upload(page, [FIXTURE.lcm, FIXTURE.style]);
    expect(await mergeOutcome(page)).toBe('result');
    expect(await offered()).toBe(true);
    expect(await page.locator('#stale').isHidden()).toBe(true);

    // A weight.
    await page.locator('#loras input.weight').nth(1).fill('0.5');
    expect(await offered()).toBe(false);
    expect(await page.locator('#stale').isVisible()).toBe(true);
    expect(await page.textContent('#stale')).toMatch(/changed after the last merge/);

    // Merging again offers a file for the new settings; then an option changes.
    expect(await mergeOutcome(page)).toBe('result');
    expect(await offered()).toBe(true);
    expect(await page.locator('#stale').isHidden()).toBe(true);
    await page.selectOption('#format', 'peft');
    expect(await offered()).toBe(false);
    await page.selectOption('#format', 'kohya');
    expect(await offered()).toBe(false); // withdrawn for good: a new merge is needed

    // Per-input block weights, the target rank and removing a file all withdraw it too.
    for (const change of [
      () => page.locator('#loras input.blocks').first().fill('IN04=0'),
      () => page.fill('#rank', '4'),
      () => page.locator('#loras li button.remove').first().click(),
    ]) {
      expect(await mergeOutcome(page)).toBe('result');
      expect(await offered()).toBe(true);
      await change();
      expect(await offered()).toBe(false);
      expect(await page.locator('#stale').isVisible()).toBe(true);
    }
    await page.fill('#rank', '');
    await clearAll(page);
  });

  it('shows an all-zero merge as an error card (LORA_EMPTY), never "Done.", and clears it when fixed', async () => {
    const { page } = s;
    await upload(page, [FIXTURE.lcm, FIXTURE.style]);
    await page.locator('#loras input.weight').nth(0).fill('0');
    await page.locator('#loras input.weight').nth(1).fill('0');
    expect(await mergeOutcome(page)).toBe('error');
    expect(await page.textContent('#error')).toContain('LORA_EMPTY');
    expect(await page.textContent('#status')).not.toMatch(/Done/);
    expect(await page.getAttribute('#download', 'href')).toBeNull();

    await page.locator('#loras input.weight').nth(0).fill('1');
    expect(await page.locator('#error').isHidden()).toBe(true);
    expect(await mergeOutcome(page)).toBe('result');
    expect(await page.textContent('#status')).toMatch(/Done/);
    await clearAll(page);
  });

  it('validates the target rank as it is typed and clears the message when it is fixed', async () => {
    const { page } = s;
    await upload(page, [FIXTURE.style]);
    await page.fill('#rank', '2.5');
    expect(await page.locator('#rank-error').isVisible()).toBe(true);
    expect(await page.textContent('#rank-error')).toContain('2.5');
    expect(await page.getAttribute('#rank', 'aria-invalid')).toBe('true');
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('true');
    await page.fill('#rank', '3');
    expect(await page.locator('#rank-error').isHidden()).toBe(true);
    expect(await page.getAttribute('#rank', 'aria-invalid')).toBeNull();
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('false');
    await page.fill('#rank', '');
    await clearAll(page);
  });

  it('flags a file added twice, leaves it out, and reads it once the first copy is removed', async () => {
    const { page } = s;
    await upload(page, [FIXTURE.lcm, FIXTURE.style]);
    await upload(page, [FIXTURE.style]);
    const dup = page.locator('#loras li.dup');
    expect(await dup.count()).toBe(1);
    expect(await dup.textContent()).toContain('DUPLICATE');
    expect(await dup.textContent()).toContain('file 2');
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('true');
    expect(await page.textContent('#status')).toMatch(/duplicate/);

    await page.locator('#loras li').nth(1).locator('button.remove').click(); // the first copy
    await page.waitForFunction(() => document.querySelectorAll('#loras .loading, #loras .dup').length === 0);
    expect(await page.locator('#loras li.lora input.weight').count()).toBe(2);
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('false');
    await clearAll(page);
  });

  it('flags the same content under another name (by SHA-256), and keeps the copy once the first is removed', async () => {
    const { page } = s;
    const renamed = join(s.dir, 'renamed-copy.safetensors');
    copyFileSync(FIXTURE.style, renamed);
    const sha = createHash('sha256').update(readFileSync(FIXTURE.style)).digest('hex');
    await upload(page, [FIXTURE.lcm, FIXTURE.style, renamed]);
    const dup = page.locator('#loras li.dup');
    await page.waitForFunction(() => document.querySelectorAll('#loras li.dup').length === 1);
    const text = (await dup.textContent()) ?? '';
    expect(text).toContain('DUPLICATE');
    expect(text).toContain('same content');
    expect(text).toContain(sha.slice(0, 16));
    expect(text).toContain('file 2');
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('true');
    // The card of the original shows the start of the hash the worker computed while reading it.
    expect(await page.locator('#loras li').nth(1).textContent()).toContain(sha.slice(0, 12));

    await page.locator('#loras li').nth(1).locator('button.remove').click();
    await page.waitForFunction(() => document.querySelectorAll('#loras .loading, #loras .dup').length === 0);
    expect(await page.locator('#loras li.lora input.weight').count()).toBe(2);
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('false');
    await clearAll(page);
  });

  it('names files that are not safetensors by kind, with the library error code', async () => {
    const { page } = s;
    const zip = join(s.dir, 'model.ckpt');
    writeFileSync(zip, Buffer.concat([Buffer.from('PK\u0003\u0004'), Buffer.alloc(200, 1)]));
    const html = join(s.dir, 'download.safetensors');
    writeFileSync(html, '<!DOCTYPE html><html><head><title>Sign in</title></head><body>please log in</body></html>');
    await upload(page, [zip, html]);
    const bad = page.locator('#loras li.bad');
    expect(await bad.count()).toBe(2);
    const first = (await bad.nth(0).textContent()) ?? '';
    expect(first).toContain('SAFETENSORS_NOT_SAFETENSORS');
    expect(first).toMatch(/ZIP|PyTorch/);
    expect(first).not.toMatch(/too large/i);
    const second = (await bad.nth(1).textContent()) ?? '';
    expect(second).toContain('SAFETENSORS_NOT_SAFETENSORS');
    expect(second).toMatch(/HTML/i);
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('true');
    await clearAll(page);
  });

  it('names each file with its architecture when they differ, and the message goes when they agree', async () => {
    const { page } = s;
    await upload(page, [FIXTURE.style, FIXTURE.lcm, FIXTURE.sdxlLcm]);
    const status = (await page.textContent('#status')) ?? '';
    expect(status).toContain('different architectures');
    expect(status).toContain('style-lora.kohya.safetensors, lcm-lora.kohya.safetensors are SD 1.5');
    expect(status).toMatch(/lcm-lora\.kohya\.safetensors is SDXL/);
    const odd = page.locator('#loras li.conflict');
    expect(await odd.count()).toBe(1);
    expect(await odd.locator('.note').textContent()).toContain('SDXL');
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('true');

    await odd.locator('button.remove').click();
    expect(await page.textContent('#status')).not.toContain('different architectures');
    expect(await page.locator('#loras li.conflict').count()).toBe(0);
    expect(await page.getAttribute('#merge', 'aria-disabled')).toBe('false');
    await clearAll(page);
    expect(s.errors).toEqual([]);
  });
});
