/**
 * The streamed conversion (Node only): `convert` of a file of any mix of kinds, module by module with bounded
 * memory, the modules converted on worker threads (src/node/reduce-worker.ts runs convertModule), the same bytes as
 * the in-memory conversion (src/lora/convert.ts convertLora, then saveLora).
 *
 * - Exact (no target): every module's exact rank and factor shapes follow from its tensors' shapes (exactShapeModule
 *   of readPlannedShapeTerm: from the header, no factor read), so the input is read once: as the writer asks for
 *   each module's factors in file order, the workers form them (a few modules ahead) and they go straight to the
 *   output — nothing is spilled (an exact SDXL LoHa is several GB of factors). Written as F16, the workers hand over
 *   finished F16 bytes (exactOutcomeF16: a LoHa's Khatri–Rao factors formed and encoded in WASM), so this thread
 *   only reads the input and writes.
 * - With a target: the written ranks are known only after each module's SVD, so the reduced factors go to a spill
 *   file beside the output (as the streaming merge does) until the header can be written.
 * At any time memory holds the modules in flight (two per worker and the read-ahead), never the whole input or result.
 *
 * Files with norm-layer differences, embeddings or base-dependent kinds (DoRA, GLoRA, OFT, BOFT: they need --base)
 * take the in-memory path (convertStreaming returns null).
 */
import { availableParallelism } from 'node:os';
import ndarray from 'ndarray';
import { assertFiniteTensor } from '../core/finite.js';
import { DTYPE_SIZE } from '../core/tensor.js';
import {
  defaultOutputDType,
  openPath,
  saveLora,
  type DecodeOptions,
  type EncodedFactor,
  type FactorStore,
  type LoadedLora,
  type LoraPlan,
  type OutputDType,
  type PlannedModule,
  type SaveOptions,
} from '../formats/index.js';
import { loraOfPlan, planLora, readPlannedShapeTerm, readPlannedTerm } from '../formats/decode.js';
import type { EncodeStats } from '../formats/encode.js';
import { moduleConversion, summarizeConversions, type ConversionReport } from '../lora/conversion-report.js';
import {
  assembleConversion,
  checkConvertTarget,
  convertedMetadata,
  convertLora,
  type ConvertResult,
} from '../lora/convert.js';
import {
  ConvertScratch,
  convertedModule,
  convertModule,
  exactOutcomeF16,
  exactShapeModule,
  type ModuleConvertOutcome,
} from '../lora/convert-module.js';
import type { F16Factor } from '../lora/factor-f16.js';
import type { RankTarget } from '../lora/reduce.js';
import { packTerm } from '../lora/terms/pack.js';
import { kindNeedsBase, termShape } from '../lora/terms/index.js';
import type { Lora, LoraModule, Term } from '../lora/types.js';
import type { SafetensorsFile } from '../safetensors/read.js';
import type { WriteResult } from '../safetensors/write.js';
import { forEachBounded } from './bounded.js';
import { Spill } from './merge-stream.js';
import { ReducePool } from './reduce-pool.js';

export interface StreamingConvertOptions {
  /** Rank K and / or minEnergy E (absent: exact). */
  readonly target?: RankTarget;
  /** Worker threads (default: one per core); 1 converts on this thread. */
  readonly threads?: number;
  readonly onProgress?: (done: number, total: number) => void;
  /** How the input is read (arch, allowUnmatched …), as loadLora takes them. */
  readonly decode?: DecodeOptions;
}

/** A conversion whose factors are formed (exact) or spilled (target) as the output is written. */
export interface StreamedConversion {
  /** The input as planned (header and alphas). */
  readonly plan: LoraPlan;
  /** The LoRA written: the input's description, its modules as written (shapes only, no values). */
  readonly lora: LoadedLora;
  /** The input's kind label per module path. */
  readonly kinds: ReadonlyMap<string, string>;
  readonly report?: ConversionReport;
  /** Write the result (the output's metadata comes from `options`, as saveLora takes it), then `dispose`. */
  save(target: string, options: SaveOptions): Promise<WriteResult & { stats: EncodeStats }>;
  /** Close the input and remove the spill file. */
  dispose(): Promise<void>;
}

