/**
 * The page's Web Worker: reads dropped files (each whole, once, to hash and plan them), decodes them when a job needs
 * their factors, merges and writes the result into a
 * Blob (a fuse: into the chosen file, else an origin-private file), reporting progress for each phase, so the page's
 * own thread only updates the DOM. All local.
 */
import type { ByteSink } from '../../src/core/bytes.js';
import { IoError, LoraError, LoraMixError } from '../../src/core/errors.js';
import { streamedBlobSource } from '../../src/core/blob-stream.js';
import { blobSource, bufferSource } from '../../src/core/memory.js';
import { type ProvenanceInput, provenanceMetadata, weightLabel } from '../../src/core/provenance.js';
import { VERSION } from '../../src/core/version.js';
import {
  decodeLora,
  describeLora,
  encodeLora,
  type LoadedLora,
  type OutputDType,
  planLora,
} from '../../src/formats/index.js';
import { fuseLoras } from '../../src/fuse/index.js';
import { createWasmKernel, createWebCpuKernel, webThreadsAvailable } from '../../src/kernels/index.js';
import { kernelCache } from './kernel-cache.js';
import {
  analyzeHtml,
  analyzeLoras,
  formatAnalyzeReport,
  kohyaResize,
  mergeLoras,
  type MergeWeight,
  type MethodOptions,
} from '../../src/lora/index.js';
import { createSha256, sha256Hex } from '../../src/core/sha256.js';
import { parseSafetensors, writeSafetensors } from '../../src/safetensors/index.js';
import { defaultWeightFor, lcmEvidence } from './lcm.js';
import type {
  ErrorInfo,
  FromWorker,
  FuseRequest,
  MergeRequest,
  MergeSummary,
  ResizeRequest,
  ToWorker,
} from './protocol.js';
import { newClock, type PhaseClock, timedHash, timedSink, timedSource } from './phases.js';
import { scratchSink } from './scratch.js';
import { blobSink, countingSource, readAheadSource, spillingSink, writableSink } from './streams.js';

interface WorkerScope {
  postMessage(message: FromWorker, transfer?: Transferable[]): void;
  onmessage: ((event: MessageEvent<ToWorker>) => void) | null;
}
const scope = self as unknown as WorkerScope;

/**
 * An added input: its File; its factors decoded to f32 (`lora`) once a merge, resize or analysis has needed them,
 * kept for the next such job, let go when a fuse starts (null: not decoded); and what provenance records of it:
 * name, size and the SHA-256 computed while reading. The add only plans the file (header and alphas) and a fuse
 * reads each module's factors from the File when it needs them, as the CLI reads them from disk: the worker never
 * holds the inputs decoded beside the base's tensors.
 */
interface Input {
  file: File;
  lora: LoadedLora | null;
  name: string;
  size: number;
  sha256: string;
}
const loras = new Map<number, Input>();
/** Ids removed while still being read: their result is dropped when the read ends. */
const removed = new Set<number>();

/** Progress messages at most every 50 ms (and always the last one). */
function throttle(post: (done: number, total: number) => void): (done: number, total: number) => void {
  let last = -Infinity;
  return (done, total) => {
    const now = performance.now();
    if (done >= total || now - last > 50) {
      last = now;
      post(done, total);
    }
  };
}

export function errorInfo(e: unknown): ErrorInfo {
  if (e instanceof LoraMixError) return { code: e.code, name: e.name, message: e.message };
  if (e instanceof Error) return { code: 'INTERNAL', name: e.name, message: e.message };
  return { code: 'INTERNAL', name: 'Error', message: String(e) };
}

/** The browser's own SHA-256 (WebCrypto), or null where there is none (no secure context). */
const subtle: SubtleCrypto | null = (globalThis.crypto as Crypto | undefined)?.subtle ?? null;

const hex = (digest: ArrayBuffer): string =>
  Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');

/** A file's bytes, read whole. */
async function readWhole(file: File): Promise<Uint8Array> {
  try {
    return new Uint8Array(await file.arrayBuffer());
  } catch (e) {
    throw new IoError('IO_READ_FAILED', `${file.name}: reading the file failed (${String(e)})`, { file: file.name });
  }
}

