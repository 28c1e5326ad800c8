/**
 * The page's Web Worker: reads dropped files (only the byte ranges needed, through blobSource), decodes them,
 * merges and encodes the result, so the page stays responsive and can show progress. All local.
 */
import { LoraMixError } from '../../src/core/errors.js';
import { decodeLora, describeLora, serializeLora, type LoadedLora, type OutputDType } from '../../src/formats/index.js';
import { blobSource } from '../../src/core/memory.js';
import { mergeLoras, type MergeWeight } from '../../src/lora/index.js';
import { parseSafetensors } from '../../src/safetensors/index.js';
import { VERSION } from '../../src/core/version.js';
import { defaultWeightFor, lcmEvidence } from './lcm.js';
import type { ErrorInfo, FromWorker, MergeRequest, MergeSummary, ToWorker } from './protocol.js';

interface WorkerScope {
  postMessage(message: FromWorker, transfer?: Transferable[]): void;
  onmessage: ((event: MessageEvent<ToWorker>) => void) | null;
}
const scope = self as unknown as WorkerScope;

const loras = new Map<number, LoadedLora>();

export function errorInfo(e: unknown): ErrorInfo {
  if (e instanceof LoraMixError) return { code: e.code, name: e.name, message: e.message };
  if (e instanceof Error) return { code: 'INTERNAL', name: e.name, message: e.message };
  return { code: 'INTERNAL', name: 'Error', message: String(e) };
}

async function add(id: number, file: File): Promise<void> {
  const t0 = performance.now();
  try {
    const st = await parseSafetensors(blobSource(file, file.name));
    const lora = await decodeLora(st);
    loras.set(id, lora);
    const summary = describeLora(lora);
    const lcm = lcmEvidence(file.name, lora.metadata, summary);
    scope.postMessage({
      type: 'added',
      info: {
        id,
        fileName: file.name,
        bytes: file.size,
        summary,
        lcm,
        defaultWeight: defaultWeightFor(lcm),
        seconds: (performance.now() - t0) / 1000,
      },
    });
  } catch (e) {
    scope.postMessage({ type: 'add-failed', id, fileName: file.name, error: errorInfo(e) });
  }
}

function merge(job: number, request: MergeRequest): void {
  const t0 = performance.now();
  try {
    const inputs = request.inputs.map(({ id }) => {
      const l = loras.get(id);
      if (!l) throw new Error(`input ${id} is no longer loaded; add the file again`);
      return l;
    });
    const blocks = request.blocks?.trim();
    const weights: MergeWeight[] = request.inputs.map(({ weight }) => (blocks ? { weight, blocks } : weight));
    let lastPost = 0;
    const { lora, report } = mergeLoras(inputs, weights, {
      ...(request.rank !== undefined ? { rank: request.rank } : {}),
      onProgress(done, total) {
        const now = performance.now();
        if (done === total || now - lastPost > 50) {
          lastPost = now;
          scope.postMessage({ type: 'progress', job, done, total, phase: 'merge' });
        }
      },
    });
    scope.postMessage({ type: 'progress', job, done: 0, total: 1, phase: 'write' });
    const dtype: OutputDType = request.dtype === 'auto' ? inputDType(inputs) : request.dtype;
    const bytes = serializeLora(lora, { format: request.format, dtype });
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
      bytes: bytes.byteLength,
      seconds: (performance.now() - t0) / 1000,
    };
    scope.postMessage({ type: 'merged', job, bytes, summary }, [bytes.buffer as ArrayBuffer]);
  } catch (e) {
    scope.postMessage({ type: 'merge-failed', job, error: errorInfo(e) });
  }
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

scope.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === 'add') void add(msg.id, msg.file);
  else if (msg.type === 'remove') loras.delete(msg.id);
  else if (msg.type === 'merge') merge(msg.job, msg.request);
};
scope.postMessage({ type: 'ready', version: VERSION });