/**
 * Outputs with at least this many bytes of factors are written with O_DIRECT (SaveOptions.direct), as fuse writes
 * its outputs: buffered writes of GBs cost ~3 s of system time per GB of fresh page cache here (bench/RESULTS.md,
 * "fuse with the O_DIRECT output writer").
 */
const DIRECT_MIN_BYTES = 256 << 20;

/** Modules formed ahead of the writer in an exact conversion (per worker). */
const AHEAD_PER_THREAD = 2;

/** One module of the input, read and checked as loadLora reads it. */
async function readModuleTerm(file: SafetensorsFile, m: PlannedModule): Promise<Term> {
  const t = await readPlannedTerm(file, m);
  if (!m.adapter) {
    const lr = t as LoraModule;
    assertFiniteTensor(file.name, m.downKey, lr.down.data, 'LoRA factor');
    assertFiniteTensor(file.name, m.upKey, lr.up.data, 'LoRA factor');
  }
  return t;
}

/** Convert one module: exactly (with `f16`, its factors formed as F16 bits: exactOutcomeF16) or to the target. */
type Run = (path: string, term: Term, exact: boolean, f16?: boolean) => Promise<ModuleConvertOutcome>;

/** Convert modules on a pool of workers, or on this thread. */
function converter(threads: number, target: RankTarget | undefined): { run: Run; close: () => Promise<void> } {
  const pool = threads > 1 ? ReducePool.start(threads) : null;
  if (!pool) {
    const scratch = new ConvertScratch();
    return {
      run: async (path, term, exact, f16 = false) =>
        exact && f16 ? exactOutcomeF16(term, path) : convertModule(term, path, exact ? undefined : target, scratch),
      close: async () => undefined,
    };
  }
  return {
    run: (path, term, exact, f16 = false) =>
      pool.run<ModuleConvertOutcome>(path, () => ({
        path,
        out: 0,
        fanIn: 0,
        target: target ?? {},
        terms: [],
        convert: { term: packTerm(term), exact, ...(exact && f16 ? { f16: true } : {}) },
      })),
    close: () => pool.close(),
  };
}

const NO_VALUES = new Float32Array(0);

/** Bytes of the factors of these modules (shapes only) written in `dtype`. */
function factorBytes(modules: ReadonlyMap<string, LoraModule>, dtype: OutputDType): number {
  let n = 0;
  for (const m of modules.values())
    n += m.up.shape.reduce((a, b) => a * b, 1) + m.down.shape.reduce((a, b) => a * b, 1);
  return n * DTYPE_SIZE[dtype];
}

/** A module with its factor shapes, alpha and bias but no factor values. */
const shapesOf = (m: LoraModule): LoraModule => ({
  up: ndarray(NO_VALUES, [...m.up.shape]),
  down: ndarray(NO_VALUES, [...m.down.shape]),
  alpha: m.alpha,
  ...(m.bias ? { bias: m.bias } : {}),
});

/** A module's formed factors: f32 values, or (formed as F16) finished bytes. */
type FormedPair = { up: Float32Array | EncodedFactor; down: Float32Array | EncodedFactor };

/** F16 bits from a worker as the writer takes them. */
const encodedF16 = (f: F16Factor): EncodedFactor => ({
  dtype: 'F16',
  bytes: new Uint8Array(f.bits.buffer, f.bits.byteOffset, f.bits.byteLength),
  values: f.bits.length,
  flushedToZero: f.flushed,
});

/**
 * The exact factors of each module formed when the writer asks for them (file order), `ahead` modules in advance;
 * each factor is handed out once and then dropped. Asked for F16 (readEncoded), the workers form them as F16 bytes
 * (exactOutcomeF16), so the writer's thread only writes; asked for f32 (read), as f32 values.
 */