/**
 * A LoRA file's bytes and, as a promise, their SHA-256: the file read once, whole (one File.arrayBuffer call: 135 MB
 * in ≈ 0.5 s here, against 0.7–1.4 s in 8–16 MiB File.slice windows). The hash is WebCrypto's `digest` where the
 * page has it: it copies the bytes when called and hashes them off this thread (natively), in parallel with the
 * decode, which is what this worker's thread does next; else the WebAssembly SHA-256 on this thread (≈ 0.6 s for
 * 135 MB). The planner then reads the header and alphas from memory; the buffer is dropped after the add.
 */
async function readLora(file: File, clock: PhaseClock): Promise<{ bytes: Uint8Array; sha256: Promise<string> }> {
  const t = performance.now();
  const bytes = await readWhole(file);
  clock.read += (performance.now() - t) / 1000;
  if (subtle) {
    const digest = subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>).then(hex);
    digest.catch(() => undefined); // awaited (and reported) after the planning
    return { bytes, sha256: digest };
  }
  return { bytes, sha256: Promise.resolve(timedHash(createSha256(), clock).update(bytes).hex()) };
}

async function add(id: number, file: File): Promise<void> {
  const t0 = performance.now();
  try {
    const onRead = throttle((done, total) => scope.postMessage({ type: 'reading', id, done, total }));
    const clock = newClock();
    const { bytes, sha256: hashing } = await readLora(file, clock);
    const t1 = performance.now();
    // Planned, not decoded: the header and the alphas say everything the card shows; the factors are decoded when a
    // merge, resize or analysis first needs them, and a fuse reads them from the File.
    const plan = await planLora(await parseSafetensors(countingSource(bufferSource(bytes, file.name), onRead)));
    const waited = performance.now();
    const sha256 = await hashing;
    clock.hash += (performance.now() - waited) / 1000;
    onRead(file.size, file.size);
    if (removed.delete(id)) return;
    loras.set(id, { file, lora: null, name: file.name, size: file.size, sha256 });
    const summary = describeLora(plan);
    const lcm = lcmEvidence(file.name, plan.metadata, summary);
    scope.postMessage({
      type: 'added',
      info: {
        id,
        fileName: file.name,
        bytes: file.size,
        sha256,
        summary,
        lcm,
        defaultWeight: defaultWeightFor(lcm),
        seconds: (performance.now() - t0) / 1000,
        phases: { read: clock.read, hash: clock.hash, decode: (waited - t1) / 1000 },
      },
    });
  } catch (e) {
    if (removed.delete(id)) return;
    scope.postMessage({ type: 'add-failed', id, fileName: file.name, error: errorInfo(e) });
  }
}

function weightsOf(request: MergeRequest): MergeWeight[] {
  const global = request.blocks?.trim() ?? '';
  return request.inputs.map(({ weight, blocks, components }) => {
    const own = blocks?.trim() ?? '';
    const spec = own !== '' ? own : global;
    if (spec === '' && !components) return weight;
    return { weight, ...components, ...(spec !== '' ? { blocks: spec } : {}) };
  });
}

function inputsOf(request: MergeRequest): Input[] {
  return request.inputs.map(({ id }) => inputOf(id));
}

function inputOf(id: number): Input {
  const l = loras.get(id);
  if (!l) throw new Error(`input ${id} is no longer loaded; add the file again`);
  return l;
}

/** The input's factors decoded to f32: kept from an earlier job, else read from its File and decoded. */
async function decoded(input: Input): Promise<LoadedLora> {
  if (input.lora) return input.lora;
  const bytes = await readWhole(input.file);
  const lora = await decodeLora(await parseSafetensors(bufferSource(bytes, input.name)));
  input.lora = lora;
  return lora;
}

/** The inputs decoded, in order. */
async function decodedInputs(files: readonly Input[]): Promise<LoadedLora[]> {
  const out: LoadedLora[] = [];
  for (const f of files) out.push(await decoded(f));
  return out;
}

const methodOf = (request: MergeRequest): MethodOptions | Record<string, never> =>
  request.method ? ({ method: request.method, ...request.params } as MethodOptions) : {};

