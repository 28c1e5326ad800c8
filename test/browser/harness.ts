/**
 * Browser test harness: headless Chromium (the system one, never a downloaded browser) driven by
 * playwright-core, pages served from 127.0.0.1 by scripts/serve.ts, bundles built by scripts/build-browser.ts.
 *
 * If Chromium is missing the harness throws — browser tests fail, they never pass vacuously.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { startStaticServer, type StaticServer } from '../../scripts/serve.js';

export const CHROMIUM_PATH = process.env.LORA_MIX_CHROMIUM ?? '/usr/bin/chromium';

/**
 * Flags that keep a real WebGPU adapter in headless Chromium on a machine without a GPU (Dawn on SwiftShader)
 * and stop the browser from talking to the network. Measured here: `--disable-gpu` does NOT remove the WebGPU
 * adapter on Chromium 156, but it is not needed either, so it is left out. Playwright gives every launch a fresh,
 * empty profile (user-data-dir) of its own.
 */
export const CHROMIUM_ARGS: readonly string[] = [
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

export function requireChromium(): string {
  if (!existsSync(CHROMIUM_PATH)) {
    throw new Error(
      `headless Chromium not found at ${CHROMIUM_PATH}: the browser tests need it. Install it with ` +
        '`apt-get update && apt-get install -y chromium` (CI does this in .ci/run), or point LORA_MIX_CHROMIUM ' +
        'at a Chromium binary.',
    );
  }
  return CHROMIUM_PATH;
}

/** Launch the system Chromium headless; `args` replaces CHROMIUM_ARGS (e.g. to run without WebGPU). */
export async function launchChromium(args: readonly string[] = CHROMIUM_ARGS): Promise<Browser> {
  return chromium.launch({ executablePath: requireChromium(), headless: true, args: [...args] });
}

export interface BrowserSession {
  /** null for a session on a persistent profile (`userDataDir`). */
  browser: Browser | null;
  page: Page;
  server: StaticServer;
  /** Base URL of the static server (ends with '/'). */
  url: string;
  /** Console messages of type 'error' and uncaught page errors, for diagnostics. */
  errors: string[];
  close(): Promise<void>;
}

/**
 * Serve `root` (plus optional mounts) on 127.0.0.1, launch Chromium, open `path` (default index.html) and wait for
 * the load event.
 */
export async function openSession(options: {
  root: string;
  mounts?: Record<string, string>;
  path?: string;
  /** Chromium flags instead of CHROMIUM_ARGS. */
  args?: readonly string[];
  /** Serve with the cross-origin isolation headers (default true; scripts/serve.ts). */
  isolate?: boolean;
  /**
   * A profile folder on disk (Playwright's persistent context) instead of a fresh in-memory one: its storage quota is
   * a share of the disk's size, so a page may write gigabytes to its origin-private file system (bench/browser-vs-cli.ts
   * fuse); an in-memory profile's quota is a small share of RAM.
   */
  userDataDir?: string;
}): Promise<BrowserSession> {
  requireChromium();
  const server = await startStaticServer({
    root: options.root,
    mounts: options.mounts,
    ...(options.isolate === false ? { isolate: false } : {}),
  });
  let browser: Browser | undefined;
  let context: BrowserContext | undefined;
  try {
    let page: Page;
    if (options.userDataDir !== undefined) {
      context = await chromium.launchPersistentContext(options.userDataDir, {
        executablePath: requireChromium(),
        headless: true,
        args: [...(options.args ?? CHROMIUM_ARGS)],
        acceptDownloads: true,
      });
      page = context.pages()[0] ?? (await context.newPage());
    } else {
      browser = await launchChromium(options.args);
      page = await browser.newPage({ acceptDownloads: true });
    }
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
    page.on('response', (r) => {
      if (r.status() >= 400) errors.push(`http ${r.status()}: ${r.url()}`);
    });
    page.on('console', (m) => {
      // Resource failures are reported with their URL by the 'response' handler above.
      if (m.type() === 'error' && !/GL Driver Message|Failed to load resource/.test(m.text()))
        errors.push(`console: ${m.text()}`);
    });
    await page.goto(server.url + (options.path ?? ''), { waitUntil: 'load' });
    const b = browser;
    const c = context;
    return {
      browser: b ?? null,
      page,
      server,
      url: server.url,
      errors,
      async close() {
        await (b ?? c)?.close();
        await server.close();
      },
    };
  } catch (e) {
    await (browser ?? context)?.close();
    await server.close();
    throw e;
  }
}

/** A temporary folder removed by the returned cleanup function. */
export function tempDir(prefix: string): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), `lora-mix-${prefix}-`));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