class FormedFactors implements FactorStore {
  private readonly index = new Map<string, number>();
  private readonly formed = new Map<string, { readonly f16: boolean; readonly pair: Promise<Partial<FormedPair>> }>();
  private readonly done = new Set<string>();

  constructor(
    private readonly order: readonly string[],
    private readonly form: (path: string, f16: boolean) => Promise<FormedPair>,
    private readonly ahead: number,
    readonly active: number,
  ) {
    for (const [i, p] of order.entries()) this.index.set(p, i);
  }

  async read(path: string, factor: 'up' | 'down'): Promise<Float32Array> {
    return (await this.take(path, factor, false)) as Float32Array;
  }

  readEncoded(path: string, factor: 'up' | 'down', dtype: OutputDType): Promise<Float32Array | EncodedFactor> {
    return this.take(path, factor, dtype === 'F16');
  }

  private async take(path: string, factor: 'up' | 'down', f16: boolean): Promise<Float32Array | EncodedFactor> {
    const i = this.index.get(path) ?? 0;
    for (let j = i; j < Math.min(this.order.length, i + this.ahead + 1); j++) this.start(this.order[j] ?? path, f16);
    let formed = this.formed.get(path);
    // Formed in the other form, or both factors handed out already (never by the encoder): formed again.
    if (!formed || formed.f16 !== f16) {
      this.done.delete(path);
      this.formed.delete(path);
      this.start(path, f16);
      formed = this.formed.get(path)!;
    }
    const f = await formed.pair;
    const v = f[factor];
    if (v === undefined) {
      // A factor asked for twice (never by the encoder) is formed again.
      this.formed.delete(path);
      this.start(path, f16);
      return (await this.formed.get(path)!.pair)[factor]!;
    }
    f[factor] = undefined;
    if (!f.up && !f.down && this.formed.get(path) === formed) {
      this.formed.delete(path);
      this.done.add(path);
    }
    return v;
  }

  private start(path: string, f16: boolean): void {
    if (this.formed.has(path) || this.done.has(path)) return;
    const pair: Promise<Partial<FormedPair>> = this.form(path, f16).then((f) => ({ up: f.up, down: f.down }));
    pair.catch(() => undefined); // a failure is reported to the read that awaits it
    this.formed.set(path, { f16, pair });
  }
}

/**
 * Plan and convert a LoRA file module by module (see the file comment), or null when the file needs the in-memory
 * path (norm differences, embeddings, base-dependent kinds). Errors are those of loadLora and convertLora.
 */