/** Resize one input with kohya's rules, like `lora-mix resize`, and write it with provenance. */
async function resize(job: number, request: ResizeRequest): Promise<void> {
  const t0 = performance.now();
  try {
    const input = inputOf(request.id);
    const inputLora = await decoded(input);
    const onProgress = throttle((done, total) =>
      scope.postMessage({ type: 'progress', job, done, total, phase: 'resize' }),
    );
    const { lora, report } = kohyaResize(inputLora, {
      rule: request.rule,
      ...(request.maxRank !== undefined ? { maxRank: request.maxRank } : {}),
      onProgress,
    });
    const dtype: OutputDType = request.dtype === 'auto' ? inputDType([inputLora]) : request.dtype;
    const metadata = provenanceMetadata('resize', provenanceInputs([input], [1]), {
      format: request.format,
      dtype,
      ...request.rule,
      ...(request.maxRank !== undefined ? { maxRank: request.maxRank } : {}),
    });
    const { blob, bytes } = await writeLora(job, lora, request.format, dtype, metadata, request.fileName);
    const worst = [...report.modules].sort((a, b) => a.froRetained - b.froRetained)[0];
    const pct = (x: number) => `${(100 * x).toFixed(2)} %`;
    const before = report.modules.map((m) => m.rankBefore);
    scope.postMessage({
      type: 'resized',
      job,
      blob,
      summary: {
        modules: report.modules.length,
        rankBefore: { min: Math.min(...before), max: Math.max(...before) },
        rankAfter: { ...report.rankAfter },
        meanFroRetained: report.meanFroRetained,
        stdFroRetained: report.stdFroRetained,
        minFroRetained: report.minFroRetained,
        maxFroRetained: report.maxFroRetained,
        worst: worst
          ? `${worst.path}: rank ${worst.rankBefore} → ${worst.rankAfter}, sum(S) kept ${pct(worst.sumRetained)}, ` +
            `fro kept ${pct(worst.froRetained)}, S0/S${worst.rankAfter - 1} ${worst.maxRatio.toFixed(1)}`
          : '',
        dtype,
        format: request.format,
        bytes,
        seconds: (performance.now() - t0) / 1000,
      },
    });
  } catch (e) {
    scope.postMessage({ type: 'merge-failed', job, error: errorInfo(e) });
  }
}

/** Provenance of a base checkpoint as the CLI records it: size and the SHA-256 of its 8-byte length and header. */
async function baseProvenance(base: File): Promise<ProvenanceInput> {
  const source = blobSource(base, base.name);
  let end = Math.min(8, base.size);
  if (end === 8) {
    const n = new DataView((await source.read(0, 8)).buffer).getBigUint64(0, true);
    end = Number(BigInt(base.size) < 8n + n ? BigInt(base.size) : 8n + n);
  }
  return { role: 'base', name: base.name, size: base.size, headerSha256: sha256Hex(await source.read(0, end)) };
}

/** The fuse kernel, made once and reused: on every core when the page is cross-origin isolated, else one thread. */
const fuseKernels = kernelCache((threads) =>
  threads !== 1 && webThreadsAvailable()
    ? createWebCpuKernel(threads !== undefined ? { threads } : {})
    : createWasmKernel(),
);

/**
 * What the fuse writes into: the chosen file's writable stream (streamed to disk), else a file of the origin-private
 * file system (synchronous writes; the page gets it back as a File) that moves to Blob pieces if the origin's storage
 * quota runs out while it is written (spillingSink), else Blob pieces.
 */
async function fuseSink(
  name: string,
  target: FileSystemFileHandle | undefined,
): Promise<{
  sink: ByteSink & { readonly byteLength: number };
  blob(): Promise<Blob | null>;
  keptIn?: () => 'origin-private file' | 'memory';
}> {
  if (!target) {
    const scratch = await scratchSink('fuse', name);
    if (scratch) {
      const sink = spillingSink(scratch.sink, () => blobSink(name));
      return {
        sink,
        blob: async () => (sink.spilled ? sink.spilled.blob() : scratch.file()),
        keptIn: () => (sink.spilled ? 'memory' : 'origin-private file'),
      };
    }
    const sink = blobSink(name);
    return { sink, blob: async () => sink.blob(), keptIn: () => 'memory' };
  }
  try {
    return { sink: writableSink(target.name, await target.createWritable()), blob: async () => null };
  } catch (e) {
    throw new IoError('IO_WRITE_FAILED', `${target.name}: cannot open the chosen file for writing (${String(e)})`, {
      file: target.name,
    });
  }
}

/**
 * Fuse Σ λ·τ into the base checkpoint, streamed tensor by tensor: the base read front to back through one stream
 * (streamedBlobSource: no File.slice round trip per tensor), the kernel on every
 * core where the page is cross-origin isolated, and the output written straight into the chosen file (`target`,
 * from showSaveFilePicker) through a bounded queue — or, without one, into Blob pieces for a download.
 */
