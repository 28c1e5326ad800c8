/**
 * Benchmark of the safetensors layer on a full-size SD1.5-shaped checkpoint (~2 GB of F16, generated here).
 *
 *   npx tsx bench/safetensors.ts [--rounds N] [--keep] [--record]
 *
 * Measures, each as the median of several rounds:
 *  - writing the file with writeSafetensors (streaming thunks: one tensor in memory at a time);
 *  - header parse time (openSafetensors: open + 8 bytes + header + validation);
 *  - reading every tensor through SafetensorsFile.read (in file order) vs a plain sequential read of the same
 *    file with one FileHandle into a reused 1 MiB buffer, in the same run (page cache warm for both);
 *  - readF32 of every tensor (read + F16 → f32 decode);
 *  - F16 → F32 and F32 → F16 conversion in elements per second, JS path and WASM SIMD path.
 * --record appends a "safetensors" section to bench/RESULTS.md. The temporary file is deleted at the end
 * unless --keep is given.
 */
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execSync } from 'node:child_process';
import { getLayout, singleFileTensors } from '../src/layout/index.js';
import { openSafetensors } from '../src/node/files.js';
import {
  f16ToF32,
  f32ToF16,
  bf16ToF32,
  f32ToBf16,
  getBulkConvert,
  setBulkConvert,
  writeSafetensors,
  type TensorToWrite,
} from '../src/safetensors/index.js';
import { installNodeHost } from '../src/node/install.js';

// Benchmarks import the layers directly: give them file paths, folders and threads as the Node entry does.
installNodeHost();

const args = process.argv.slice(2);
const ROUNDS =
  Number(args[args.indexOf('--rounds') + 1]) > 0 && args.includes('--rounds')
    ? Number(args[args.indexOf('--rounds') + 1])
    : 5;
const KEEP = args.includes('--keep');
const RECORD = args.includes('--record');

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function time(fn: () => Promise<unknown> | unknown): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

const GB = 1e9;
const lines: string[] = [];
function log(s: string): void {
  console.log(s);
  lines.push(s);
}

// ---------------------------------------------------------------------------------------------------------------

const tensors = singleFileTensors(getLayout('sd15', 'full'));
const numels = tensors.map((t) => t.shape.reduce((a, b) => a * b, 1));
const totalElems = numels.reduce((a, b) => a + b, 0);
const maxElems = Math.max(...numels);

// One pattern of plausible weights (N(0, 0.02)-ish F16 values) shared by every tensor: data generation must not
// dominate the write timing, and the writer never sees more than one tensor's bytes at a time anyway.
const pattern = new Float32Array(maxElems);
let seed = 1;
for (let i = 0; i < pattern.length; i++) {
  seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
  pattern[i] = (seed / 2 ** 32 - 0.5) * 0.07;
}
const pattern16 = f32ToF16(pattern);

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-bench-'));
const file = path.join(dir, 'sd15-f16.safetensors');

