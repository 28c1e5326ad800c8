/**
 * Browser build: esbuild bundles of the core library and of the example page.
 *
 *   npx tsx scripts/build-browser.ts [--out DIR] [--minify]     (npm run build:browser)
 *
 * Writes
 *   <out>/browser/lora-mix.js   ESM bundle of src/index.ts (the core: safetensors, formats, layouts, arithmetic,
 *                               in-memory fusion, kernels, the LCM scheduler), platform 'browser'
 *   <out>/web/                  the local merge page (examples/web): index.html, style.css, app.js, worker.js
 *
 * Core code must run in a browser unchanged, so every bundle is built with a guard: an import of a Node built-in
 * (`node:fs`, `fs`, `worker_threads`, …) anywhere in the import graph fails the build with the importing file
 * named. Nothing is polyfilled.
 */
import { build, type BuildOptions, type Metafile, type Plugin } from 'esbuild';
import { builtinModules } from 'node:module';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** One forbidden import found while bundling. */
export interface NodeImport {
  /** The file that imports it, relative to the repository root. */
  importer: string;
  /** The specifier as written, e.g. 'node:fs'. */
  specifier: string;
}

const BUILTINS = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));

/** True for 'node:x' and for bare names of Node built-ins ('fs', 'fs/promises', 'worker_threads'). */
export function isNodeBuiltin(specifier: string): boolean {
  return specifier.startsWith('node:') || BUILTINS.has(specifier) || BUILTINS.has(specifier.split('/')[0]!);
}

/**
 * esbuild plugin that refuses Node built-ins. Every offending import is recorded in `found` and reported as a
 * build error naming the importer, so the build fails loudly instead of shipping a broken bundle.
 */
export function noNodeBuiltinsPlugin(found: NodeImport[] = []): Plugin {
  return {
    name: 'lora-mix-no-node-builtins',
    setup(b) {
      b.onResolve({ filter: /.*/ }, (args) => {
        if (!isNodeBuiltin(args.path)) return undefined;
        const importer = args.importer ? relative(REPO_ROOT, args.importer) : '<entry>';
        found.push({ importer, specifier: args.path });
        return {
          errors: [
            {
              text:
                `${importer} imports the Node built-in "${args.path}"; core modules must run in a browser ` +
                `unchanged (only src/node/files.ts, src/cli/** and *-node.ts files may import node: modules)`,
            },
          ],
        };
      });
    },
  };
}

/** Error thrown when a bundle could not be built; `nodeImports` lists forbidden imports, if that was the cause. */
export class BrowserBuildError extends Error {
  constructor(
    message: string,
    readonly nodeImports: readonly NodeImport[],
  ) {
    super(message);
    this.name = 'BrowserBuildError';
  }
}

export interface BundleResult {
  outfile: string;
  bytes: number;
  /** Files of the repository that went into the bundle (relative paths). */
  inputs: string[];
  /** Export names of the ESM output. */
  exports: string[];
  metafile: Metafile;
}

/**
 * Bundle one entry (a file, or inline source resolved from the repository root) as an ESM browser module.
 * Throws BrowserBuildError if anything imports a Node built-in or fails to resolve.
 */