async function fuse(
  job: number,
  request: FuseRequest,
  base: File,
  target: FileSystemFileHandle | undefined,
  threads: number | undefined,
): Promise<void> {
  const t0 = performance.now();
  try {
    const files = inputsOf(request.merge);
    const weights = weightsOf(request.merge);
    const method = methodOf(request.merge);
    const dtype = request.dtype === 'auto' ? undefined : request.dtype;
    const metadata = provenanceMetadata('fuse', [await baseProvenance(base), ...provenanceInputs(files, weights)], {
      device: 'cpu',
      onOverflow: 'error',
      ...(dtype ? { dtype } : {}),
      ...method,
    });
    const kernel = await fuseKernels.get(threads);
    const out = await fuseSink(request.fileName, target);
    const clock = { ...newClock(), write: 0 };
    const onProgress = throttle((done, total) =>
      scope.postMessage({ type: 'progress', job, done, total, phase: 'fuse' }),
    );
    // Each input read from its File when the fuse needs a module, and factors an earlier job decoded let go: the
    // worker then holds what the CLI holds. The fuse asks for the factors in the base's order, which is close to the
    // file's but not the same: 4 MiB windows, four kept per input, serve the SD1.5 LCM + style fuse's factor reads
    // (794 for the style LoRA alone) with 77 + 21 File.slice round trips, fetching 400 MB for the 172 MB needed.
    for (const f of files) f.lora = null;
    const report = await fuseLoras(
      timedSource(readAheadSource(streamedBlobSource(base, base.name)), clock),
      await Promise.all(
        files.map((f) => parseSafetensors(blobSource(f.file, f.name, { window: { window: 4 << 20, keep: 4 } }))),
      ),
      weights,
      {
        out: timedSink(out.sink, clock),
        kernel,
        metadata,
        ...method,
        ...(dtype ? { dtype } : {}),
        onProgress: (p) => onProgress(p.bytesDone, p.bytesTotal),
      },
    );
    const blob = await out.blob();
    scope.postMessage({
      type: 'fused',
      job,
      blob,
      summary: {
        arch: report.arch,
        modulesFused: report.modulesFused,
        tensors: { ...report.tensors },
        overflow: report.overflow.total,
        kernel: `${report.kernel} (${report.backend})`,
        bytes: out.sink.byteLength,
        ...(target ? { savedTo: target.name } : {}),
        ...(out.keptIn ? { keptIn: out.keptIn() } : {}),
        seconds: (performance.now() - t0) / 1000,
        phases: { read: clock.read, write: clock.write, kernel: report.kernelSeconds },
      },
    });
  } catch (e) {
    fuseKernels.jobFailed(e);
    scope.postMessage({ type: 'merge-failed', job, error: errorInfo(e) });
  }
}

/** The interference analysis of the inputs at their weights, as text and as the self-contained picture. */
async function analyze(job: number, request: MergeRequest): Promise<void> {
  const t0 = performance.now();
  try {
    const files = inputsOf(request);
    scope.postMessage({ type: 'progress', job, done: 0, total: 1, phase: 'analyze' });
    const inputs = await decodedInputs(files);
    const report = analyzeLoras(
      files.map((f, i) => ({ name: f.name, lora: inputs[i]!, weight: request.inputs[i]?.weight ?? 1 })),
    );
    scope.postMessage({ type: 'progress', job, done: 1, total: 1, phase: 'analyze' });
    scope.postMessage({
      type: 'analyzed',
      job,
      summary: {
        text: formatAnalyzeReport(report),
        html: analyzeHtml(report),
        seconds: (performance.now() - t0) / 1000,
      },
    });
  } catch (e) {
    scope.postMessage({ type: 'merge-failed', job, error: errorInfo(e) });
  }
}

/** Encode and write a LoRA into Blob pieces, reporting the write in percent of tensors. */
async function writeLora(
  job: number,
  lora: Parameters<typeof encodeLora>[0],
  format: 'kohya' | 'peft',
  dtype: OutputDType,
  metadata: Record<string, string>,
  fileName: string,
): Promise<{ blob: Blob; bytes: number; flushedToZero: number }> {
  // Blob pieces, not an origin-private file: a LoRA is small, and with a profile in memory (a private window, the
  // benchmark's fresh profile) the file's synchronous writes went through the browser process and took 3.3–3.6 s
  // for the 172 MB merge against 1.2–2.0 s for Blob pieces (bench/RESULTS.md, issue 16 session 5).
  const encoded = encodeLora(lora, { format, dtype, metadata });
  const sink = blobSink(fileName);
  const onWrite = throttle((done, total) => scope.postMessage({ type: 'progress', job, done, total, phase: 'write' }));
  onWrite(0, encoded.tensors.length);
  const written = await writeSafetensors(sink, encoded.tensors, {
    metadata: encoded.metadata,
    onTensor: (_info, i, count) => onWrite(i + 1, count),
  });
  return { blob: sink.blob(), bytes: written.byteLength, flushedToZero: encoded.stats.flushedToZero };
}

