/**
 * Benchmark of the LoRA format layer on a full-size SDXL LCM-LoRA-shaped file (rank 64 on all 788 LCM targets,
 * 196,751,360 parameters, kohya names, F16 — ~394 MB), generated here with the fixture generator.
 *
 *   npx tsx bench/formats.ts [--rounds N]
 *
 * Each figure is the median of N rounds (default 5), page cache warm:
 *  - baseline: a plain sequential read of the whole file (one FileHandle, 16 MiB reads);
 *  - inspectLora: header + the 788 alpha tensors, arch detection over 6 candidate layouts, no factor read;
 *  - loadLora: everything, factors decoded F16 → f32 into ndarrays;
 *  - saveLora as PEFT (F16) from the loaded LoRA (f32 → F16 encode, temp file, fsync, rename), against a plain
 *    write of the same number of bytes (one FileHandle, 16 MiB writes, fsync) in the same round.
 * Also: the time to generate the file, and peak RSS.
 */
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateLora } from '../src/fixtures/generate.js';
import { inspectLora, loadLora, saveLora } from '../src/formats/index.js';
import { installNodeHost } from '../src/node/install.js';

// Benchmarks import the layers directly: give them file paths, folders and threads as the Node entry does.
installNodeHost();

const args = process.argv.slice(2);
const i = args.indexOf('--rounds');
const ROUNDS = i >= 0 && Number(args[i + 1]) > 0 ? Number(args[i + 1]) : 5;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function time<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const r = await fn();
  return [(performance.now() - t0) / 1000, r];
}

async function rawRead(file: string): Promise<number> {
  const fh = await fs.open(file, 'r');
  const buf = Buffer.allocUnsafe(16 << 20);
  let total = 0;
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, total);
      if (bytesRead === 0) break;
      total += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return total;
}

async function rawWrite(file: string, bytes: number): Promise<void> {
  const fh = await fs.open(file, 'w');
  const buf = Buffer.alloc(16 << 20, 7);
  try {
    for (let at = 0; at < bytes; at += buf.length) await fh.write(buf, 0, Math.min(buf.length, bytes - at), at);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.rm(file);
}

async function main(): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-bench-formats-'));
  const file = path.join(dir, 'lcm-sdxl.kohya.safetensors');
  const out = path.join(dir, 'lcm-sdxl.peft.safetensors');
  try {
    const [gen] = await time(() =>
      generateLora(file, 'sdxl', 'full', { rank: 64, alpha: 8, targets: 'lcm', format: 'kohya', dtype: 'F16' }),
    );
    const size = (await fs.stat(file)).size;
    console.log(`generated ${size.toLocaleString('en-US')} bytes in ${gen.toFixed(2)} s`);
    const t = {
      raw: [] as number[],
      inspect: [] as number[],
      load: [] as number[],
      save: [] as number[],
      rawWrite: [] as number[],
    };
    let modules = 0;
    for (let r = 0; r < ROUNDS; r++) {
      t.raw.push((await time(() => rawRead(file)))[0]);
      const [ti, plan] = await time(() => inspectLora(file));
      t.inspect.push(ti);
      modules = plan.modules.length;
      const [tl, lora] = await time(() => loadLora(file));
      t.load.push(tl);
      const [ts, res] = await time(() => saveLora(lora, out, { format: 'peft' }));
      t.save.push(ts);
      t.rawWrite.push((await time(() => rawWrite(path.join(dir, 'raw.bin'), res.byteLength)))[0]);
      await fs.rm(out);
      console.log(
        `round ${r + 1}: raw read ${t.raw.at(-1)!.toFixed(3)} s, inspect ${ti.toFixed(3)} s, load ${tl.toFixed(3)} s, save ${ts.toFixed(3)} s, raw write ${t.rawWrite.at(-1)!.toFixed(3)} s`,
      );
    }
    const mb = size / 1e6;
    const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)])) as Record<keyof typeof t, number>;
    console.log('');
    console.log(`modules: ${modules}; medians of ${ROUNDS} rounds`);
    console.log(`raw sequential read : ${m.raw.toFixed(3)} s  (${(mb / m.raw).toFixed(0)} MB/s)`);
    console.log(`inspectLora (plan)  : ${m.inspect.toFixed(3)} s`);
    console.log(
      `loadLora            : ${m.load.toFixed(3)} s  (${(mb / m.load).toFixed(0)} MB/s, ${(m.load / m.raw).toFixed(2)}× raw read)`,
    );
    console.log(`raw write + fsync   : ${m.rawWrite.toFixed(3)} s`);
    console.log(`saveLora peft F16   : ${m.save.toFixed(3)} s  (${(m.save / m.rawWrite).toFixed(2)}× raw write)`);
    console.log(`peak RSS            : ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MB`);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

await main();
