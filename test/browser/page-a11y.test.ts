/**
 * The merge page at phone sizes and without a mouse: no horizontal scroll at 360–430 px (no element wider than the
 * viewport, even with a very long file name and error), every control and the progress bar has an accessible
 * name, keyboard-only use works and focus stays where the user was after Merge and Remove, and colours meet
 * contrast (text ≥ 4.5:1, borders of controls and cards ≥ 3:1), computed from the styles Chromium applies.
 */
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clearAll, FIXTURE, mergeOutcome, openPage, upload, type PageSession } from './page-helpers.js';

/** Elements (visible) whose right edge passes the viewport, as short descriptions. */
async function overflowing(page: Page): Promise<{ scroll: number; width: number; wide: string[] }> {
  return page.evaluate(() => {
    const width = window.innerWidth;
    const wide: string[] = [];
    for (const e of Array.from(document.querySelectorAll<HTMLElement>('body *'))) {
      const r = e.getBoundingClientRect();
      if (r.width === 0 || r.height === 0) continue;
      if (r.right > width + 0.5 || r.left < -0.5)
        wide.push(`${e.tagName.toLowerCase()}#${e.id}.${e.className} ${r.left.toFixed(0)}…${r.right.toFixed(0)}`);
    }
    return { scroll: document.documentElement.scrollWidth, width, wide };
  });
}

/** Controls without an accessible name (aria-label, aria-labelledby, a <label>, or their own text). */
async function unnamed(page: Page): Promise<string[]> {
  return page.evaluate(() => {
    const nameOf = (e: HTMLElement): string => {
      const aria = e.getAttribute('aria-label');
      if (aria?.trim()) return aria;
      const by = e.getAttribute('aria-labelledby');
      if (by)
        return by
          .split(/\s+/)
          .map((id) => document.getElementById(id)?.textContent ?? '')
          .join(' ');
      const labels = (e as HTMLInputElement).labels;
      if (labels && labels.length > 0)
        return Array.from(labels)
          .map((l) => l.textContent ?? '')
          .join(' ');
      if (e.tagName === 'BUTTON' || e.tagName === 'A') return e.textContent ?? '';
      return '';
    };
    const out: string[] = [];
    for (const e of Array.from(
      document.querySelectorAll<HTMLElement>('input, select, button, progress, a[href], textarea'),
    )) {
      if (e.hidden || e.closest('[hidden]')) continue;
      if (nameOf(e).trim() === '') out.push(`${e.tagName.toLowerCase()}#${e.id}.${e.className}`);
    }
    return out;
  });
}

interface ContrastProblem {
  what: string;
  ratio: number;
  need: number;
}

/** Text below 4.5:1 against its background, and control/card borders below 3:1 against what surrounds them. */
async function contrastProblems(page: Page): Promise<ContrastProblem[]> {
  return page.evaluate(() => {
    const rgba = (s: string): [number, number, number, number] => {
      const m = /rgba?\(([^)]+)\)/.exec(s);
      if (!m) return [0, 0, 0, 0];
      const p = m[1]!
        .split(/[ ,/]+/)
        .filter(Boolean)
        .map(Number);
      return [p[0] ?? 0, p[1] ?? 0, p[2] ?? 0, p[3] ?? 1];
    };
    const lum = ([r, g, b]: number[]) => {
      const c = [r!, g!, b!].map((v) => {
        const x = v / 255;
        return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
      });
      return 0.2126 * c[0]! + 0.7152 * c[1]! + 0.0722 * c[2]!;
    };
    const ratio = (a: number[], b: number[]) => {
      const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
      return (x! + 0.05) / (y! + 0.05);
    };
    /** The first opaque background at or above `e`. */
    const background = (e: Element | null): number[] => {
      for (let n = e; n; n = n.parentElement) {
        const c = rgba(getComputedStyle(n).backgroundColor);
        if (c[3] > 0.5) return c;
      }
      return [255, 255, 255, 1];
    };
    const visible = (e: HTMLElement) => {
      const r = e.getBoundingClientRect();
      return r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== 'hidden';
    };
    const label = (e: Element) => `${e.tagName.toLowerCase()}#${e.id}.${(e as HTMLElement).className}`;
    const out: { what: string; ratio: number; need: number }[] = [];
    for (const e of Array.from(document.querySelectorAll<HTMLElement>('body *'))) {
      if (!visible(e)) continue;
      const style = getComputedStyle(e);
      const hasText = Array.from(e.childNodes).some(
        (n) => n.nodeType === Node.TEXT_NODE && (n.textContent ?? '').trim(),
      );
      if (hasText) {
        const r = ratio(rgba(style.color), background(e));
        if (r < 4.5) out.push({ what: `text of ${label(e)}`, ratio: r, need: 4.5 });
      }
      const bordered = parseFloat(style.borderTopWidth) > 0 && style.borderTopStyle !== 'none';
      if (bordered) {
        const outside = background(e.parentElement);
        const own = rgba(style.backgroundColor);
        const edge = ratio(rgba(style.borderTopColor), outside);
        const fill = own[3] > 0.5 ? ratio(own, outside) : 0;
        const r = Math.max(edge, fill);
        if (r < 3) out.push({ what: `border of ${label(e)}`, ratio: r, need: 3 });
      }
    }
    return out;
  });
}

/** Show every kind of card and message the page has: loaded, bad, result, error. */
async function fillPage(s: PageSession, longName: string, longBad: string): Promise<void> {
  const { page } = s;
  await upload(page, [longName, FIXTURE.lcm]);
  expect(await mergeOutcome(page)).toBe('result');
  await upload(page, [longBad]);
}