export async function convertStreaming(
  input: string,
  spillBeside: string,
  options: StreamingConvertOptions = {},
): Promise<StreamedConversion | null> {
  const { target } = options;
  checkConvertTarget(target);
  const file = await openPath(input);
  let spill: Spill | null = null;
  let conv: ReturnType<typeof converter> | null = null;
  const dispose = async (): Promise<void> => {
    await conv?.close();
    conv = null;
    await spill?.dispose();
    spill = null;
    await file.close().catch(() => undefined);
  };
  try {
    const plan = await planLora(file, options.decode ?? {});
    if (plan.embeddings.length > 0 || plan.norms.length > 0 || plan.modules.some((m) => kindNeedsBase(m.kind))) {
      await dispose();
      return null;
    }
    for (const m of plan.modules) {
      if (!Number.isFinite(m.alpha)) assertFiniteTensor(file.name, m.alphaKey ?? m.name, [m.alpha], 'alpha');
    }
    const work = plan.modules.length;
    const threads = Math.max(1, Math.min(Math.floor(options.threads ?? availableParallelism()), work));
    conv = converter(threads, target);
    const run = conv.run;
    const byPath = new Map(plan.modules.map((m) => [m.entry.path, m]));
    const kinds = new Map(plan.modules.map((m) => [m.entry.path, m.label]));
    const modules = new Map<string, LoraModule>();
    let done = 0;
    const tick = (): void => {
      done++;
      options.onProgress?.(done, work);
    };
    let report: ConversionReport | undefined;
    let store: FactorStore;
    if (target === undefined) {
      // The shapes of every module's exact factors, from the header (readPlannedShapeTerm: no factor is read or
      // formed; only bias deltas are read, since they are written as they are).
      for (const m of plan.modules) {
        modules.set(m.entry.path, exactShapeModule(await readPlannedShapeTerm(file, m), m.entry.path));
      }
      const form = async (path: string, f16: boolean): Promise<FormedPair> => {
        const m = byPath.get(path)!;
        const o = await run(path, await readModuleTerm(file, m), true, f16);
        tick();
        if (o.f16) return { up: encodedF16(o.f16.up), down: encodedF16(o.f16.down) };
        return { up: o.up ?? NO_VALUES, down: o.down ?? NO_VALUES };
      };
      store = new FormedFactors([...modules.keys()], form, AHEAD_PER_THREAD * threads, modules.size);
    } else {
      const s = await Spill.create(spillBeside);
      spill = s;
      const rows = new Map<string, ReturnType<typeof moduleConversion>>();
      await forEachBounded(plan.modules, 2 * threads + 1, async (m) => {
        const path = m.entry.path;
        const term = await readModuleTerm(file, m);
        const shape = termShape(term, path);
        return () =>
          run(path, term, false).then(async (o) => {
            const written = convertedModule(o, shape);
            if (written) {
              await s.put(path, written);
              modules.set(path, shapesOf(written));
            }
            rows.set(path, moduleConversion(path, m.label, o));
            tick();
          });
      });
      // Layout order, as the in-memory conversion has them.
      const ordered = new Map<string, LoraModule>();
      for (const m of plan.modules) {
        const x = modules.get(m.entry.path);
        if (x) ordered.set(m.entry.path, x);
      }
      modules.clear();
      for (const [p, x] of ordered) modules.set(p, x);
      report = summarizeConversions(
        plan.modules.map((m) => rows.get(m.entry.path)!),
        target,
      );
      await conv.close();
      conv = null;
      store = s;
    }
    const lora = loraOfPlan(plan, modules, convertedMetadata(plan.metadata, target, modules.values()));
    return {
      plan,
      lora,
      kinds,
      ...(report ? { report } : {}),
      save: (out, saveOptions) =>
        saveLora(lora, out, {
          ...(factorBytes(modules, saveOptions.dtype ?? defaultOutputDType({ ...lora, modules })) >= DIRECT_MIN_BYTES
            ? { direct: true }
            : {}),
          ...saveOptions,
          factorStore: store,
        }),
      dispose,
    };
  } catch (e) {
    await dispose();
    throw e;
  }
}

/**
 * convertLora on worker threads, for a LoRA already in memory (the files convertStreaming leaves to the in-memory
 * path: base-dependent kinds resolved with --base, weighted inputs, norms, embeddings): the same per-module function,
 * so the same result as convertLora; `threads` ≤ 1 runs convertLora itself.
 */
export async function convertLoraParallel<L extends Lora<Term>>(
  lora: L,
  target: RankTarget | undefined,
  options: { readonly threads?: number; readonly onProgress?: (done: number, total: number) => void } = {},
): Promise<ConvertResult<L>> {
  checkConvertTarget(target);
  const total = lora.modules.size;
  const threads = Math.max(1, Math.min(Math.floor(options.threads ?? availableParallelism()), total));
  if (threads <= 1) return convertLora(lora, target);
  const conv = converter(threads, target);
  const outcomes = new Map<string, ModuleConvertOutcome>();
  let done = 0;
  try {
    await Promise.all(
      [...lora.modules].map(([path, t]) =>
        conv.run(path, t, target === undefined).then((o) => {
          outcomes.set(path, o);
          options.onProgress?.(++done, total);
        }),
      ),
    );
  } finally {
    await conv.close();
  }
  return assembleConversion(lora, target, (path) => outcomes.get(path)!);
}
