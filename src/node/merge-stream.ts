/**
 * The streaming merge (Node only): the same merge as mergeLoras / mergeLorasParallel, with bounded memory, for
 * merges that reduce modules (a merge method, `rank`, `minEnergy`). The inputs are opened and planned (header and
 * alphas only, src/formats/decode.ts); the merge is planned on LoRAs whose modules carry only their shapes; then,
 * module by module, that module's factors are read from the input files, the module is reduced (on worker threads
 * when there are several: the method's dense deltas and the truncated SVD, or the factor-space reduction), and the
 * result factors go to a spill file beside the output until the output is written. At any time memory holds the
 * modules in flight (two per worker), never the inputs or the result.
 *
 * The result is byte for byte the file mergeLoras would write: the same plan, the same per-module functions, the
 * same assembly (src/lora/merge.ts assembleMerge) and encoder (src/formats/encode.ts, reading the spill as a
 * FactorStore).
 *
 * Inputs with modules of other adapter kinds, PEFT bias deltas, norm-layer differences or embeddings take the
 * in-memory path
 * (openStreamingInputs returns null for them).
 */
import { availableParallelism } from 'node:os';
import { promises as fs } from 'node:fs';
import ndarray from 'ndarray';
import { IoError, LoraError } from '../core/errors.js';
import { assertFiniteTensor } from '../core/finite.js';
import {
  openPath,
  saveLora,
  type DecodeOptions,
  type FactorStore,
  type LoadedLora,
  type PlannedModule,
  type SaveOptions,
} from '../formats/index.js';
import { loraOfPlan, planLora, readPlannedTerm } from '../formats/decode.js';
import { applies } from '../formats/validate.js';
import {
  assembleMerge,
  exactModule,
  factorTerms,
  methodRequest,
  planMerge,
  type MergePart,
  type MergePlan,
  type MergeReport,
  type MergeWeight,
  type PlannedMergeModule,
} from '../lora/merge.js';
import { DenseScratch, methodModule } from '../lora/method-module.js';
import { RankReducer, reduceModule, type ReduceOutcome } from '../lora/reduce.js';
import type { Lora, LoraModule } from '../lora/types.js';
import type { SafetensorsFile } from '../safetensors/read.js';
import type { WriteResult } from '../safetensors/write.js';
import type { EncodeStats } from '../formats/encode.js';
import type { ParallelMergeOptions } from './merge-threads.js';
import { ownedReduceJob } from './merge-threads.js';
import { forEachBounded } from './bounded.js';
import { ReducePool } from './reduce-pool.js';
import { registerTemp, releaseTemp, tempPathFor } from './temp-files.js';

/** Inputs opened for a streaming merge: LoRAs whose modules hold shapes only, and where their factors are. */
export interface StreamingInputs {
  /** One per input: the decoded LoRA's description (format, dtype, source …) with shape-only modules. */
  readonly loras: readonly LoadedLora[];
  readonly files: readonly SafetensorsFile[];
  /** Per input: module path → where its factors are in the file. */
  readonly planned: readonly ReadonlyMap<string, PlannedModule>[];
  close(): Promise<void>;
}

/** A merge result whose factors are in a spill file: write it with `save`, then `dispose`. */
export interface StreamedMerge {
  /** The merged LoRA, modules with shapes only (the values are in the spill). */
  readonly lora: Lora;
  readonly report: MergeReport;
  save(target: Parameters<typeof saveLora>[1], options: SaveOptions): Promise<WriteResult & { stats: EncodeStats }>;
  /** Remove the spill file. */
  dispose(): Promise<void>;
}

const NO_VALUES = new Float32Array(0);

/** A module carrying only its factor shapes and alpha (what planning a merge needs). */
const shapeOnly = (down: readonly number[], up: readonly number[], alpha: number): LoraModule => ({
  down: ndarray(NO_VALUES, [...down]),
  up: ndarray(NO_VALUES, [...up]),
  alpha,
});

/**
 * Open and plan the inputs (header and alphas only). Null when some input needs the in-memory path (modules of other
 * adapter kinds, bias deltas, embeddings); the files are closed then. Errors are those of loadLora.
 */
