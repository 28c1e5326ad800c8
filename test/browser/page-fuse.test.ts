/**
 * The page's fuse writing straight into a file: where the browser has showSaveFilePicker, Fuse asks for the
 * destination first and the worker streams the checkpoint into that file's writable stream (here the picker is
 * driven with a real FileSystemFileHandle from the origin-private file system, since headless Chromium cannot show
 * the dialog), never holding it whole. The file equals the download the page offers without the dialog, and the
 * same with the kernel on one thread (?threads=1) as on every core (the page is cross-origin isolated); that download is
 * an origin-private file the worker wrote, of which only the newest is kept. A closed dialog cancels quietly. (The sink's failure handling: test/web-streams.test.ts.)
 */
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Page } from 'playwright-core';
import { REPO_ROOT } from '../../scripts/build-browser.js';
import { clearAll, FIXTURE, openPage, upload, type PageSession } from './page-helpers.js';

const BASE = join(REPO_ROOT, 'fixtures/sd15/base.safetensors');

interface Fused {
  kernel: string;
  bytes: number;
  savedTo?: string;
  keptIn?: string;
}

/** Files the worker keeps in its folder of the origin-private file system (lora-mix-results/<worker>/). */
async function keptFiles(page: Page): Promise<string[]> {
  return page.evaluate(async () => {
    type Dir = FileSystemDirectoryHandle & { entries(): AsyncIterable<[string, FileSystemHandle]> };
    const root = (await (await navigator.storage.getDirectory()).getDirectoryHandle('lora-mix-results')) as Dir;
    const names: string[] = [];
    for await (const [folder, h] of root.entries())
      if (h.kind === 'directory')
        for await (const [name] of (h as Dir).entries()) names.push(`${folder.replace(/^w\w+$/, 'w')}/${name}`);
    return names.sort();
  });
}

/** Replace the save dialog: 'opfs' answers with an OPFS file handle, 'none' removes the API, else it rejects. */
async function picker(page: Page, mode: 'opfs' | 'none' | 'abort'): Promise<void> {
  await page.evaluate((m) => {
    const w = window as unknown as { showSaveFilePicker: unknown };
    if (m === 'none') w.showSaveFilePicker = undefined;
    else if (m === 'abort')
      w.showSaveFilePicker = async () => {
        throw new DOMException('The user aborted a request.', 'AbortError');
      };
    else
      w.showSaveFilePicker = async (o: { suggestedName: string }) =>
        (await navigator.storage.getDirectory()).getFileHandle(o.suggestedName, { create: true });
  }, mode);
}

/** SHA-256 and size of a file in the origin-private file system. */
async function opfsFile(page: Page, name: string): Promise<{ sha256: string; size: number }> {
  return page.evaluate(async (n) => {
    const file = await (await (await navigator.storage.getDirectory()).getFileHandle(n)).getFile();
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', await file.arrayBuffer()));
    return { sha256: Array.from(digest, (x) => x.toString(16).padStart(2, '0')).join(''), size: file.size };
  }, name);
}

async function fuse(page: Page): Promise<'done' | 'error' | 'cancelled'> {
  await page.evaluate(() => {
    delete document.body.dataset.fuse;
  });
  await page.click('#fuse');
  await page.waitForFunction(
    () =>
      document.body.dataset.fuse !== undefined ||
      !document.getElementById('error')!.hidden ||
      /cancelled/.test(document.getElementById('tools-status')?.textContent ?? ''),
  );
  if (!(await page.locator('#error').isHidden())) return 'error';
  return (await page.evaluate(() => document.body.dataset.fuse !== undefined)) ? 'done' : 'cancelled';
}

const lastFuse = (page: Page) =>
  page.evaluate(() => (window as unknown as { loraMixPage: { fuses: Fused[] } }).loraMixPage.fuses.at(-1));

async function prepare(page: Page): Promise<void> {
  await clearAll(page);
  await upload(page, [FIXTURE.lcm, FIXTURE.style]);
  await page.locator('#loras input.weight').nth(1).fill('0.8');
  await page.setInputFiles('#base', BASE);
  await page.waitForFunction(() => document.getElementById('fuse')?.getAttribute('aria-disabled') === 'false');
}

