/**
 * End-to-end fusion benchmark: `lora-mix fuse` (read the base, fuse, write) on full-size SD1.5 and SDXL F16
 * single-file checkpoints, run as the built CLI in a child process, against a plain copy of the same file.
 *
 *   npm run build && npx tsx bench/fuse.ts [--runs 3] [--arch sd15,sdxl] [--cases copy,direct,cp,cpsync,lcm,nofsync,lcm0,style,f32,torch]
 *                                         [--extra-runs N] [--gen-only] [--clean] [--profile CASE] [--json FILE]
 *                                         [--out-dir DIR] [--wait-idle S] [--idle-below F] [--cli PATH] [--base-cli PATH]
 *
 * Inputs (generated once with src/fixtures/generate.ts and cached under bench/out/, which git ignores; a
 * `.spec.json` beside each file records what produced it, and a file whose spec or size differs is regenerated):
 *   <arch>-base.f16.safetensors   UNet + text encoder(s) + VAE, LDM/SGM names, F16, seed 7 (2.13 GB / 6.94 GB)
 *   <arch>-lcm.f16.safetensors    LCM-LoRA-shaped: rank 64, alpha 8, every LCM target, kohya names with diffusers
 *                                 paths (as the released LCM-LoRA files), F16, seed 11
 *   <arch>-style.f16.safetensors  style-LoRA-shaped: rank 32, alpha 16, UNet attention + text encoder(s), kohya
 *                                 names (diffusers paths for SD1.5, SGM paths for SDXL), F16, seed 22
 * Each file is generated in its own child process under /usr/bin/time -v (time and peak RSS are reported).
 *
 * Cases, interleaved within each round (each a child process under /usr/bin/time -v, output deleted after it):
 *   copy   the I/O floor: a Node script that reads the base in 16 MiB chunks and writes them to a temp file beside
 *          the output, fsync, rename (what the fuse writer does with the same bytes, minus the fusion)
 *   direct the same copy with O_DIRECT writes (page-aligned WebAssembly.Memory buffer, padded last chunk, truncate):
 *          no page-cache pages are allocated for the output, which on some VMs is most of a buffered write's cost
 *   cp     `cp --reflink=never` (no fsync): returns once the bytes are in the page cache
 *   cpsync `cp --reflink=never BASE OUT && sync OUT`: the same copy made durable (coreutils' `sync FILE` fsyncs
 *          that one file), the like-for-like baseline of a fuse that fsyncs
 *   lcm    lora-mix fuse --base BASE LCM:1.0 -o OUT --json
 *   nofsync  case lcm with --no-fsync (temp file + rename, no fsync; O_DIRECT writes as by default)
 *   nofsyncpc  no fsync and page-cache writes (directIO: false), the like-for-like counterpart of cp: fuseLoras
 *          from the built dist/node.js in a child process, report printed as JSON
 *   style  lora-mix fuse --base BASE LCM:1.0 STYLE:0.8 -o OUT --json
 *   f32    lora-mix fuse --base BASE LCM:1.0 -o OUT --json --dtype f32 (twice the bytes written)
 *   lcm0   case lcm with the build given by --base-cli PATH (e.g. main before a change), in the same rounds
 *   torch  the PyTorch peer, bench/peer/fuse_torch.py (diffusers' fuse_lora arithmetic, Debian's python3-torch on
 *          2 threads): loads the base, fuses the LCM LoRA, saves; its key map comes from lora-mix's plan
 *          (bench/out/<arch>-lcm.peer-map.json, written before the rounds)
 * copy, direct, cp, lcm and lcm0 run --runs times (default 3); style, f32 and torch run --extra-runs times
 * (default 1).
 * Warm page cache: before every case the inputs are read once sequentially, and `fincore` reports how much of them
 * was in the page cache before and after that read (the table gives the latter). Caches cannot be dropped here
 * without root, and on a VM whose kernel pages out idle memory (DAMON) the cache would otherwise be warm for some
 * runs and cold for others.
 *
 * --wait-idle S: before each case, wait up to S seconds until the machine's CPU use (from /proc/stat, over 1–2 s)
 * is under --idle-below (default 0.15 = 15 % of both cores); the table reports that CPU use per case either way.
 * --cli PATH runs that lora-mix.js instead of dist/cli/lora-mix.js.
 * --out-dir DIR writes the outputs there instead of bench/out/ (e.g. /dev/shm, to see the run without the disk).
 * --profile CASE: after the rounds, one more run of CASE (e.g. lcm) with `node --cpu-prof`, summarised as the
 * functions with the most self time. --clean deletes bench/out/ at the end. --json FILE writes every raw record.
 */
import { spawnSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FuseReport } from '../src/fuse/types.js';
import type { Arch } from '../src/layout/types.js';
import { installNodeHost } from '../src/node/install.js';

