/**
 * Browser benchmark: the merge page in headless Chromium against the library in Node, same machine, same run; and
 * the gpu.js fusion kernel on Chromium's software GPU (SwiftShader) against the WASM CPU kernel.
 *
 *   npx tsx bench/browser.ts [--runs N] [--keep] [--record]
 *
 * 1. Merge: a full-size SDXL LCM-LoRA-shaped file (rank 64 on all 788 LCM targets, kohya, F16) and a style-LoRA-
 *    shaped file (rank 32 on UNet attention + both text encoders, F16) are generated into bench/out/browser/
 *    (reused if present). Node: loadLora both, mergeLoras at 1.0 / 0.8, serializeLora (kohya, F16) — in memory,
 *    like the page. Page: upload both files, Merge; the worker's own timings (decode per file; merge + encode)
 *    and the wall time seen from Node. Medians of N runs (default 3).
 * 2. Kernel: W += U·D at rank 64 for a 1280×1280 linear and a 640×5760 conv-shaped (640·3·3) weight, F16 in and
 *    out: gpu.js 'webgpu' and 'webgl2' (SwiftShader: a CPU emulating a GPU) vs the single-thread WASM SIMD kernel
 *    in the same page, and the WASM kernel in Node. Medians of 5 warm runs after one warm-up.
 *    This is a correctness path on a software GPU, not a speed claim.
 * --record appends the tables to bench/RESULTS.md under "browser".
 * The page against the CLI on the full-size SD1.5 files (time and peak memory, merge and fuse) is
 * bench/browser-vs-cli.ts.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { execSync } from 'node:child_process';
import { buildBrowser, bundle, REPO_ROOT, writeHtml } from '../scripts/build-browser.js';
import { generateLora, targetModules } from '../src/fixtures/generate.js';
import { loadLora, serializeLora } from '../src/formats/index.js';
import { createWasmKernel } from '../src/kernels/cpu.js';
import { mergeLoras } from '../src/lora/index.js';
import { f32ToF16 } from '../src/core/dtype.js';
import { openSession, tempDir } from '../test/browser/harness.js';
import { installNodeHost } from '../src/node/install.js';

// Benchmarks import the layers directly: give them file paths, folders and threads as the Node entry does.
installNodeHost();

const args = process.argv.slice(2);
const RUNS = args.includes('--runs') ? Math.max(1, Number(args[args.indexOf('--runs') + 1])) : 3;
const KEEP = args.includes('--keep');
const RECORD = args.includes('--record');

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const sec = (x: number) => `${x.toFixed(2)} s`;
const lines: string[] = [];
const log = (s: string) => {
  console.log(s);
  lines.push(s);
};

const OUT = join(REPO_ROOT, 'bench/out/browser');
const LCM = join(OUT, 'sdxl-lcm-r64.kohya.safetensors');
const STYLE = join(OUT, 'sdxl-style-r32.kohya.safetensors');

async function generate(): Promise<void> {
  mkdirSync(OUT, { recursive: true });
  if (!existsSync(LCM)) {
    await generateLora(LCM, 'sdxl', 'full', {
      rank: 64,
      alpha: 64,
      targets: 'lcm',
      format: 'kohya',
      dtype: 'F16',
      seed: 7,
      metadata: { ss_output_name: 'synthetic-lcm-lora-sdxl' },
    });
  }
  if (!existsSync(STYLE)) {
    await generateLora(STYLE, 'sdxl', 'full', {
      rank: 32,
      alpha: 16,
      targets: 'style',
      format: 'kohya',
      kohyaPaths: 'sgm',
      dtype: 'F16',
      seed: 8,
    });
  }
}

async function nodeMerge(): Promise<{ decode: number; merge: number; bytes: number }> {
  const t0 = performance.now();
  const lcm = await loadLora(LCM);
  const style = await loadLora(STYLE);
  const t1 = performance.now();
  const { lora } = mergeLoras([lcm, style], [1.0, 0.8]);
  const bytes = serializeLora(lora, { format: 'kohya', dtype: 'F16' });
  const t2 = performance.now();
  return { decode: (t1 - t0) / 1000, merge: (t2 - t1) / 1000, bytes: bytes.byteLength };
}

interface PageRun {
  decode: number;
  merge: number;
  wall: number;
  bytes: number;
}

async function pageMerges(runs: number): Promise<PageRun[]> {
  const tmp = tempDir('bench-page');
  const built = await buildBrowser({ outDir: tmp.dir });
  const session = await openSession({ root: built.webDir });
  const { page } = session;
  const out: PageRun[] = [];
  try {
    await page.waitForSelector('body[data-ready="true"]');
    for (let r = 0; r < runs; r++) {
      while ((await page.locator('#loras li').count()) > 0)
        await page.locator('#loras li button.remove').first().click();
      await page.evaluate(() => {
        const o = (window as unknown as { loraMixPage: { loras: unknown[]; merges: unknown[] } }).loraMixPage;
        o.loras.length = 0;
        o.merges.length = 0;
      });
      const t0 = performance.now();
      await page.setInputFiles('#files', [LCM, STYLE]);
      await page.waitForFunction(() => document.querySelectorAll('#loras .loading').length === 0, undefined, {
        timeout: 600_000,
      });
      await page.click('#merge');
      await page.waitForFunction(
        () =>
          (window as unknown as { loraMixPage: { merges: unknown[] } }).loraMixPage.merges.length > 0 ||
          !document.getElementById('error')!.hidden,
        undefined,
        { timeout: 600_000 },
      );
      const wall = (performance.now() - t0) / 1000;
      const seen = await page.evaluate(
        () =>
          (
            window as unknown as {
              loraMixPage: { loras: { seconds: number }[]; merges: { seconds: number; bytes: number }[] };
            }
          ).loraMixPage,
      );
      if (seen.merges.length === 0) throw new Error(`page merge failed: ${await page.textContent('#error')}`);
      // The worker decodes the two files concurrently (interleaved awaits), so the decode phase is the longer one.
      out.push({
        decode: Math.max(...seen.loras.map((l) => l.seconds)),
        merge: seen.merges[0]!.seconds,
        wall,
        bytes: seen.merges[0]!.bytes,
      });
      console.log(
        `  page run ${r + 1}: decode ${sec(out.at(-1)!.decode)}, merge+encode ${sec(out.at(-1)!.merge)}, wall ${sec(wall)}`,
      );
    }
    if (session.errors.length > 0) console.log(`  page errors: ${session.errors.join('; ')}`);
  } finally {
    await session.close();
    tmp.remove();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels

interface KernelShape {
  label: string;
  rows: number;
  cols: number;
  rank: number;
}
const SHAPES: KernelShape[] = [
  { label: '1280×1280 linear', rows: 1280, cols: 1280, rank: 64 },
  { label: '640×5760 conv (640·3·3)', rows: 640, cols: 5760, rank: 64 },
];

function kernelInputs(s: KernelShape): { src: Uint8Array; up: Float32Array; down: Float32Array } {
  let a = 12345;
  const rnd = () => ((a = (Math.imul(a, 1103515245) + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  const w = Float32Array.from({ length: s.rows * s.cols }, () => 0.02 * rnd());
  const h = new Uint16Array(w.length);
  f32ToF16(w, h);
  return {
    src: new Uint8Array(h.buffer),
    up: Float32Array.from({ length: s.rows * s.rank }, () => 0.004 * rnd()),
    down: Float32Array.from({ length: s.rank * s.cols }, () => 0.01 * rnd()),
  };
}

const b64 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');

async function pageKernels(): Promise<Record<string, Record<string, number>>> {
  const tmp = tempDir('bench-gpu');
  await bundle({
    contents: [
      "import { createGpuKernel } from './src/kernels/gpu.js';",
      "import { createWasmKernel } from './src/kernels/cpu.js';",
      '(globalThis as any).loraMixKernels = { createGpuKernel, createWasmKernel };',
    ].join('\n'),
    outfile: join(tmp.dir, 'kernels.js'),
  });
  copyFileSync(join(REPO_ROOT, 'node_modules/gpu.js/dist/gpu-browser.min.js'), join(tmp.dir, 'gpu-browser.min.js'));
  await writeHtml(
    join(tmp.dir, 'index.html'),
    '<script src="gpu-browser.min.js"></script><script type="module" src="kernels.js"></script>',
  );
  const session = await openSession({ root: tmp.dir });
  const result: Record<string, Record<string, number>> = {};
  try {
    await session.page.waitForFunction(() => 'loraMixKernels' in window && 'GPU' in window);
    // tsx keeps function names with a __name() helper that the page does not have.
    await session.page.evaluate('globalThis.__name = (f) => f');
    for (const s of SHAPES) {
      const inp = kernelInputs(s);
      const medians = await session.page.evaluate(
        async ({ s, src, up, down }) => {
          /* eslint-disable @typescript-eslint/no-explicit-any */
          const w = window as any;
          const dec = (x: string) => Uint8Array.from(atob(x), (ch) => ch.charCodeAt(0));
          const job = {
            rows: s.rows,
            cols: s.cols,
            rank: s.rank,
            up: new Float32Array(dec(up).buffer),
            down: new Float32Array(dec(down).buffer),
          };
          const srcBytes = dec(src);
          const dst = new Uint8Array(srcBytes.length);
          const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
          const out: Record<string, number> = {};
          const kernels: [string, () => Promise<any>][] = [
            [
              'gpu.js:webgpu',
              async () => (await w.loraMixKernels.createGpuKernel({ GPU: w.GPU, mode: 'webgpu' })).kernel,
            ],
            [
              'gpu.js:webgl2',
              async () => (await w.loraMixKernels.createGpuKernel({ GPU: w.GPU, mode: 'webgl2' })).kernel,
            ],
            ['wasm (page)', () => w.loraMixKernels.createWasmKernel()],
          ];
          for (const [name, make] of kernels) {
            const k = await make();
            await k.update(srcBytes, 'F16', dst, 'F16', job); // warm-up: compile, allocate
            const times: number[] = [];
            for (let i = 0; i < 5; i++) {
              const t0 = performance.now();
              await k.update(srcBytes, 'F16', dst, 'F16', job);
              times.push((performance.now() - t0) / 1000);
            }
            out[`${name}|${k.backend}`] = med(times);
            await k.dispose();
          }
          return out;
        },
        { s, src: b64(inp.src), up: b64(new Uint8Array(inp.up.buffer)), down: b64(new Uint8Array(inp.down.buffer)) },
      );
      // Node baseline: the same single-thread WASM kernel.
      const k = await createWasmKernel();
      const dst = new Uint8Array(inp.src.length);
      const job = { rows: s.rows, cols: s.cols, rank: s.rank, up: inp.up, down: inp.down };
      await k.update(inp.src, 'F16', dst, 'F16', job);
      const times: number[] = [];
      for (let i = 0; i < 5; i++) {
        const t0 = performance.now();
        await k.update(inp.src, 'F16', dst, 'F16', job);
        times.push((performance.now() - t0) / 1000);
      }
      medians[`wasm (Node)|${k.backend}`] = median(times);
      await k.dispose();
      result[s.label] = medians;
      console.log(`  ${s.label}: ${JSON.stringify(medians)}`);
    }
  } finally {
    await session.close();
    tmp.remove();
  }
  return result;
}