describe('merge page on phones, by keyboard, for assistive technology (headless Chromium)', () => {
  let s: PageSession;
  let longName: string;
  let longBad: string;
  beforeAll(async () => {
    s = await openPage({ viewport: { width: 390, height: 844 } });
    const stem = 'my_really_long_character_lora_without_any_spaces_trained_for_many_epochs_on_a_large_dataset_v1.2.3';
    longName = join(s.dir, `${stem}.safetensors`);
    copyFileSync(FIXTURE.style, longName);
    longBad = join(s.dir, `${stem}_BROKEN_COPY_${'x'.repeat(60)}.safetensors`);
    writeFileSync(longBad, Buffer.concat([Buffer.from('PK\u0003\u0004'), Buffer.alloc(64)]));
  });
  afterAll(async () => {
    await s?.close();
  });

  for (const width of [360, 390, 430]) {
    it(`has no element wider than a ${width} px viewport`, async () => {
      const { page } = s;
      await page.setViewportSize({ width, height: 800 });
      await clearAll(page);
      await fillPage(s, longName, longBad);
      expect(await page.locator('#loras li.bad').count()).toBe(1);
      const o = await overflowing(page);
      expect(o.wide).toEqual([]);
      expect(o.scroll).toBeLessThanOrEqual(o.width);
      // The error card of a failed merge, with its long code, fits too.
      await page.locator('#loras li.bad button.remove').click();
      for (const w of await page.locator('#loras input.weight').all()) await w.fill('0');
      expect(await mergeOutcome(page)).toBe('error');
      const e = await overflowing(page);
      expect(e.wide).toEqual([]);
      expect(e.scroll).toBeLessThanOrEqual(e.width);
    });
  }

  it('names every control and the progress bar', async () => {
    const { page } = s;
    await page.setViewportSize({ width: 390, height: 844 });
    await clearAll(page);
    await fillPage(s, longName, longBad);
    expect(await unnamed(page)).toEqual([]);
    expect(await page.getAttribute('#progress', 'aria-label')).toBe('Merge progress');
    // Reading bars are named after their file (checked while a card is still being read).
    const names = await page.evaluate(async () => {
      const input = document.getElementById('files') as HTMLInputElement;
      const seen: string[] = [];
      const obs = new MutationObserver(() => {
        for (const p of Array.from(document.querySelectorAll('#loras progress')))
          seen.push(p.getAttribute('aria-label') ?? '');
      });
      obs.observe(document.getElementById('loras')!, { childList: true, subtree: true });
      const dt = new DataTransfer();
      dt.items.add(new File([new Uint8Array(16)], 'zeros.safetensors'));
      input.files = dt.files;
      input.dispatchEvent(new Event('change'));
      await new Promise((r) => setTimeout(r, 300));
      obs.disconnect();
      return seen;
    });
    expect(names).toContain('Reading zeros.safetensors');
  });

  it('meets contrast: text ≥ 4.5:1, borders ≥ 3:1 (loaded, bad, result and error states)', async () => {
    const { page } = s;
    await clearAll(page);
    expect(await contrastProblems(page)).toEqual([]); // empty page, Merge unavailable
    await fillPage(s, longName, longBad);
    expect(await contrastProblems(page)).toEqual([]);
    await page.locator('#loras li.bad button.remove').click();
    for (const w of await page.locator('#loras input.weight').all()) await w.fill('0');
    expect(await mergeOutcome(page)).toBe('error');
    expect(await contrastProblems(page)).toEqual([]);
  });

  it('works from the keyboard alone, and focus stays where the user was after Merge and Remove', async () => {
    const { page } = s;
    await clearAll(page);
    await upload(page, [FIXTURE.lcm, FIXTURE.style]);
    const active = () =>
      page.evaluate(() => {
        const a = document.activeElement as HTMLElement | null;
        return a ? `${a.tagName.toLowerCase()}#${a.id}.${a.className}|${a.getAttribute('aria-label') ?? ''}` : '';
      });

    // Tab order: weight, block weights, Remove of the first card, then the second card's controls.
    await page.locator('#loras input.weight').first().focus();
    await page.keyboard.press('Control+A');
    await page.keyboard.type('0.9');
    await page.keyboard.press('Tab');
    expect(await active()).toContain('input#.blocks');
    await page.keyboard.press('Tab');
    expect(await active()).toContain('Remove lcm-lora.kohya.safetensors');

    // From the last option to Merge; Enter merges and focus stays on Merge (visibly focused).
    await page.locator('#dtype').focus();
    await page.keyboard.press('Tab');
    expect(await active()).toContain('button#merge');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#result:not([hidden])');
    expect(await active()).toContain('button#merge');
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement!).outlineStyle);
    expect(outline).not.toBe('none');
    await page.keyboard.press('Tab');
    expect(await active()).toContain('a#download');

    // Remove by keyboard: focus moves to the next card's Remove, then to the file picker when the list is empty.
    await page.locator('#loras li button.remove').first().focus();
    await page.keyboard.press('Enter');
    expect(await page.locator('#loras li').count()).toBe(1);
    expect(await active()).toContain('Remove style-lora.kohya.safetensors');
    await page.keyboard.press('Space');
    expect(await page.locator('#loras li').count()).toBe(0);
    expect(await active()).toContain('input#files');
    expect(s.errors).toEqual([]);
  });
});