export async function openStreamingInputs(
  paths: readonly string[],
  options: DecodeOptions = {},
): Promise<StreamingInputs | null> {
  const files: SafetensorsFile[] = [];
  const close = async (): Promise<void> => {
    await Promise.all(files.map((f) => f.close().catch(() => undefined)));
  };
  try {
    const loras: LoadedLora[] = [];
    const planned: Map<string, PlannedModule>[] = [];
    for (const p of paths) {
      const file = await openPath(p);
      files.push(file);
      const plan = await planLora(file, options);
      if (
        plan.embeddings.length > 0 ||
        plan.norms.length > 0 ||
        plan.modules.some((m) => m.adapter || m.biasKey !== undefined)
      ) {
        await close();
        return null;
      }
      const byPath = new Map<string, PlannedModule>();
      const modules = new Map<string, LoraModule>();
      for (const m of plan.modules) {
        if (!Number.isFinite(m.alpha)) assertFiniteTensor(file.name, m.alphaKey ?? m.name, [m.alpha], 'alpha');
        byPath.set(m.entry.path, m);
        modules.set(m.entry.path, shapeOnly(m.downShape, m.upShape, m.alpha));
      }
      planned.push(byPath);
      loras.push(loraOfPlan(plan, modules));
    }
    return { loras, files, planned, close };
  } catch (e) {
    await close();
    throw e;
  }
}

/** One input's module read from its file, checked as loadLora checks it. */
async function readModule(inputs: StreamingInputs, input: number, path: string): Promise<LoraModule> {
  const file = inputs.files[input];
  const m = inputs.planned[input]?.get(path);
  if (!file || !m)
    throw new LoraError('LORA_UNMATCHED_MODULES', `merge: module '${path}' is not in input ${input + 1}`, {
      key: path,
    });
  const term = (await readPlannedTerm(file, m)) as LoraModule;
  assertFiniteTensor(file.name, m.downKey, term.down.data, 'LoRA factor');
  assertFiniteTensor(file.name, m.upKey, term.up.data, 'LoRA factor');
  return term;
}

/** A planned module with its terms' factors read from the files (each input read once). */
export async function withFactors(inputs: StreamingInputs, pm: PlannedMergeModule): Promise<PlannedMergeModule> {
  const wanted = new Set([...pm.parts, ...(pm.members ?? [])].map((p) => p.input));
  const read = new Map<number, LoraModule>();
  await Promise.all([...wanted].map(async (i) => read.set(i, await readModule(inputs, i, pm.path))));
  const fill = (p: MergePart): MergePart => ({ ...p, module: read.get(p.input) ?? p.module });
  return { ...pm, parts: pm.parts.map(fill), ...(pm.members ? { members: pm.members.map(fill) } : {}) };
}

interface Extent {
  readonly offset: number;
  readonly length: number;
}

/** The spill file: factor values written once, read back once by the encoder (the streaming merge and convert). */
export class Spill implements FactorStore {
  private position = 0;
  private readonly where = new Map<string, { up: Extent; down: Extent }>();
  active = 0;

  private constructor(
    readonly path: string,
    private readonly handle: fs.FileHandle,
  ) {}

  static async create(beside: string): Promise<Spill> {
    const path = tempPathFor(`${beside}.spill`);
    const handle = await fs.open(path, 'wx+');
    registerTemp(path);
    return new Spill(path, handle);
  }

  async put(path: string, m: LoraModule): Promise<void> {
    if (applies(m)) this.active++;
    const up = await this.append(m.up.data);
    const down = await this.append(m.down.data);
    this.where.set(path, { up, down });
  }

  async read(path: string, factor: 'up' | 'down'): Promise<Float32Array> {
    const e = this.where.get(path)?.[factor];
    if (!e)
      throw new IoError(
        'IO_READ_FAILED',
        `merge: no ${factor} factor of module '${path}' in the spill file ${this.path}`,
        {
          key: path,
        },
      );
    const out = new Float32Array(e.length);
    const bytes = new Uint8Array(out.buffer);
    let done = 0;
    while (done < bytes.length) {
      const { bytesRead } = await this.handle.read(bytes, done, bytes.length - done, e.offset + done);
      if (bytesRead === 0)
        throw new IoError('IO_READ_FAILED', `merge: the spill file ${this.path} ended early (module '${path}')`, {
          key: path,
        });
      done += bytesRead;
    }
    return out;
  }

