/**
 * What the browser's file APIs cost, measured in a Web Worker of headless Chromium (no lora-mix code involved):
 *
 *   npx tsx bench/browser-io.ts [read|write|all] [--mb N]
 *
 * read:  the first N MB (default 1024) of /work/benchdata/sd15-base.f16.safetensors, chosen with a file input and
 *        posted to a worker, read through each API in turn: Blob.stream() with a BYOB reader in 4 and 16 MiB steps
 *        (what src/core/blob-stream.ts does), with the default reader, File.slice().arrayBuffer() one at a time and
 *        several in flight, and FileReaderSync (synchronous, workers only). Each variant reads the same bytes once;
 *        the file is in the page cache after the first, so the figures are the API's cost, not the disk's.
 * write: N MB (default 512) into a file of the origin-private file system: through createWritable() (a
 *        FileSystemWritableFileStream, what a file chosen with showSaveFilePicker gives) in 8 and 32 MiB writes,
 *        1 or 4 in flight, close included; and through createSyncAccessHandle() (OPFS only, workers only) in 8 MiB
 *        writes, flush + close included.
 * The page runs on a Chromium profile on disk (its storage quota is a share of the disk), removed afterwards.
 * Run under `flock /work/bench.lock`.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { openSession, tempDir } from '../test/browser/harness.js';

const args = process.argv.slice(2);
const WHAT = args.find((a) => a === 'read' || a === 'write' || a === 'all') ?? 'all';
const MB_ARG = args.includes('--mb') ? Number(args[args.indexOf('--mb') + 1]) : undefined;
const BASE = '/work/benchdata/sd15-base.f16.safetensors';

const WORKER = `
const MiB = 1 << 20;
async function byob(file, n, step) {
  const r = file.slice(0, n).stream().getReader({ mode: 'byob' });
  let buf = new ArrayBuffer(64 * MiB), at = 0, got = 0;
  for (;;) {
    if (at + step > buf.byteLength) at = 0;
    const { done, value } = await r.read(new Uint8Array(buf, at, step));
    if (done) break;
    buf = value.buffer; got += value.byteLength; at += value.byteLength;
  }
  return got;
}
async function plain(file, n) {
  const r = file.slice(0, n).stream().getReader();
  let got = 0, chunks = 0;
  for (;;) { const { done, value } = await r.read(); if (done) break; got += value.byteLength; chunks++; }
  self.chunk = Math.round(got / chunks);
  return got;
}
async function slices(file, n, size, inFlight) {
  let next = 0, got = 0;
  const one = async () => {
    while (next < n) { const s = next; next += size; got += (await file.slice(s, Math.min(n, s + size)).arrayBuffer()).byteLength; }
  };
  await Promise.all(Array.from({ length: inFlight }, one));
  return got;
}
function sync(file, n, size) {
  const fr = new FileReaderSync();
  let got = 0;
  for (let s = 0; s < n; s += size) got += fr.readAsArrayBuffer(file.slice(s, Math.min(n, s + size))).byteLength;
  return got;
}
async function writable(n, part, inFlight) {
  const dir = await navigator.storage.getDirectory();
  const h = await dir.getFileHandle('w.bin', { create: true });
  const w = (await h.createWritable()).getWriter();
  const bufs = Array.from({ length: inFlight }, () => new Uint8Array(part).fill(7));
  const pending = [];
  let t0 = performance.now(), waits = 0;
  for (let s = 0, i = 0; s < n; s += part, i++) {
    if (pending.length >= inFlight) { const t = performance.now(); await pending.shift(); waits += performance.now() - t; }
    pending.push(w.write(bufs[i % inFlight].slice(0, Math.min(part, n - s))));
  }
  await Promise.all(pending);
  const tw = performance.now();
  await w.close();
  const tc = performance.now();
  await dir.removeEntry('w.bin');
  return { seconds: (tc - t0) / 1000, close: (tc - tw) / 1000 };
}
async function syncHandle(n, part) {
  const dir = await navigator.storage.getDirectory();
  const h = await dir.getFileHandle('s.bin', { create: true });
  const t0 = performance.now();
  const a = await h.createSyncAccessHandle();
  const buf = new Uint8Array(part).fill(7);
  for (let s = 0; s < n; s += part) a.write(buf.subarray(0, Math.min(part, n - s)), { at: s });
  const tw = performance.now();
  a.flush(); a.close();
  const tc = performance.now();
  await dir.removeEntry('s.bin');
  return { seconds: (tc - t0) / 1000, close: (tc - tw) / 1000 };
}
async function copyFile(n) {
  const dir = await navigator.storage.getDirectory();
  const h = await dir.getFileHandle('c.bin', { create: true });
  const a = await h.createSyncAccessHandle();
  const buf = new Uint8Array(32 * MiB).fill(7);
  for (let s = 0; s < n; s += buf.byteLength) a.write(buf.subarray(0, Math.min(buf.byteLength, n - s)), { at: s });
  a.flush(); a.close();
  const t0 = performance.now();
  const d = await dir.getFileHandle('d.bin', { create: true });
  const w = await d.createWritable();
  await w.write(await h.getFile());
  const tw = performance.now();
  await w.close();
  const tc = performance.now();
  await dir.removeEntry('c.bin');
  await dir.removeEntry('d.bin');
  return { seconds: (tc - t0) / 1000, close: (tc - tw) / 1000 };
}
async function blobParts(n, part) {
  const buf = new Uint8Array(part).fill(7);
  const parts = [];
  for (let s = 0; s < n; s += part) parts.push(new Blob([buf.subarray(0, Math.min(part, n - s))]));
  const b = new Blob(parts);
  return b.size;
}
self.onmessage = async ({ data: { file, what, readMB, writeMB } }) => {
  const out = [];
  const time = async (name, f, mb) => {
    const t = performance.now();
    const r = await f();
    const s = typeof r === 'object' ? r.seconds : (performance.now() - t) / 1000;
    out.push({ name, seconds: s, mbps: mb / s, ...(typeof r === 'object' ? { close: r.close } : {}) });
    postMessage({ progress: name });
  };
  try {
    if (what !== 'write') {
      const n = Math.min(file.size, readMB * MiB);
      await time('warm-up: stream BYOB 4 MiB', () => byob(file, n, 4 * MiB), n / MiB);
      await time('stream BYOB 4 MiB steps', () => byob(file, n, 4 * MiB), n / MiB);
      await time('stream BYOB 16 MiB steps', () => byob(file, n, 16 * MiB), n / MiB);
      await time('stream default reader', () => plain(file, n), n / MiB);
      out.at(-1).name += ' (chunks ' + (self.chunk / 1024).toFixed(0) + ' KiB)';
      await time('File.slice 16 MiB, 1 in flight', () => slices(file, n, 16 * MiB, 1), n / MiB);
      await time('File.slice 16 MiB, 4 in flight', () => slices(file, n, 16 * MiB, 4), n / MiB);
      await time('File.slice 64 MiB, 2 in flight', () => slices(file, n, 64 * MiB, 2), n / MiB);
      await time('FileReaderSync 16 MiB', () => sync(file, n, 16 * MiB), n / MiB);
    }
    if (what !== 'read') {
      const n = writeMB * MiB;
      await time('createWritable 8 MiB, 4 in flight', () => writable(n, 8 * MiB, 4), writeMB);
      await time('createWritable 32 MiB, 2 in flight', () => writable(n, 32 * MiB, 2), writeMB);
      await time('createWritable 8 MiB, 1 in flight', () => writable(n, 8 * MiB, 1), writeMB);
      await time('createWritable 8 MiB, 16 in flight', () => writable(n, 8 * MiB, 16), writeMB);
      await time('createWritable.write(an OPFS File): copy of a file', () => copyFile(n), writeMB);
      await time('Blob parts of 8 MiB (the merge page today)', () => blobParts(n, 8 * MiB), writeMB);
      await time('createSyncAccessHandle 8 MiB', () => syncHandle(n, 8 * MiB), writeMB);
      await time('createSyncAccessHandle 32 MiB', () => syncHandle(n, 32 * MiB), writeMB);
    }
    postMessage({ done: out });
  } catch (e) {
    postMessage({ error: String(e && e.stack || e) });
  }
};
`;

const PAGE = `<!doctype html><meta charset="utf-8"><input type="file" id="f">
<script>
window.results = null;
const w = new Worker('worker.js');
w.onmessage = (e) => { if (e.data.done || e.data.error) window.results = e.data; };
document.getElementById('f').addEventListener('change', (ev) => {
  const q = new URLSearchParams(location.search);
  w.postMessage({ file: ev.target.files[0], what: q.get('what'), readMB: Number(q.get('read')), writeMB: Number(q.get('write')) });
});
document.body.dataset.ready = 'true';
</script>`;

async function main(): Promise<void> {
  const tmp = tempDir('browser-io');
  writeFileSync(join(tmp.dir, 'index.html'), PAGE);
  writeFileSync(join(tmp.dir, 'worker.js'), WORKER);
  const profile = mkdtempSync('/work/benchdata/browser-profile-io-');
  const readMB = WHAT === 'write' ? 0 : (MB_ARG ?? 1024);
  const writeMB = WHAT === 'read' ? 0 : (MB_ARG ?? 512);
  console.log(`load ${os.loadavg()[0]?.toFixed(1)} at ${new Date().toISOString()}`);
  const session = await openSession({
    root: tmp.dir,
    path: `?what=${WHAT}&read=${readMB}&write=${writeMB}`,
    userDataDir: profile,
  });
  try {
    await session.page.waitForSelector('body[data-ready="true"]');
    await session.page.setInputFiles('#f', BASE);
    await session.page.waitForFunction(() => (window as unknown as { results: unknown }).results !== null, undefined, {
      timeout: 280_000,
    });
    const r = await session.page.evaluate(
      () =>
        (
          window as unknown as {
            results: {
              done?: { name: string; seconds: number; mbps: number; close?: number }[];
              error?: string;
            };
          }
        ).results,
    );
    if (r.error) throw new Error(r.error);
    console.log(`| API (in a Web Worker) | MB | seconds | MB/s | of which close |`);
    console.log('|---|---|---|---|---|');
    for (const x of r.done ?? [])
      console.log(
        `| ${x.name} | ${x.name.startsWith('create') ? writeMB : readMB} MiB | ${x.seconds.toFixed(2)} | ${x.mbps.toFixed(0)} | ${x.close !== undefined ? `${x.close.toFixed(2)} s` : ''} |`,
      );
  } finally {
    await session.close();
    rmSync(profile, { recursive: true, force: true });
    tmp.remove();
    console.log(`load ${os.loadavg()[0]?.toFixed(1)} at ${new Date().toISOString()}`);
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
