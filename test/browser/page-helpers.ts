/**
 * Helpers for driving the merge page (examples/web) in headless Chromium: build and open it, add files, clear the
 * list, merge and wait for the outcome.
 */
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { buildBrowser, REPO_ROOT } from '../../scripts/build-browser.js';
import { openSession, tempDir, type BrowserSession } from './harness.js';

export const FIXTURE = {
  lcm: join(REPO_ROOT, 'fixtures/sd15/lcm-lora.kohya.safetensors'),
  style: join(REPO_ROOT, 'fixtures/sd15/style-lora.kohya.safetensors'),
  stylePeft: join(REPO_ROOT, 'fixtures/sd15/style-lora.peft.safetensors'),
  sdxlLcm: join(REPO_ROOT, 'fixtures/sdxl/lcm-lora.kohya.safetensors'),
  truncated: join(REPO_ROOT, 'fixtures/bad/truncated.safetensors'),
};

export interface PageSession extends BrowserSession {
  /** A temporary folder for files the test writes; removed by close(). */
  dir: string;
}

/** Build the page into a temporary folder, open it, wait until its worker is ready. */
export async function openPage(
  options: { viewport?: { width: number; height: number }; query?: string; isolate?: boolean } = {},
): Promise<PageSession> {
  const tmp = tempDir('page');
  const built = await buildBrowser({ outDir: tmp.dir });
  const session = await openSession({
    root: built.webDir,
    ...(options.query ? { path: `index.html?${options.query}` } : {}),
    ...(options.isolate === false ? { isolate: false } : {}),
  });
  if (options.viewport) await session.page.setViewportSize(options.viewport);
  await session.page.waitForSelector('body[data-ready="true"]');
  return {
    ...session,
    dir: tmp.dir,
    async close() {
      await session.close();
      tmp.remove();
    },
  };
}

/** Add files through the file input and wait until no card is still being read. */
export async function upload(page: Page, paths: string[]): Promise<void> {
  await page.setInputFiles('#files', paths);
  await page.waitForFunction(() => document.querySelectorAll('#loras .loading').length === 0);
}

/** Remove every card with its Remove button. */
export async function clearAll(page: Page): Promise<void> {
  while ((await page.locator('#loras li').count()) > 0) await page.locator('#loras li button.remove').first().click();
}

/** Click Merge and wait for a result or an error; returns which. */
export async function mergeOutcome(page: Page): Promise<'result' | 'error'> {
  await page.click('#merge');
  await page.waitForFunction(
    () => !document.getElementById('result')!.hidden || !document.getElementById('error')!.hidden,
  );
  return (await page.locator('#result').isVisible()) ? 'result' : 'error';
}