describe('page fuse into a chosen file (headless Chromium)', () => {
  let s: PageSession;
  let one: PageSession;
  beforeAll(async () => {
    s = await openPage();
    one = await openPage({ query: 'threads=1' });
  });
  afterAll(async () => {
    await s?.close();
    await one?.close();
  });

  it('streams into the chosen file: the bytes of the download, the same on one thread as on all', async () => {
    const { page } = s;
    await prepare(page);
    await picker(page, 'opfs');
    expect(await fuse(page)).toBe('done');
    const streamed = await lastFuse(page);
    const name = 'base.fused.safetensors';
    expect(streamed?.savedTo).toBe(name);
    expect(await page.locator('#fuse-download').isHidden()).toBe(true);
    expect(await page.textContent('#fuse-summary')).toContain(`written to ${name}`);
    const file = await opfsFile(page, name);
    expect(file.size).toBe(streamed?.bytes);
    // The page is cross-origin isolated: the kernel runs on every core.
    expect(await page.evaluate(() => crossOriginIsolated)).toBe(true);
    expect(streamed?.kernel).toMatch(/×\d+ threads/);

    // Without the dialog: a download of the same bytes, kept in an origin-private file the worker wrote through a
    // synchronous access handle; a second fuse replaces it (only the newest is kept).
    await picker(page, 'none');
    for (const round of [1, 2]) {
      expect(await fuse(page)).toBe('done');
      expect((await lastFuse(page))?.keptIn).toBe('origin-private file');
      expect(await keptFiles(page)).toEqual([`w/fuse-${round}.safetensors`]);
      expect(await page.locator('#fuse-download').isVisible()).toBe(true);
      const [d] = await Promise.all([page.waitForEvent('download'), page.click('#fuse-download')]);
      const path = join(s.dir, 'fused-download.safetensors');
      await d.saveAs(path);
      expect(createHash('sha256').update(readFileSync(path)).digest('hex')).toBe(file.sha256);
    }

    // One kernel thread (?threads=1): the same file.
    await prepare(one.page);
    await picker(one.page, 'opfs');
    expect(await fuse(one.page)).toBe('done');
    expect((await lastFuse(one.page))?.kernel).not.toMatch(/×/);
    expect(await opfsFile(one.page, name)).toEqual(file);
    expect(s.errors).toEqual([]);
    expect(one.errors).toEqual([]);
  });

  it('after a fuse (which lets the decoded inputs go and reads them from their files), a merge gives the same file as before', async () => {
    const { page } = s;
    await prepare(page);
    const merged = async (): Promise<string> => {
      const before = await page.evaluate(() => document.body.dataset.merged ?? '');
      await page.click('#merge');
      await page.waitForFunction(
        (prev) => (document.body.dataset.merged ?? '') !== prev || !document.getElementById('error')!.hidden,
        before,
      );
      expect(await page.locator('#error').isHidden()).toBe(true);
      const [d] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
      const path = join(s.dir, `merged-${Date.now()}.safetensors`);
      await d.saveAs(path);
      return createHash('sha256').update(readFileSync(path)).digest('hex');
    };
    const first = await merged();
    await picker(page, 'none');
    expect(await fuse(page)).toBe('done');
    expect(await merged()).toBe(first);
    expect(s.errors).toEqual([]);
  });

  it('when the storage quota runs out while the checkpoint is written, the page keeps it in memory: the same bytes', async () => {
    const { page } = s;
    await prepare(page);
    await picker(page, 'none');
    const download = async (): Promise<string> => {
      const [d] = await Promise.all([page.waitForEvent('download'), page.click('#fuse-download')]);
      const path = join(s.dir, `fused-${Date.now()}.safetensors`);
      await d.saveAs(path);
      return createHash('sha256').update(readFileSync(path)).digest('hex');
    };
    expect(await fuse(page)).toBe('done');
    const fused = await lastFuse(page);
    expect(fused?.keptIn).toBe('origin-private file');
    const expected = await download();
    const kept = await keptFiles(page);
    expect(kept).toHaveLength(1);
    // The origin's storage runs out halfway through the next checkpoint: the worker's synchronous access handles
    // refuse writes past that offset with QuotaExceededError, as Chromium's do when the quota is used up (its CDP
    // quota override does not reach origin-private files). Its writes start in an origin-private file, and the
    // page must move them to memory.
    const limit = Math.floor((fused?.bytes ?? 0) / 2);
    const patched = async (on: boolean) => {
      // The page's own worker (the kernel's threads block in Atomics.wait and answer no evaluate).
      for (const w of page.workers().filter((x) => /\/worker\.js/.test(x.url()))) {
        await w.evaluate(
          ([at, enable]) => {
            type Handle = { write(b: Uint8Array, o: { at: number }): number };
            const g = self as unknown as {
              FileSystemSyncAccessHandle?: { prototype: Handle };
              realWrite?: Handle['write'];
            };
            const proto = g.FileSystemSyncAccessHandle?.prototype;
            if (!proto) return;
            g.realWrite ??= proto.write;
            const real = g.realWrite;
            proto.write = enable
              ? function (this: Handle, b, o) {
                  if (o.at + b.byteLength > at) throw new DOMException('quota exceeded', 'QuotaExceededError');
                  return real.call(this, b, o);
                }
              : real;
          },
          [limit, on] as const,
        );
      }
    };
    await patched(true);
    try {
      expect(await fuse(page)).toBe('done');
      expect((await lastFuse(page))?.keptIn).toBe('memory');
      expect(await download()).toBe(expected);
      // The half-written file is gone; the previous result's file is kept until a newer one is complete.
      expect(await keptFiles(page)).toEqual(kept);
    } finally {
      await patched(false);
    }
    expect(s.errors).toEqual([]);
  });

  it('a closed dialog cancels quietly, and Fuse works again afterwards', async () => {
    const { page } = s;
    await prepare(page);
    await picker(page, 'abort');
    expect(await fuse(page)).toBe('cancelled');
    expect(await page.locator('#error').isHidden()).toBe(true);
    expect(await page.getAttribute('#fuse', 'aria-disabled')).toBe('false');
    // Choosing a file afterwards works.
    await picker(page, 'opfs');
    expect(await fuse(page)).toBe('done');
    expect(s.errors).toEqual([]);
  });
});