async function merge(job: number, request: MergeRequest): Promise<void> {
  const t0 = performance.now();
  try {
    const files = inputsOf(request);
    const inputs = await decodedInputs(files);
    const weights = weightsOf(request);
    const onMerge = throttle((done, total) =>
      scope.postMessage({ type: 'progress', job, done, total, phase: 'merge' }),
    );
    const method = methodOf(request);
    const { lora, report } = mergeLoras(inputs, weights, {
      ...method,
      ...(request.rank !== undefined ? { rank: request.rank } : {}),
      onProgress: onMerge,
    });
    const merged = performance.now();
    if (report.written === 0) {
      throw new LoraError(
        'LORA_EMPTY',
        `merge: nothing to write — all ${report.dropped.length} module(s) were dropped because their weight is 0 or ` +
          'their update is all zeros; give at least one input a non-zero weight',
        { dropped: report.dropped.length },
      );
    }
    const dtype: OutputDType = request.dtype === 'auto' ? inputDType(inputs) : request.dtype;
    const metadata = provenanceMetadata('merge', provenanceInputs(files, weights), {
      format: request.format,
      dtype,
      ...(request.rank !== undefined ? { rank: request.rank } : {}),
      ...method,
    });
    const written = await writeLora(job, lora, request.format, dtype, metadata, request.fileName);
    const phases = { merge: (merged - t0) / 1000, write: (performance.now() - merged) / 1000 };
    const summary: MergeSummary = {
      arch: lora.arch,
      modules: report.written,
      dropped: report.dropped.length,
      rankBefore: { ...report.rankBefore },
      rankAfter: { ...report.rankAfter },
      meanNormKept: report.meanNormKept,
      minNormKept: report.minNormKept,
      exact: report.exact,
      dtype,
      format: request.format,
      bytes: written.bytes,
      flushedToZero: written.flushedToZero,
      seconds: (performance.now() - t0) / 1000,
      phases,
    };
    scope.postMessage({ type: 'merged', job, blob: written.blob, summary });
  } catch (e) {
    scope.postMessage({ type: 'merge-failed', job, error: errorInfo(e) });
  }
}

/** What provenance records of each input: its file name, size, SHA-256 and the weight it was used with. */
function provenanceInputs(files: readonly Input[], weights: readonly MergeWeight[]): ProvenanceInput[] {
  return files.map((f, i) => {
    const weight = weightLabel(weights[i]);
    return { role: 'lora', name: f.name, size: f.size, sha256: f.sha256, ...(weight !== undefined ? { weight } : {}) };
  });
}

/** The inputs' storage dtype when they agree and it can be written (F16/BF16/F32), else F32. */
function inputDType(inputs: readonly LoadedLora[]): OutputDType {
  const dtypes = new Set(inputs.map((l) => l.dtype));
  if (dtypes.size === 1) {
    const d = [...dtypes][0];
    if (d === 'F16' || d === 'BF16' || d === 'F32') return d;
  }
  return 'F32';
}

/** Messages are handled one at a time, in order: a merge sees every add and remove sent before it. */
let queue: Promise<void> = Promise.resolve();
scope.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === 'remove') {
    if (!loras.delete(msg.id)) removed.add(msg.id);
    return;
  }
  if (msg.type === 'add') void add(msg.id, msg.file);
  else if (msg.type === 'merge') queue = queue.then(() => merge(msg.job, msg.request));
  else if (msg.type === 'resize') queue = queue.then(() => resize(msg.job, msg.request));
  else if (msg.type === 'fuse') queue = queue.then(() => fuse(msg.job, msg.request, msg.base, msg.target, msg.threads));
  else if (msg.type === 'analyze') queue = queue.then(() => analyze(msg.job, msg.request));
};
scope.postMessage({ type: 'ready', version: VERSION });