  async dispose(): Promise<void> {
    await this.handle.close().catch(() => undefined);
    await fs.rm(this.path, { force: true });
    releaseTemp(this.path);
  }

  private async append(values: Float32Array): Promise<Extent> {
    // Reserve the range before the first await: modules finishing together append concurrently.
    const offset = this.position;
    this.position += values.byteLength;
    const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    let done = 0;
    while (done < bytes.length) {
      const { bytesWritten } = await this.handle.write(bytes, done, bytes.length - done, offset + done);
      done += bytesWritten;
    }
    return { offset, length: values.length };
  }
}

/** How one module is reduced: on this thread, or on the pool. */
type Reduce = (plan: MergePlan, pm: PlannedMergeModule) => Promise<ReduceOutcome>;

function inlineReducer(): { reduce: Reduce; release: () => void } {
  const reducer = new RankReducer();
  const scratch = new DenseScratch();
  return {
    reduce: async (plan, pm) =>
      pm.action === 'method'
        ? methodModule(methodRequest(plan, pm), plan.target!, scratch)
        : reduceModule(reducer, factorTerms(pm), pm.out, pm.fanIn, plan.target!, pm.path),
    release: () => reducer.release(),
  };
}

/**
 * Merge opened inputs module by module (see the file comment). Same arguments, report and errors as
 * mergeLorasParallel; `spillBeside` is the output path (the spill file is a hidden temp beside it).
 */
export async function mergeStreaming(
  inputs: StreamingInputs,
  weights: readonly MergeWeight[],
  options: ParallelMergeOptions,
  spillBeside: string,
): Promise<StreamedMerge> {
  const plan = planMerge(inputs.loras, weights, options);
  const work = plan.modules.filter((pm) => pm.action === 'reduce' || pm.action === 'method');
  const threads = Math.max(1, Math.min(Math.floor(options.threads ?? availableParallelism()), work.length));
  const pool = threads > 1 ? ReducePool.start(threads) : null;
  const inline = pool ? null : inlineReducer();
  // The factors of each module are read for its request alone: the worker gets them moved, not copied.
  const reduce: Reduce = pool ? (p, pm) => pool.run(pm.path, () => ownedReduceJob(p, pm)) : inline!.reduce;
  const spill = await Spill.create(spillBeside);

  const outcomes = new Map<string, ReduceOutcome>();
  const built = new Map<string, LoraModule>();
  let done = 0;
  const tick = (): void => {
    done++;
    options.onProgress?.(done, plan.modules.length);
  };
  /** Reduce (or concatenate) one module with its factors, spill what assembleMerge would write, keep shapes. */
  const finish = async (pm: PlannedMergeModule): Promise<void> => {
    const exact = async (): Promise<void> => {
      const m = exactModule(pm);
      await spill.put(pm.path, m);
      built.set(pm.path, shapeOnly(m.down.shape, m.up.shape, m.alpha));
    };
    if (pm.action === 'exact') {
      await exact();
    } else {
      const o = await reduce(plan, pm);
      if (o.k > 0 && !o.factors) await exact();
      else if (o.k > 0 && o.factors) {
        await spill.put(pm.path, {
          up: ndarray(o.factors.up, pm.upShape(o.k)),
          down: ndarray(o.factors.down, pm.downShape(o.k)),
          alpha: o.k,
        });
      }
      outcomes.set(pm.path, o.factors ? { ...o, factors: { up: NO_VALUES, down: NO_VALUES } } : o);
    }
    tick();
  };

  try {
    await forEachBounded(plan.modules, pool ? 2 * threads + 1 : 1, async (pm) => {
      if (pm.action === 'drop') {
        tick();
        return null;
      }
      const filled = await withFactors(inputs, pm);
      return () => finish(filled);
    });
  } catch (e) {
    await spill.dispose();
    throw e;
  } finally {
    inline?.release();
    await pool?.close();
  }

  const { lora, report } = assembleMerge(plan, outcomes, built);
  return {
    lora,
    report,
    save: (target, saveOptions) => saveLora(lora, target, { ...saveOptions, factorStore: spill }),
    dispose: () => spill.dispose(),
  };
}