// Benchmarks import the layers directly: give them file paths, folders and threads as the Node entry does.
installNodeHost();

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
/** The CLI under test (--cli PATH: another build, e.g. to compare a change against dist/). */
let CLI = path.join(ROOT, 'dist', 'cli', 'lora-mix.js');
const TIME = '/usr/bin/time';
const HAVE_TIME = existsSync(TIME);
const HAVE_FINCORE = spawnSync('fincore', ['--version'], { encoding: 'utf8' }).status === 0;

// ---------------------------------------------------------------------------------------------------------------
// Inputs

type InputKind = 'base' | 'lcm' | 'style';
interface InputSpec {
  arch: Arch;
  kind: InputKind;
}

/** What each generated file is; stored in the sidecar so a changed spec regenerates the file. */
function specOf(s: InputSpec): Record<string, unknown> {
  switch (s.kind) {
    case 'base':
      return { fn: 'generateBaseCheckpoint', arch: s.arch, size: 'full', dtype: 'F16', seed: 7, v: 1 };
    case 'lcm':
      return {
        fn: 'generateLora',
        arch: s.arch,
        size: 'full',
        rank: 64,
        alpha: 8,
        targets: 'lcm',
        format: 'kohya',
        kohyaPaths: 'diffusers',
        dtype: 'F16',
        seed: 11,
        v: 1,
      };
    case 'style':
      return {
        fn: 'generateLora',
        arch: s.arch,
        size: 'full',
        rank: 32,
        alpha: 16,
        targets: 'style',
        format: 'kohya',
        kohyaPaths: s.arch === 'sd15' ? 'diffusers' : 'sgm',
        dtype: 'F16',
        seed: 22,
        v: 1,
      };
  }
}

const inputPath = (s: InputSpec): string => path.join(OUT, `${s.arch}-${s.kind}.f16.safetensors`);

interface GenRecord {
  file: string;
  bytes: number;
  seconds: number;
  maxRssBytes: number | null;
  spec: Record<string, unknown>;
  cached: boolean;
}

/** Child-process entry: generate one input file. */
async function generateOne(arch: Arch, kind: InputKind, file: string): Promise<void> {
  const { generateBaseCheckpoint, generateLora } = await import('../src/fixtures/generate.js');
  const s = specOf({ arch, kind });
  if (kind === 'base') {
    await generateBaseCheckpoint(file, arch, 'full', { dtype: 'F16', seed: s.seed as number });
  } else {
    await generateLora(file, arch, 'full', {
      rank: s.rank as number,
      alpha: s.alpha as number,
      targets: s.targets as 'lcm' | 'style',
      format: 'kohya',
      kohyaPaths: s.kohyaPaths as 'diffusers' | 'sgm',
      dtype: 'F16',
      seed: s.seed as number,
    });
  }
}

function ensureInput(s: InputSpec): GenRecord {
  const file = inputPath(s);
  const side = `${file}.spec.json`;
  const spec = specOf(s);
  if (existsSync(file) && existsSync(side)) {
    const saved = JSON.parse(readFileSync(side, 'utf8')) as GenRecord;
    if (JSON.stringify(saved.spec) === JSON.stringify(spec) && statSync(file).size === saved.bytes)
      return { ...saved, cached: true };
  }
  rmSync(file, { force: true });
  process.stderr.write(`generating ${path.relative(ROOT, file)} …\n`);
  const r = timed([
    process.execPath,
    '--import',
    'tsx',
    fileURLToPath(import.meta.url),
    '--gen-one',
    s.arch,
    s.kind,
    file,
  ]);
  if (r.status !== 0) throw new Error(`generating ${file} failed (exit ${r.status}):\n${r.stderr.slice(-4000)}`);
  const rec: GenRecord = {
    file: path.relative(ROOT, file),
    bytes: statSync(file).size,
    seconds: r.wall,
    maxRssBytes: r.time?.maxRssBytes ?? null,
    spec,
    cached: false,
  };
  writeFileSync(side, `${JSON.stringify(rec, null, 2)}\n`);
  return rec;
}

// ---------------------------------------------------------------------------------------------------------------
// Running children

interface TimeV {
  maxRssBytes: number;
  userS: number;
  sysS: number;
  elapsedS: number;
  fsIn: number;
  fsOut: number;
  majorFaults: number;
  minorFaults: number;
}
interface Timed {
  status: number | null;
  wall: number;
  stdout: string;
  stderr: string;
  time: TimeV | null;
}

/** Run argv under /usr/bin/time -v (when present); wall time measured here. */
function timed(argv: string[], env?: NodeJS.ProcessEnv): Timed {
  const cmd = HAVE_TIME ? TIME : argv[0]!;
  const args = HAVE_TIME ? ['-v', ...argv] : argv.slice(1);
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', maxBuffer: 256 << 20, env: env ?? process.env });
  const wall = (performance.now() - t0) / 1000;
  const stderr = r.stderr ?? '';
  return { status: r.status, wall, stdout: r.stdout ?? '', stderr, time: HAVE_TIME ? parseTimeV(stderr) : null };
}

