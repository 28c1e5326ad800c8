/**
 * The merge page with bigger inputs (two full-size SD1.5 LoRAs, generated): reading, merging and writing each show
 * a percentage, the page's own thread has no task over 100 ms while it works (Long Tasks API), and "Save to disk"
 * streams the result through the File System Access API (showSaveFilePicker, stubbed here because headless
 * Chromium cannot show its dialog) — the same bytes as the Blob download.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { syntheticLora } from '../../src/fixtures/generate.js';
import { writeSafetensors } from '../../src/safetensors/index.js';
import { clearAll, mergeOutcome, openPage, upload, type PageSession } from './page-helpers.js';

declare global {
  interface Window {
    longTasks: number[];
    seen: string[];
    saved: { name: string; size: number; sha256: string } | null;
    longTaskAt: string[];
  }
}

async function fullSizeLora(path: string, seed: number): Promise<void> {
  const encoded = syntheticLora('sd15', 'full', { rank: 8, alpha: 8, targets: 'lcm', format: 'kohya', seed });
  await writeSafetensors(path, encoded.tensors, { metadata: encoded.metadata });
}

describe('merge page with full-size inputs (headless Chromium)', () => {
  let s: PageSession;
  let a: string;
  let b: string;
  beforeAll(async () => {
    s = await openPage();
    a = join(s.dir, 'full-a.safetensors');
    b = join(s.dir, 'full-b.safetensors');
    await fullSizeLora(a, 1);
    await fullSizeLora(b, 2);
    await s.page.evaluate(() => {
      window.longTasks = [];
      window.longTaskAt = [];
      window.seen = [];
      const t0 = performance.now();
      new PerformanceObserver((list) => {
        for (const e of list.getEntries())
          if (e.startTime >= t0) {
            window.longTasks.push(e.duration);
            window.longTaskAt.push(`${e.startTime.toFixed(0)}+${e.duration.toFixed(0)}`);
          }
      }).observe({ type: 'longtask', buffered: true });
      const record = () => {
        window.seen.push(`@${performance.now().toFixed(0)}`);
        window.seen.push(document.getElementById('progress')?.getAttribute('aria-valuetext') ?? '');
        for (const f of Array.from(document.querySelectorAll('#loras .loading .facts')))
          window.seen.push(f.textContent ?? '');
      };
      new MutationObserver(record).observe(document.body, {
        subtree: true,
        childList: true,
        characterData: true,
        attributes: true,
        attributeFilter: ['aria-valuetext'],
      });
    });
  });
  afterAll(async () => {
    await s?.close();
  });

  // A page thread that is merely waiting for a CPU (2 cores shared by many jobs here) shows up as a long task too.
  // A control page in the same browser, doing nothing but a 20 ms timer, measures that starvation over the same
  // period: the merge page must stay under 100 ms, or — only while the control page itself is starved (its own
  // tasks ≥ 50 ms) — within twice the control's longest task. A real freeze (heavy work on the page's thread) is
  // hundreds of ms to seconds and fails either way. With LORA_MIX_STRICT_LONG_TASKS=1 the limit is 100 ms, period.
  it('shows reading, merging and writing in percent, with no main-thread task over 100 ms', async () => {
    await s.page.evaluate(() => {
      window.longTasks = [];
      window.longTaskAt = [];
      window.seen = [];
    });
    const browser = s.browser;
    if (!browser) throw new Error('this test needs a session with its own browser (no userDataDir)');
    const control = await browser.newPage();
    await control.goto(`${s.url}index.html`);
    await control.evaluate(() => {
      const w = window as unknown as { longTasks: number[] };
      w.longTasks = [];
      new PerformanceObserver((list) => {
        for (const e of list.getEntries()) w.longTasks.push(e.duration);
      }).observe({ type: 'longtask' });
      setInterval(() => {
        document.title = performance.now().toFixed(0);
      }, 20);
    });
    const { page } = s;
    await clearAll(page);
    await upload(page, [a, b]);
    await page.selectOption('#dtype', 'F16');
    expect(await mergeOutcome(page)).toBe('result');
    const seen = await page.evaluate(() => window.seen);
    const pct = (re: RegExp) =>
      seen.flatMap((t) => {
        const m = re.exec(t);
        return m ? [Number(m[1])] : [];
      });
    const reading = pct(/^reading… (\d+) %$/);
    const merging = pct(/^Merging (\d+) %$/);
    const writing = pct(/^Writing (\d+) %$/);
    expect(reading.length).toBeGreaterThan(0);
    expect(Math.max(...reading)).toBe(100);
    expect(merging.length).toBeGreaterThan(0);
    expect(Math.max(...merging)).toBe(100);
    expect(writing.length).toBeGreaterThan(0);
    expect(Math.max(...writing)).toBe(100);
    const longTasks = await page.evaluate(() => window.longTasks);
    const at = await page.evaluate(() => window.longTaskAt);
    const starved = await control.evaluate(() => (window as unknown as { longTasks: number[] }).longTasks);
    await control.close();
    const worst = Math.max(0, ...longTasks);
    const controlWorst = Math.max(0, ...starved);
    // LORA_MIX_STRICT_LONG_TASKS=1 (the run quoted in docs/browser.md, taken at normal priority under the bench
    // lock on a quiet machine): the 100 ms whatever the control page shows.
    const strict = process.env.LORA_MIX_STRICT_LONG_TASKS === '1';
    const limit = !strict && controlWorst >= 50 ? Math.max(100, 2 * controlWorst) : 100;
    console.log(
      `long tasks: page's longest ${worst.toFixed(0)} ms (${longTasks.length} over 50 ms), control page's longest ` +
        `${controlWorst.toFixed(0)} ms; limit ${limit.toFixed(0)} ms${strict ? ' (strict)' : ''}`,
    );
    expect(
      worst,
      `long tasks ${at.join(', ')}; control page's ${starved.map((d) => d.toFixed(0)).join(', ')}`,
    ).toBeLessThan(limit);
  });

  it('saves with showSaveFilePicker the same bytes the download link gives', async () => {
    const { page } = s;
    await page.evaluate(() => {
      window.saved = null;
      (window as unknown as { showSaveFilePicker: unknown }).showSaveFilePicker = async (o: {
        suggestedName: string;
      }) => ({
        async createWritable() {
          const parts: Uint8Array[] = [];
          return new WritableStream<Uint8Array>({
            write(chunk) {
              parts.push(chunk.slice());
            },
            async close() {
              const all = await new Blob(parts as Uint8Array<ArrayBuffer>[]).arrayBuffer();
              const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', all));
              const sha256 = Array.from(digest, (x) => x.toString(16).padStart(2, '0')).join('');
              window.saved = { name: o.suggestedName, size: all.byteLength, sha256 };
            },
          });
        },
      });
    });
    // The button appears for results made while the API is there.
    await page.locator('#loras input.weight').first().fill('0.9');
    expect(await mergeOutcome(page)).toBe('result');
    expect(await page.locator('#save').isVisible()).toBe(true);
    await page.click('#save');
    await page.waitForFunction(() => window.saved !== null);
    const saved = await page.evaluate(() => window.saved!);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
    const path = join(s.dir, 'downloaded.safetensors');
    await download.saveAs(path);
    const fromLink = new Uint8Array(readFileSync(path));
    expect(saved.name).toBe(download.suggestedFilename());
    expect(saved.size).toBe(fromLink.length);
    expect(saved.sha256).toBe(createHash('sha256').update(fromLink).digest('hex'));
    expect(await page.textContent('#status')).toMatch(/^Saved /);
    expect(s.errors).toEqual([]);
  });
});