try {
  const cpu = os.cpus()[0]?.model ?? 'unknown';
  log(`machine: ${os.cpus().length} cores, ${cpu}, Node ${process.version}, ${os.platform()} ${os.release()}`);
  log(
    `date: ${execSync('date -u').toString().trim()}; load average at start ${os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')} ` +
      `(other jobs share this 2-core machine, so absolute figures are noisy; the ratios compare runs interleaved in time)`,
  );
  log(
    `workload: ${tensors.length} tensors with the SD1.5 single-file names and shapes (UNet + text encoder), ` +
      `${(totalElems / 1e6).toFixed(1)} M F16 elements`,
  );

  // Write --------------------------------------------------------------------------------------------------------
  const toWrite = (): TensorToWrite[] =>
    tensors.map((t, i) => ({
      name: t.key,
      dtype: 'F16',
      shape: t.shape,
      data: () => pattern16.subarray(0, numels[i]!),
    }));
  const writeTimes: number[] = [];
  let fileSize = 0;
  for (let r = 0; r < Math.min(ROUNDS, 3); r++) {
    writeTimes.push(
      await time(async () => {
        fileSize = (await writeSafetensors(file, toWrite(), { metadata: { format: 'pt', bench: 'lora-mix' } }))
          .byteLength;
      }),
    );
  }
  log(`file: ${(fileSize / GB).toFixed(3)} GB`);
  log(
    `write (writeSafetensors to a path: temp file, fsync, rename): median ${median(writeTimes).toFixed(2)} s ` +
      `= ${(fileSize / GB / median(writeTimes)).toFixed(2)} GB/s over ${writeTimes.length} rounds`,
  );

  // Header parse -------------------------------------------------------------------------------------------------
  const parseTimes: number[] = [];
  for (let r = 0; r < 20; r++) {
    parseTimes.push(
      await time(async () => {
        const f = await openSafetensors(file);
        await f.close();
      }),
    );
  }
  const probe = await openSafetensors(file);
  const headerBytes = probe.headerLength;
  await probe.close();
  log(
    `header parse (openSafetensors + close, ${(headerBytes / 1024).toFixed(1)} KiB header, ${tensors.length} tensors): ` +
      `median ${(median(parseTimes) * 1000).toFixed(2)} ms over 20 rounds`,
  );

  // Read throughput vs raw sequential read ------------------------------------------------------------------------
  // Buffers a long-running caller would keep: allocated (and page-faulted) once, outside the timings.
  const chunk1 = new Uint8Array(1 << 20).fill(1);
  const chunk16 = new Uint8Array(16 << 20).fill(1);
  const maxBytes = Math.max(...numels) * 2;
  const tensorBuf = new Uint8Array(maxBytes).fill(1);
  const f32Buf = new Float32Array(Math.max(...numels)).fill(1);
  async function rawRead(buf: Uint8Array): Promise<number> {
    const fh = await fs.open(file, 'r');
    let pos = 0,
      sum = 0;
    try {
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
        if (bytesRead === 0) break;
        sum += buf[0]!;
        pos += bytesRead;
      }
    } finally {
      await fh.close();
    }
    if (pos !== fileSize) throw new Error(`raw read got ${pos} bytes`);
    return sum;
  }
  async function libRead(): Promise<number> {
    const f = await openSafetensors(file);
    let bytes = 0;
    try {
      for (const t of f.tensors) bytes += (await f.read(t.name)).byteLength;
    } finally {
      await f.close();
    }
    return bytes;
  }
  async function libReadInto(): Promise<number> {
    const f = await openSafetensors(file);
    const buf = tensorBuf;
    let bytes = 0;
    try {
      for (const t of f.tensors) bytes += (await f.read(t.name, buf)).byteLength;
    } finally {
      await f.close();
    }
    return bytes;
  }
  async function rawReadRanges(): Promise<number> {
    // the plain-read counterpart of SafetensorsFile.read(name, buf): the same ranges into the same buffer
    const fh = await fs.open(file, 'r');
    const f = await openSafetensors(file);
    let sum = 0;
    try {
      for (const t of f.tensors) {
        let done = 0;
        while (done < t.byteLength)
          done += (await fh.read(tensorBuf, done, t.byteLength - done, t.offset + done)).bytesRead;
        sum += done;
      }
    } finally {
      await fh.close();
      await f.close();
    }
    return sum;
  }
  async function rawReadFresh(): Promise<number> {
    // the plain-read counterpart of SafetensorsFile.read: a new buffer per tensor-sized range
    const fh = await fs.open(file, 'r');
    const f = await openSafetensors(file);
    let sum = 0;
    try {
      for (const t of f.tensors) {
        const b = new Uint8Array(t.byteLength);
        await fh.read(b, 0, b.length, t.offset);
        sum += b.length;
      }
    } finally {
      await fh.close();
      await f.close();
    }
    return sum;
  }
  async function libReadF32(): Promise<number> {
    const f = await openSafetensors(file);
    const out = f32Buf;
    let n = 0;
    try {
      for (const t of f.tensors) n += (await f.readF32(t.name, out)).length;
    } finally {
      await f.close();
    }
    return n;
  }
  await rawRead(chunk1); // warm the page cache
  const raw: number[] = [],
    raw16: number[] = [],
    rawRanges: number[] = [],
    lib: number[] = [],
    libInto: number[] = [];
  const rawFresh: number[] = [],
    libF32: number[] = [];
  const order: [number[], () => Promise<number>][] = [
    [raw, () => rawRead(chunk1)],
    [libInto, libReadInto],
    [raw16, () => rawRead(chunk16)],
    [rawFresh, rawReadFresh],
    [lib, libRead],
    [rawRanges, rawReadRanges],
  ];
  for (let r = 0; r < ROUNDS; r++) {
    // rotate the order so no variant always runs first
    for (let k = 0; k < order.length; k++) {
      const [times, fn] = order[(k + r) % order.length]!;
      times.push(await time(fn));
    }
    libF32.push(await time(libReadF32));
  }
  const gbs = (ts: number[]) => fileSize / GB / median(ts);
  const rawGBs = gbs(raw);
  log(`read, warm page cache, ${ROUNDS} rounds (medians):`);
  log(`  | reader | time | throughput | ratio to baseline |`);
  log(`  |---|---|---|---|`);
  log(
    `  | baseline: plain sequential FileHandle.read, one reused 1 MiB buffer (allocated before timing) | ${median(raw).toFixed(3)} s | ${rawGBs.toFixed(2)} GB/s | 1.00 |`,
  );
  log(
    `  | plain sequential FileHandle.read, one reused 16 MiB buffer (a larger buffer is slower: more cache misses) | ${median(raw16).toFixed(3)} s | ${gbs(raw16).toFixed(2)} GB/s | ${(gbs(raw16) / rawGBs).toFixed(2)} |`,
  );
  log(
    `  | SafetensorsFile.read(name, buf), one reused buffer of the largest tensor's size (allocated before timing) | ${median(libInto).toFixed(3)} s | ${gbs(libInto).toFixed(2)} GB/s | ${(gbs(libInto) / rawGBs).toFixed(2)} |`,
  );
  log(
    `  | plain FileHandle.read of the same tensor ranges into the same reused buffer (what the line above costs without the library) | ${median(rawRanges).toFixed(3)} s | ${gbs(rawRanges).toFixed(2)} GB/s | ${(gbs(rawRanges) / rawGBs).toFixed(2)} |`,
  );
  log(
    `  | SafetensorsFile.read(name), new buffer per tensor | ${median(lib).toFixed(3)} s | ${gbs(lib).toFixed(2)} GB/s | ${(gbs(lib) / rawGBs).toFixed(2)} |`,
  );
  log(
    `  | plain FileHandle.read, new buffer per tensor (what the line above costs without the library) | ${median(rawFresh).toFixed(3)} s | ${gbs(rawFresh).toFixed(2)} GB/s | ${(gbs(rawFresh) / rawGBs).toFixed(2)} |`,
  );
  log(
    `  | SafetensorsFile.readF32(name, out), reused out (allocated before timing): read + F16→f32 | ${median(libF32).toFixed(3)} s | ${(totalElems / 1e9 / median(libF32)).toFixed(3)} G elem/s | ${(median(raw) / median(libF32)).toFixed(2)} |`,
  );

  // Conversion ---------------------------------------------------------------------------------------------------
  const N = 1 << 24;
  const src32 = pattern.subarray(0, Math.min(N, pattern.length));
  const n = src32.length;
  const dst16 = new Uint16Array(n);
  const dst32 = new Float32Array(n);
  const src16 = f32ToF16(src32);
  const wasm = getBulkConvert();
  const conv: Record<string, Record<string, number>> = {};
  for (const mode of ['js', 'wasm'] as const) {
    if (mode === 'wasm' && !wasm) continue;
    setBulkConvert(mode === 'js' ? null : 'auto');
    const ops: [string, () => void][] = [
      ['F16→F32', () => f16ToF32(src16, dst32)],
      ['F32→F16', () => f32ToF16(src32, dst16)],
      ['BF16→F32', () => bf16ToF32(src16, dst32)],
      ['F32→BF16', () => f32ToBf16(src32, dst16)],
    ];
    for (const [name, op] of ops) {
      op(); // warm up (JIT, tables)
      const ts: number[] = [];
      for (let r = 0; r < 7; r++) ts.push(await time(op));
      (conv[name] ??= {})[mode] = n / median(ts) / 1e9;
    }
  }
  setBulkConvert('auto');
  log(`conversion, ${(n / 1e6).toFixed(1)} M elements per call, median of 7 (G elem/s):`);
  log(`  | conversion | JS | WASM SIMD | WASM / JS |`);
  log(`  |---|---|---|---|`);
  for (const [name, v] of Object.entries(conv)) {
    log(
      `  | ${name} | ${v.js!.toFixed(3)} | ${v.wasm !== undefined ? v.wasm.toFixed(3) : 'n/a'} | ${v.wasm !== undefined ? `${(v.wasm / v.js!).toFixed(2)}×` : ''} |`,
    );
  }

  log(
    `load average at end: ${os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
  if (RECORD) {
    const results = path.join(path.dirname(new URL(import.meta.url).pathname), 'RESULTS.md');
    const section = [
      '',
      '## safetensors',
      '',
      `Command: \`npx tsx bench/safetensors.ts ${args.filter((a) => a !== '--record').join(' ')}\`.`.replace(
        ' `.',
        '`.',
      ),
      '',
      ...lines.flatMap((l, i) =>
        l.startsWith('  |')
          ? lines[i - 1]!.startsWith('  |')
            ? [l.slice(2)]
            : ['', l.slice(2)]
          : i > 0 && lines[i - 1]!.startsWith('  |')
            ? ['', `- ${l.trim()}`]
            : [`- ${l.trim()}`],
      ),
      '',
    ].join('\n');
    await fs.appendFile(results, section);
    console.log(`appended to ${results}`);
  }
} finally {
  if (KEEP) console.log(`kept ${file}`);
  else await fs.rm(dir, { recursive: true, force: true });
}