async function main(): Promise<void> {
  const cpu = os.cpus()[0]?.model ?? 'unknown';
  const date = execSync('date -u').toString().trim();
  const chromium = execSync('/usr/bin/chromium --version 2>/dev/null').toString().trim();
  const loadStart = os.loadavg()[0]!;
  console.log('generating inputs (reused when present) …');
  await generate();
  const lcmBytes = readFileSync(LCM).byteLength;
  const styleBytes = readFileSync(STYLE).byteLength;
  const lcmModules = targetModules('sdxl', 'full', 'lcm').length;
  const styleModules = targetModules('sdxl', 'full', 'style').length;

  console.log('Node merges …');
  const node: Awaited<ReturnType<typeof nodeMerge>>[] = [];
  for (let r = 0; r < RUNS; r++) {
    node.push(await nodeMerge());
    console.log(`  node run ${r + 1}: decode ${sec(node.at(-1)!.decode)}, merge+encode ${sec(node.at(-1)!.merge)}`);
  }
  console.log('page merges …');
  const page = await pageMerges(RUNS);
  console.log('kernels …');
  const kernels = await pageKernels();

  const nd = median(node.map((x) => x.decode));
  const nm = median(node.map((x) => x.merge));
  const pd = median(page.map((x) => x.decode));
  const pm = median(page.map((x) => x.merge));
  const pw = median(page.map((x) => x.wall));

  log('## browser');
  log('');
  log(
    `- Machine: ${os.cpus().length} cores, \`node -p os.cpus()[0].model\` = ${cpu}, Node ${process.version}, ${chromium} ` +
      '(Debian package, headless, flags as in test/browser/harness.ts). WebGPU adapter: Dawn on SwiftShader (no GPU on this machine).',
  );
  log(
    `- Load average (1 min) ${loadStart.toFixed(1)} at the start and ${os.loadavg()[0]!.toFixed(1)} at the end: ` +
      'other jobs shared the 2 cores, so single runs vary; compare rows of the same run.',
  );
  log(
    `- Date: ${date}. Command: \`npx tsx bench/browser.ts${RUNS !== 3 ? ` --runs ${RUNS}` : ''}\`; medians of ${RUNS} runs (merge) and of 5 warm runs (kernels), all in one run.`,
  );
  log(
    `- Inputs (generated by src/fixtures/generate.ts): SDXL LCM-LoRA-shaped, rank 64 on all ${lcmModules} LCM targets, kohya, F16, ` +
      `${(lcmBytes / 1e6).toFixed(0)} MB; style-LoRA-shaped, rank 32 on ${styleModules} modules (UNet attention + both text encoders), kohya SGM names, F16, ` +
      `${(styleBytes / 1e6).toFixed(0)} MB. Merge 1.0·LCM + 0.8·style, exact (ranks add), written as kohya F16 in memory ` +
      `(${(node[0]!.bytes / 1e6).toFixed(0)} MB).`,
  );
  log('');
  log('| where | decode both files | merge + encode | total | ratio (total, vs Node) |');
  log('|---|---|---|---|---|');
  log(`| Node (library, one thread) | ${sec(nd)} | ${sec(nm)} | ${sec(nd + nm)} | 1.00× |`);
  log(
    `| Chromium page (Web Worker) | ${sec(pd)} | ${sec(pm)} | ${sec(pd + pm)} | ${((pd + pm) / (nd + nm)).toFixed(2)}× |`,
  );
  log(
    `| Chromium page, wall time seen from Node (upload → merged) | | | ${sec(pw)} | ${(pw / (nd + nm)).toFixed(2)}× |`,
  );
  log('');
  log(
    'Fusion kernel W += U·D, rank 64, F16 in and out (decode/encode included), median seconds and GFLOP/s. ' +
      'The GPU rows run on SwiftShader — a CPU emulating a GPU — so they show that the gpu.js path works in a browser, not how ' +
      'fast it is on real hardware. Ratio: time relative to the WASM kernel in the same page.',
  );
  log('');
  log('| shape | kernel (backend) | time | GFLOP/s | ratio vs page WASM |');
  log('|---|---|---|---|---|');
  for (const s of SHAPES) {
    const m = kernels[s.label]!;
    const flops = 2 * s.rows * s.cols * s.rank;
    const base = Object.entries(m).find(([k]) => k.startsWith('wasm (page)'))![1];
    for (const [key, t] of Object.entries(m)) {
      const [name, backend] = key.split('|');
      log(
        `| ${s.label} | ${name} (${backend}) | ${(t * 1000).toFixed(1)} ms | ${(flops / t / 1e9).toFixed(2)} | ${(t / base).toFixed(2)}× |`,
      );
    }
  }
  const labels = new Set(Object.values(kernels).flatMap((m) => Object.keys(m)));
  for (const mode of ['webgpu', 'webgl2']) {
    const reported = [...labels].filter((k) => k.startsWith(`gpu.js:${mode}|`)).map((k) => k.split('|')[1]);
    if (reported.some((b) => b !== `gpu.js:${mode}`)) {
      log('');
      log(
        `Note: the kernel forced to gpu.js mode '${mode}' reported its backend as ${reported.join(', ')} ` +
          `(test/browser/gpu.test.ts checks which gpu.js kernel class really ran).`,
      );
    }
  }
  log('');
  if (RECORD) {
    const file = join(REPO_ROOT, 'bench/RESULTS.md');
    const prev = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmark results\n';
    writeFileSync(file, `${prev.trimEnd()}\n\n${lines.join('\n')}\n`);
    console.log(`appended to ${file}`);
  }
  if (!KEEP) rmSync(OUT, { recursive: true, force: true });
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