function parseTimeV(s: string): TimeV | null {
  const num = (label: string): number | null => {
    const m = new RegExp(`\\t${label}: ([0-9.:]+)`).exec(s);
    if (!m) return null;
    const v = m[1]!;
    if (v.includes(':')) return v.split(':').reduce((acc, p) => acc * 60 + Number(p), 0);
    return Number(v);
  };
  const rss = num('Maximum resident set size \\(kbytes\\)');
  if (rss === null) return null;
  return {
    maxRssBytes: rss * 1024,
    userS: num('User time \\(seconds\\)') ?? NaN,
    sysS: num('System time \\(seconds\\)') ?? NaN,
    elapsedS: num('Elapsed \\(wall clock\\) time \\(h:mm:ss or m:ss\\)') ?? NaN,
    fsIn: num('File system inputs') ?? NaN,
    fsOut: num('File system outputs') ?? NaN,
    majorFaults: num('Major \\(requiring I/O\\) page faults') ?? NaN,
    minorFaults: num('Minor \\(reclaiming a frame\\) page faults') ?? NaN,
  };
}

/** Fraction of each file resident in the page cache (fincore), or null where fincore is missing. */
function residency(files: readonly string[]): number | null {
  if (!HAVE_FINCORE) return null;
  let res = 0;
  let size = 0;
  for (const f of files) {
    const r = spawnSync('fincore', ['--bytes', '--noheadings', '--raw', '--output', 'RES,SIZE', f], {
      encoding: 'utf8',
    });
    const [a, b] = (r.stdout ?? '').trim().split(/\s+/).map(Number);
    if (r.status !== 0 || !Number.isFinite(a) || !Number.isFinite(b)) return null;
    res += a!;
    size += b!;
  }
  return size > 0 ? res / size : null;
}

/** /proc/stat counts in USER_HZ ticks, 100 per second on Linux. */
const USER_HZ = 100;

/** Jiffies busy and total over every CPU (the first line of /proc/stat). */
function cpuTimes(): [number, number] {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const idle = f[3]! + (f[4] ?? 0);
    const total = f.reduce((a, b) => a + b, 0);
    return [total - idle, total];
  } catch {
    return [0, 0];
  }
}

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Fraction of the machine's CPU that was busy over the next `ms` milliseconds (NaN where /proc/stat is missing). */
function busyFraction(ms = 1000): number {
  const [b0, t0] = cpuTimes();
  sleepMs(ms);
  const [b1, t1] = cpuTimes();
  return t1 > t0 ? (b1 - b0) / (t1 - t0) : NaN;
}

/** Wait (up to maxSeconds) until the machine is mostly idle; returns the last busy fraction and the time waited. */
function waitIdle(maxSeconds: number, threshold: number): { busy: number; waited: number } {
  const t0 = performance.now();
  let busy = busyFraction();
  while (busy > threshold && (performance.now() - t0) / 1000 < maxSeconds) busy = busyFraction(2000);
  return { busy, waited: (performance.now() - t0) / 1000 - 1 };
}

/**
 * The copy baselines (plain CommonJS, run with `node -e`): read the base 16 MiB at a time into one buffer and write
 * it to a temp file beside the output, fsync, rename. Mode 'buffered' writes through the page cache as the fuse
 * writer does; mode 'direct' opens the temp file with O_DIRECT, which needs page-aligned buffers, offsets and
 * sizes: the buffer is a WebAssembly.Memory (V8 maps those page-aligned), the last chunk is zero-padded to 4 KiB
 * and the file truncated to its size afterwards. Where O_DIRECT is refused (tmpfs) it falls back to buffered and
 * says so.
 */
const COPY_SCRIPT = `
const fs = require('node:fs');
const path = require('node:path');
const [src, dst, mode] = process.argv.slice(1);
const tmp = path.join(path.dirname(dst), '.' + path.basename(dst) + '.copy.tmp');
const CH = 16 << 20;
const buf = new Uint8Array(new WebAssembly.Memory({ initial: CH / 65536 }).buffer);
const inp = fs.openSync(src, 'r');
const base = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL;
let direct = mode === 'direct';
let out;
try {
  out = fs.openSync(tmp, base | (direct ? fs.constants.O_DIRECT : 0), 0o644);
} catch (e) {
  if (!direct) throw e;
  direct = false;
  out = fs.openSync(tmp, base, 0o644);
}
let at = 0;
for (;;) {
  const n = fs.readSync(inp, buf, 0, CH, at);
  if (n === 0) break;
  const w = direct ? Math.ceil(n / 4096) * 4096 : n;
  if (w > n) buf.fill(0, n, w);
  let done = 0;
  try {
    while (done < w) done += fs.writeSync(out, buf, done, w - done, at + done);
  } catch (e) {
    if (!direct || e.code !== 'EINVAL' || at !== 0) throw e;
    fs.closeSync(out); fs.rmSync(tmp); direct = false; out = fs.openSync(tmp, base, 0o644);
    while (done < n) done += fs.writeSync(out, buf, done, n - done, at + done);
  }
  at += n;
}
if (direct) fs.ftruncateSync(out, at);
fs.fsyncSync(out); fs.closeSync(out); fs.closeSync(inp);
fs.renameSync(tmp, dst);
process.stdout.write(JSON.stringify({ bytes: at, direct }));
`;