export async function bundle(options: {
  entry?: string;
  /** Inline entry source (instead of `entry`); relative imports resolve from the repository root. */
  contents?: string;
  outfile: string;
  minify?: boolean;
  /** 'esm' (default) or 'iife' (for classic scripts / workers without module support). */
  format?: 'esm' | 'iife';
  globalName?: string;
}): Promise<BundleResult> {
  const found: NodeImport[] = [];
  const opts: BuildOptions = {
    bundle: true,
    platform: 'browser',
    format: options.format ?? 'esm',
    target: ['es2022', 'chrome120'],
    outfile: options.outfile,
    minify: options.minify ?? false,
    sourcemap: true,
    metafile: true,
    logLevel: 'silent',
    legalComments: 'inline',
    globalName: options.globalName,
    plugins: [noNodeBuiltinsPlugin(found)],
    absWorkingDir: REPO_ROOT,
  };
  if (options.contents !== undefined) {
    opts.stdin = { contents: options.contents, resolveDir: REPO_ROOT, sourcefile: 'entry.ts', loader: 'ts' };
  } else if (options.entry !== undefined) {
    opts.entryPoints = [options.entry];
  } else {
    throw new Error('bundle: give entry or contents');
  }
  let metafile: Metafile;
  try {
    const result = await build(opts);
    metafile = result.metafile!;
  } catch (e) {
    const errors = (e as { errors?: { text: string; location?: { file: string; line: number } | null }[] }).errors;
    const lines = errors?.map((x) => (x.location ? `${x.location.file}:${x.location.line}: ${x.text}` : x.text)) ?? [
      String(e),
    ];
    const what = options.entry ?? 'inline entry';
    throw new BrowserBuildError(`browser bundle of ${what} failed:\n  ${lines.join('\n  ')}`, found);
  }
  if (found.length > 0) {
    throw new BrowserBuildError(
      `browser bundle pulls in Node built-ins: ${found.map((f) => `${f.importer} → ${f.specifier}`).join(', ')}`,
      found,
    );
  }
  const outKey = Object.keys(metafile.outputs).find((k) => k.endsWith('.js'))!;
  const out = metafile.outputs[outKey]!;
  return {
    outfile: options.outfile,
    bytes: out.bytes,
    inputs: Object.keys(metafile.inputs),
    exports: out.exports,
    metafile,
  };
}

export interface BrowserBuild {
  /** dist/browser/lora-mix.js (or under the chosen out folder). */
  libFile: string;
  lib: BundleResult;
  /** Folder with the page: index.html, style.css, app.js, worker.js. */
  webDir: string;
}

/** Build the library bundle and the example page. */
export async function buildBrowser(options: { outDir?: string; minify?: boolean } = {}): Promise<BrowserBuild> {
  const outDir = resolve(options.outDir ?? join(REPO_ROOT, 'dist'));
  const libFile = join(outDir, 'browser', 'lora-mix.js');
  const webDir = join(outDir, 'web');
  const lib = await bundle({ entry: 'src/index.ts', outfile: libFile, minify: options.minify });
  await bundle({ entry: 'examples/web/app.ts', outfile: join(webDir, 'app.js'), minify: options.minify });
  await bundle({ entry: 'examples/web/worker.ts', outfile: join(webDir, 'worker.js'), minify: options.minify });
  await mkdir(webDir, { recursive: true });
  for (const f of ['index.html', 'style.css']) await copyFile(join(REPO_ROOT, 'examples/web', f), join(webDir, f));
  return { libFile, lib, webDir };
}

async function main(argv: string[]): Promise<void> {
  let outDir: string | undefined;
  let minify = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--out') outDir = argv[++i];
    else if (a === '--minify') minify = true;
    else throw new Error(`build-browser: unknown argument ${a}`);
  }
  const t0 = performance.now();
  const built = await buildBrowser({ outDir, minify });
  const ms = (performance.now() - t0).toFixed(0);
  process.stdout.write(
    `${relative(process.cwd(), built.libFile)}  ${(built.lib.bytes / 1024).toFixed(0)} KiB, ` +
      `${built.lib.exports.length} exports, ${built.lib.inputs.length} modules\n` +
      `${relative(process.cwd(), built.webDir)}/  (the page: npm run serve)\n` +
      `built in ${ms} ms, no Node built-ins\n`,
  );
}

/** Read a built file as text (used by tests that scan bundles). */
export async function readBuilt(path: string): Promise<string> {
  return readFile(path, 'utf8');
}

/** Write a small HTML page next to a bundle (used by the GPU test harness). */
export async function writeHtml(path: string, body: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(
    path,
    `<!doctype html>\n<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>lora-mix</title></head>\n<body>${body}</body></html>\n`,
  );
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