/** Case nofsyncpc: fuseLoras from a built dist/node.js with fsync and O_DIRECT off (no CLI flag for the latter). */
const API_FUSE_SCRIPT = `
const [entry, base, lora, out] = process.argv.slice(2);
const { fuseLoras } = await import(entry);
const report = await fuseLoras(base, [lora], [1], { out, fsync: false, directIO: false });
process.stdout.write(JSON.stringify(report));
`;

/** The script as a file (an ES module given with -e would start the kernel's workers as modules too). */
function apiFuseScript(): string {
  const file = path.join(os.tmpdir(), `lora-mix-bench-api-fuse-${process.pid}.mjs`);
  if (!existsSync(file)) writeFileSync(file, API_FUSE_SCRIPT);
  return file;
}

// ---------------------------------------------------------------------------------------------------------------
// Cases

type Case = 'copy' | 'direct' | 'cp' | 'cpsync' | 'lcm' | 'nofsync' | 'nofsyncpc' | 'lcm0' | 'style' | 'f32' | 'torch';
const ALL_CASES: Case[] = [
  'copy',
  'direct',
  'cp',
  'cpsync',
  'lcm',
  'nofsync',
  'nofsyncpc',
  'lcm0',
  'style',
  'f32',
  'torch',
];
const isBaseline = (c: Case): boolean => c === 'copy' || c === 'direct' || c === 'cp' || c === 'cpsync';
/** Cases whose child prints a lora-mix fuse report (--json). */
const isFuse = (c: Case): boolean =>
  c === 'lcm' || c === 'nofsync' || c === 'nofsyncpc' || c === 'lcm0' || c === 'style' || c === 'f32';
/** --base-cli PATH: case lcm0 runs that build (e.g. main before a change) in the same rounds as lcm. */
let BASE_CLI: string | null = null;
const PYTHON = '/usr/bin/python3';
const PEER = path.join(ROOT, 'bench', 'peer', 'fuse_torch.py');
const peerMapPath = (arch: Arch): string => path.join(OUT, `${arch}-lcm.peer-map.json`);

/**
 * The peer's key map: for every module of the LCM LoRA, the base tensor (and rows) lora-mix's own plan puts it on,
 * so that the PyTorch script times the arithmetic and I/O and not a name conversion.
 */
async function writePeerMap(arch: Arch): Promise<void> {
  const { openBase, planFusion } = await import('../src/fuse/fuse.js');
  const { openInputs } = await import('../src/fuse/inputs.js');
  const opened = await openBase(inputPath({ arch, kind: 'base' }));
  try {
    const d = opened.detection;
    const inputs = await openInputs([inputPath({ arch, kind: 'lcm' })], [1], d.arch, d.size, false);
    const plan = planFusion(opened, inputs, {});
    const entries = (plan.files[0]?.tensors ?? []).flatMap((t) =>
      t.targets.map((tg) => ({ key: t.info.name, rows: tg.rows, module: tg.terms[0]?.module.name ?? '' })),
    );
    writeFileSync(peerMapPath(arch), `${JSON.stringify(entries)}\n`);
    await Promise.all(inputs.map((x) => x.close()));
  } finally {
    await opened.close();
  }
}

interface RunRecord {
  arch: Arch;
  case: Case;
  round: number;
  wall: number;
  time: TimeV | null;
  /** Fraction of the inputs in the page cache before / after the warming read, and that read's seconds. */
  cacheCold: number | null;
  cacheBefore: number | null;
  warmSeconds: number;
  /** CPU busy fraction of the whole machine (both cores) in the second before the case started: other jobs. */
  busyBefore: number;
  /** Seconds waited for the machine to go quiet (--wait-idle). */
  waited: number;
  /**
   * CPU used by other processes while the case ran, as a fraction of both cores: machine busy time (/proc/stat)
   * minus the child's own user + sys time (NaN without /usr/bin/time).
   */
  otherDuring: number;
  bytesRead: number;
  bytesWritten: number;
  report?: FuseReport;
  /** Case 'torch': the peer's own split of its time (load, fuse, save) and its GFLOP/s. */
  peer?: { modules: number; gflop: number; load_s: number; fuse_s: number; save_s: number; gflops: number };
  /** Case 'direct': whether O_DIRECT was accepted (false: the file system refused it and the copy was buffered). */
  direct?: boolean;
}

function fuseArgs(arch: Arch, c: Case, out: string): string[] {
  const base = inputPath({ arch, kind: 'base' });
  const lcm = inputPath({ arch, kind: 'lcm' });
  const style = inputPath({ arch, kind: 'style' });
  const a = ['fuse', '--base', base, `${lcm}:1.0`];
  if (c === 'style') a.push(`${style}:0.8`);
  a.push('-o', out, '--json');
  if (c === 'f32') a.push('--dtype', 'f32');
  if (c === 'nofsync') a.push('--no-fsync');
  return a;
}

function caseInputs(arch: Arch, c: Case): string[] {
  const list = [inputPath({ arch, kind: 'base' })];
  if (!isBaseline(c)) list.push(inputPath({ arch, kind: 'lcm' }));
  if (c === 'style') list.push(inputPath({ arch, kind: 'style' }));
  return list;
}

/** Where outputs go (--out-dir, e.g. /dev/shm to take the disk out of the picture). */
let OUT_DIR = OUT;

/** --wait-idle S: before each case wait up to S seconds for the machine's CPU use to drop under --idle-below. */
let WAIT_IDLE = 0;
let IDLE_BELOW = 0.15;

/** Read files sequentially (16 MiB at a time) to pull them into the page cache; returns seconds. */
function warm(files: readonly string[]): number {
  const t0 = performance.now();
  const buf = Buffer.allocUnsafe(16 << 20);
  for (const f of files) {
    const fd = openSync(f, 'r');
    try {
      for (let at = 0; ; ) {
        const n = readSync(fd, buf, 0, buf.length, at);
        if (n === 0) break;
        at += n;
      }
    } finally {
      closeSync(fd);
    }
  }
  return (performance.now() - t0) / 1000;
}

function runCase(arch: Arch, c: Case, round: number, nodeFlags: string[] = []): RunRecord {
  const out = path.join(OUT_DIR, `${arch}-out.${c}.safetensors`);
  rmSync(out, { force: true });
  const base = inputPath({ arch, kind: 'base' });
  const cacheCold = residency(caseInputs(arch, c));
  const warmSeconds = warm(caseInputs(arch, c));
  const cacheBefore = residency(caseInputs(arch, c));
  const { busy: busyBefore, waited } = waitIdle(WAIT_IDLE, IDLE_BELOW);
  const [b0] = cpuTimes();
  let r: Timed;
  if (c === 'copy' || c === 'direct')
    r = timed([process.execPath, '-e', COPY_SCRIPT, base, out, c === 'copy' ? 'buffered' : 'direct']);
  else if (c === 'cp') r = timed(['cp', '--reflink=never', base, out]);
  else if (c === 'cpsync') r = timed(['sh', '-c', 'cp --reflink=never "$1" "$2" && sync "$2"', 'cpsync', base, out]);
  else if (c === 'nofsyncpc')
    r = timed([
      process.execPath,
      apiFuseScript(),
      path.join(path.dirname(path.dirname(CLI)), 'node.js'),
      base,
      inputPath({ arch, kind: 'lcm' }),
      out,
    ]);
  else if (c === 'torch')
    r = timed([PYTHON, PEER, base, inputPath({ arch, kind: 'lcm' }), '1.0', peerMapPath(arch), out]);
  else r = timed([process.execPath, ...nodeFlags, c === 'lcm0' ? (BASE_CLI ?? CLI) : CLI, ...fuseArgs(arch, c, out)]);
  const [b1] = cpuTimes();
  const own = r.time ? r.time.userS + r.time.sysS : NaN;
  const otherDuring = Math.max(0, (b1 - b0) / USER_HZ - own) / (r.wall * os.cpus().length);
  try {
    if (r.status !== 0)
      throw new Error(`${arch} ${c} failed (exit ${r.status}):\n${r.stdout.slice(-2000)}\n${r.stderr.slice(-4000)}`);
    const written = statSync(out).size;
    const rec: RunRecord = {
      arch,
      case: c,
      round,
      wall: r.wall,
      time: r.time,
      cacheCold,
      cacheBefore,
      warmSeconds,
      busyBefore,
      waited,
      otherDuring,
      bytesRead: statSync(base).size,
      bytesWritten: written,
    };
    if (c === 'torch') rec.peer = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as RunRecord['peer'];
    if (c === 'direct') rec.direct = (JSON.parse(r.stdout) as { direct: boolean }).direct;
    if (isFuse(c)) {
      const report = JSON.parse(r.stdout) as FuseReport;
      rec.report = report;
      rec.bytesRead = report.bytesRead;
      rec.bytesWritten = report.bytesWritten;
    }
    return rec;
  } finally {
    rmSync(out, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// CPU profile summary

interface ProfNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

function summariseProfile(file: string, top = 25): string {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++)
    self.set(p.samples[i]!, (self.get(p.samples[i]!) ?? 0) + (p.timeDeltas[i] ?? 0));
  const byFn = new Map<string, number>();
  for (const n of p.nodes) {
    const t = self.get(n.id) ?? 0;
    if (t === 0) continue;
    const url = n.callFrame.url.replace(/^file:\/\//, '').replace(`${ROOT}/`, '');
    const name =
      `${n.callFrame.functionName || '(anonymous)'} ${url ? `${url}:${n.callFrame.lineNumber + 1}` : ''}`.trim();
    byFn.set(name, (byFn.get(name) ?? 0) + t);
  }
  const total = p.endTime - p.startTime;
  const rows = [...byFn].sort((a, b) => b[1] - a[1]).slice(0, top);
  return [
    `${path.basename(file)}: ${(total / 1e6).toFixed(2)} s sampled`,
    ...rows.map(
      ([n, t]) => `  ${(t / 1e6).toFixed(3).padStart(7)} s ${((100 * t) / total).toFixed(1).padStart(5)} %  ${n}`,
    ),
  ].join('\n');
}

/**
 * Where a thread's time went, by kind of work (issue 17's table): each sample's own function decides its category.
 * The kernel module's WASM functions are told apart from the dtype module's by their script (the kernel is the
 * larger module: its functions' scripts are the ones used most on the workers).
 */
const CATEGORIES: readonly [string, (fn: string, url: string) => boolean][] = [
  [
    'factor decode f16→f32 (WASM + copies)',
    (f) => ['decode', 'readF32', '#takeScratch'].includes(f) || f.startsWith('wasm-function'),
  ],
  ['W into kernel memory (copyIn)', (f) => f === 'copyIn'],
  ['result out of kernel memory (copyOut)', (f) => f === 'copyOut'],
  [
    'O_DIRECT staging copies + write calls',
    (f) => ['#writeStaged', 'writeBuffer', '#flushStage', 'writeAll'].includes(f),
  ],
  ['reads (pread calls)', (f) => f === 'read' || f === 'readInto'],
  ['finiteness checks', (f) => ['allFinite', 'countNaNStored', 'assertFiniteTensor'].includes(f)],
  ['factor stacking', (f) => f === 'stackFactors'],
  ['SHA-256 (LoRA bytes, node:crypto)', (f, u) => ['update', 'feed', 'digest'].includes(f) && /hash|sha/.test(u)],
  [
    'kernel dispatch and waits',
    (f) => ['runParallel', 'waitFor', 'publishBlock', 'run', 'runPhase', 'kernelThread'].includes(f),
  ],
  ['garbage collection', (f) => f === '(garbage collector)'],
  ['idle (event loop / blocked)', (f) => f === '(idle)'],
];

function categoriseProfile(file: string): string {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++)
    self.set(p.samples[i]!, (self.get(p.samples[i]!) ?? 0) + (p.timeDeltas[i] ?? 0));
  const wasm = new Map<string, number>();
  for (const n of p.nodes)
    if (n.callFrame.functionName.startsWith('wasm-function'))
      wasm.set(n.callFrame.url, (wasm.get(n.callFrame.url) ?? 0) + (self.get(n.id) ?? 0));
  const kernelUrl = [...wasm].sort((a, b) => b[1] - a[1])[0]?.[0];
  const by = new Map<string, number>();
  for (const n of p.nodes) {
    const t = self.get(n.id) ?? 0;
    if (t === 0) continue;
    const { functionName: f, url: u } = n.callFrame;
    const cat =
      f.startsWith('wasm-function') && u === kernelUrl
        ? 'kernel (WASM SIMD, incl. f16⇄f32 in the kernel)'
        : (CATEGORIES.find(([, test]) => test(f, u))?.[0] ?? 'other JS (startup, planning, promises)');
    by.set(cat, (by.get(cat) ?? 0) + t);
  }
  const total = p.endTime - p.startTime;
  return [
    `${path.basename(file)} by kind of work: ${(total / 1e6).toFixed(2)} s sampled`,
    ...[...by]
      .sort((a, b) => b[1] - a[1])
      .map(([n, t]) => `  ${(t / 1e6).toFixed(3).padStart(7)} s ${((100 * t) / total).toFixed(1).padStart(5)} %  ${n}`),
  ].join('\n');
}

function profileCase(arch: Arch, c: Case): string {
  const dir = path.join(OUT, 'prof', `${arch}-${c}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const rec = runCase(arch, c, -1, ['--cpu-prof', '--cpu-prof-dir', dir]);
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => path.join(dir, f));
  const lines = [
    `profile of ${arch} ${c}: wall ${rec.wall.toFixed(2)} s (profiling on), ${files.length} profile(s) in ${path.relative(ROOT, dir)}`,
  ];
  for (const f of files) lines.push(categoriseProfile(f), summariseProfile(f));
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------------------------
// Statistics and output

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
const range = (xs: readonly number[], d: number): string =>
  `${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)}`;
const GB = (b: number): string => (b / 1e9).toFixed(2);
const MB = (b: number): string => (b / 1e6).toFixed(0);

/** Median over rounds of wall(case) / wall(baseline) in the same round; null when no round has both. */
function roundRatio(rs: readonly RunRecord[], baselines: readonly RunRecord[]): number | null {
  const ratios: number[] = [];
  for (const r of rs) {
    const b = baselines.find((x) => x.round === r.round);
    if (b) ratios.push(r.wall / b.wall);
  }
  return ratios.length ? median(ratios) : null;
}

function table(records: readonly RunRecord[], gens: readonly GenRecord[]): string {
  const lines: string[] = [];
  lines.push(
    '| arch | case | runs | wall s median (range) | ÷ cp | ÷ cp+sync | ÷ copy | fuse s (report) | kernel s | GFLOP | GFLOP/s median (range) | peak RSS MB median (max) | CPU s user + sys | read GB | written GB |',
  );
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  const archs = [...new Set(records.map((r) => r.arch))];
  const ratio = (rs: readonly RunRecord[], base: readonly RunRecord[], self: boolean): string => {
    if (self) return '1.00';
    const x = roundRatio(rs, base);
    return x === null ? '—' : x.toFixed(2);
  };
  for (const arch of archs) {
    const copy = records.filter((r) => r.arch === arch && r.case === 'copy');
    const cp = records.filter((r) => r.arch === arch && r.case === 'cp');
    const cpsync = records.filter((r) => r.arch === arch && r.case === 'cpsync');
    for (const c of ALL_CASES) {
      const rs = records.filter((r) => r.arch === arch && r.case === c);
      if (!rs.length) continue;
      const walls = rs.map((r) => r.wall);
      const rep = rs.map((r) => r.report).filter((x): x is FuseReport => x !== undefined);
      const rss = rs.map((r) => r.time?.maxRssBytes ?? r.report?.peakRssBytes ?? NaN);
      const user = median(rs.map((r) => r.time?.userS ?? NaN));
      const sys = median(rs.map((r) => r.time?.sysS ?? NaN));
      lines.push(
        `| ${[
          arch,
          c === 'direct' && rs.some((r) => r.direct === false) ? 'direct (refused: buffered)' : c,
          rs.length,
          `${median(walls).toFixed(2)} (${range(walls, 2)})`,
          ratio(rs, cp, c === 'cp'),
          ratio(rs, cpsync, c === 'cpsync'),
          ratio(rs, copy, c === 'copy'),
          rep.length ? median(rep.map((r) => r.seconds)).toFixed(2) : '—',
          rep.length ? median(rep.map((r) => r.kernelSeconds)).toFixed(2) : '—',
          rep.length ? (median(rep.map((r) => r.flops)) / 1e9).toFixed(1) : '—',
          rep.length
            ? `${median(rep.map((r) => r.gflops)).toFixed(1)} (${range(
                rep.map((r) => r.gflops),
                1,
              )})`
            : '—',
          `${MB(median(rss))} (${MB(Math.max(...rss))})`,
          `${user.toFixed(1)} + ${sys.toFixed(1)}`,
          GB(median(rs.map((r) => r.bytesRead))),
          GB(median(rs.map((r) => r.bytesWritten))),
        ].join(' | ')} |`,
      );
    }
  }
  const pct = (xs: readonly (number | null)[]): string => {
    const v = xs.filter((x): x is number => x !== null && Number.isFinite(x));
    return v.length ? `${(100 * Math.min(...v)).toFixed(0)}–${(100 * Math.max(...v)).toFixed(0)} %` : 'n/a';
  };
  lines.push('');
  lines.push(
    `Ratios are medians over rounds of wall(case) ÷ wall(baseline) in the same round. Page cache: inputs ${pct(records.map((r) => r.cacheCold))} ` +
      `resident before the warming read, ${pct(records.map((r) => r.cacheBefore))} after it. Other processes' CPU use: ${pct(records.map((r) => r.busyBefore))} ` +
      `in the second before a case, ${pct(records.map((r) => r.otherDuring))} of both cores during one.`,
  );
  lines.push('');
  lines.push('Inputs:');
  for (const g of gens) {
    lines.push(
      `- ${g.file}: ${g.bytes.toLocaleString('en-US')} bytes, generated in ${g.seconds.toFixed(1)} s` +
        `${g.maxRssBytes !== null ? `, peak RSS ${MB(g.maxRssBytes)} MB` : ''}${g.cached ? ' (cached from an earlier run)' : ''}`,
    );
  }
  const first = records.find((r) => r.report)?.report;
  if (first) lines.push(`- kernel: ${first.kernel}, backend ${first.backend}`);
  for (const arch of archs) {
    for (const c of ['lcm', 'style'] as const) {
      const r = records.find((x) => x.arch === arch && x.case === c)?.report;
      if (r) {
        lines.push(
          `- ${arch} ${c}: ${r.modulesFused} modules fused (${r.inputs.map((i) => `${path.basename(i.source)} ${i.format} ${i.modules} modules ×${i.weight}`).join(', ')}); ` +
            `tensors ${r.tensors.total} (${r.tensors.fused} fused, ${r.tensors.copied} copied, ${r.tensors.converted} converted); overflow ${r.overflow.total}`,
        );
      }
    }
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------------------------

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args[0] === '--gen-one') {
    await generateOne(args[1] as Arch, args[2] as InputKind, args[3]!);
    return;
  }
  const runs = Math.max(1, Number(flag(args, '--runs') ?? 3));
  const extraRuns = Math.max(0, Number(flag(args, '--extra-runs') ?? 1));
  const archs = (flag(args, '--arch') ?? 'sd15,sdxl').split(',') as Arch[];
  const cases = (flag(args, '--cases') ?? ALL_CASES.join(',')).split(',') as Case[];
  for (const c of cases) if (!ALL_CASES.includes(c)) throw new Error(`unknown case ${c}`);
  const profile = flag(args, '--profile') as Case | undefined;
  const jsonOut = flag(args, '--json');
  mkdirSync(OUT, { recursive: true });
  const cli = flag(args, '--cli');
  if (cli) CLI = path.resolve(cli);
  WAIT_IDLE = Number(flag(args, '--wait-idle') ?? 0);
  IDLE_BELOW = Number(flag(args, '--idle-below') ?? 0.15);
  const outDir = flag(args, '--out-dir');
  if (outDir) {
    OUT_DIR = path.resolve(outDir);
    mkdirSync(OUT_DIR, { recursive: true });
  }

  const gens: GenRecord[] = [];
  for (const arch of archs) {
    for (const kind of ['base', 'lcm', 'style'] as const) {
      if (kind === 'style' && !cases.includes('style')) continue;
      const g = ensureInput({ arch, kind });
      gens.push(g);
      process.stderr.write(`${g.file}: ${GB(g.bytes)} GB${g.cached ? ' (cached)' : `, ${g.seconds.toFixed(1)} s`}\n`);
    }
  }
  if (args.includes('--gen-only')) return;
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
  const baseCli = flag(args, '--base-cli');
  if (baseCli) BASE_CLI = path.resolve(baseCli);
  if (cases.includes('lcm0') && !BASE_CLI) throw new Error('case lcm0 needs --base-cli PATH');
  if (cases.includes('torch')) for (const arch of archs) await writePeerMap(arch);

  const cpu = os.cpus();
  const started = new Date();
  process.stderr.write(
    `machine: ${cpu.length} × ${cpu[0]?.model}, ${GB(os.totalmem())} GB RAM, Node ${process.version}, ` +
      `load ${os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}, ${started.toUTCString()}\n`,
  );
  const records: RunRecord[] = [];
  for (const arch of archs) {
    for (let round = 0; round < Math.max(runs, extraRuns); round++) {
      for (const c of cases) {
        if (c === 'style' || c === 'f32' || c === 'torch' ? round >= extraRuns : round >= runs) continue;
        const rec = runCase(arch, c, round);
        records.push(rec);
        const rep = rec.report;
        process.stderr.write(
          `${arch} ${c.padEnd(5)} round ${round + 1}: ${rec.wall.toFixed(2)} s` +
            (rep ? `, kernel ${rep.kernelSeconds.toFixed(2)} s, ${rep.gflops.toFixed(1)} GFLOP/s` : '') +
            (rec.peer
              ? `, peer load ${rec.peer.load_s.toFixed(2)} s + fuse ${rec.peer.fuse_s.toFixed(2)} s (${rec.peer.gflops.toFixed(1)} GFLOP/s) + save ${rec.peer.save_s.toFixed(2)} s`
              : '') +
            `, RSS ${rec.time ? MB(rec.time.maxRssBytes) : rep?.peakRssBytes !== undefined ? MB(rep.peakRssBytes) : '?'} MB` +
            `, cache ${rec.cacheCold === null ? '?' : `${(100 * rec.cacheCold).toFixed(0)} %`} → ${rec.cacheBefore === null ? '?' : `${(100 * rec.cacheBefore).toFixed(0)} %`} (warming read ${rec.warmSeconds.toFixed(1)} s)` +
            `, busy before ${(100 * rec.busyBefore).toFixed(0)} %${rec.waited > 0.5 ? ` (waited ${rec.waited.toFixed(0)} s)` : ''}` +
            `, others during ${(100 * rec.otherDuring).toFixed(0)} %` +
            `, load ${os.loadavg()[0]!.toFixed(2)}\n`,
        );
      }
    }
  }
  const finished = new Date();
  process.stdout.write(
    `\ncli: ${path.relative(ROOT, CLI)}\nmachine: ${cpu.length} × ${cpu[0]?.model}, Node ${process.version}; ${started.toUTCString()} – ` +
      `${finished.toUTCString()} (${((finished.getTime() - started.getTime()) / 1000).toFixed(0)} s); load at end ${os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}\n\n`,
  );
  process.stdout.write(`${table(records, gens)}\n`);
  if (jsonOut) writeFileSync(jsonOut, `${JSON.stringify({ started, finished, gens, records }, null, 2)}\n`);
  if (profile) {
    for (const arch of archs) process.stdout.write(`\n${profileCase(arch, profile)}\n`);
  }
  if (args.includes('--clean')) {
    rmSync(OUT, { recursive: true, force: true });
    process.stderr.write(`removed ${path.relative(ROOT, OUT)}/\n`);
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
