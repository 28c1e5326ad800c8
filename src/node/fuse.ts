/**
 * Node side of fusion: base checkpoints given as paths (single files and diffusers folders), folder output written
 * beside the target and moved into place at the end, and the multi-threaded CPU kernel.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { ArchError, FormatError, IoError, LoraMixError } from '../core/errors.js';
import { openSafetensors } from './files.js';
import {
  detectCheckpoint,
  detectDiffusersFolder,
  type CheckpointDetection,
  type TensorInfo as ShapeInfo,
} from '../layout/detect.js';
import type { Arch, Component } from '../layout/types.js';
import type { SafetensorsFile } from '../safetensors/read.js';
import type { BaseWeightFile, OpenBaseOptions, OpenedBase } from '../fuse/base.js';
import { createCpuKernel } from './kernel-threads.js';
import { registerTemp, releaseTemp, removeStaleTemps, tempPathFor } from './temp-files.js';
import type { FuseKernel } from '../kernels/types.js';

export const joinPath = (dir: string, rel: string): string => path.join(dir, ...rel.split('/'));

export async function createNodeCpuKernel(threads?: number): Promise<FuseKernel> {
  return createCpuKernel(threads !== undefined ? { threads } : {});
}

const FUSED_COMPONENTS: readonly Component[] = ['unet', 'text_encoder', 'text_encoder_2'];
/** Weight files of other formats that a fused component must not carry over unfused. */
const OTHER_WEIGHTS = /\.(bin|pt|pth|ckpt|msgpack|h5|onnx|onnx_data|pb)$/i;

/** 'diffusion_pytorch_model.fp16-00001-of-00002.safetensors' → variant 'fp16'. */
function variantOf(file: string): string {
  const stem = file.replace(/\.safetensors$/, '').replace(/-\d{5}-of-\d{5}$/, '');
  const m = /^[^.]+\.(.+)$/.exec(stem);
  return m ? m[1]! : '';
}

async function statOrNull(p: string): Promise<import('node:fs').Stats | null> {
  try {
    return await fs.stat(p);
  } catch {
    return null;
  }
}

/** Open a base checkpoint path: a single safetensors file or a diffusers folder. */
export async function openBaseNode(p: string, options: OpenBaseOptions = {}): Promise<OpenedBase> {
  const st = await statOrNull(p);
  if (!st) throw new IoError('INPUT_NOT_FOUND', `${p}: no such file or folder`, { file: p });
  if (!st.isDirectory()) {
    const file = await openSafetensors(p);
    try {
      const detection = detectCheckpoint(file.tensors, { source: p });
      return { name: p, detection, files: [{ file, rel: '', component: null }], close: () => file.close() };
    } catch (e) {
      await file.close();
      throw e;
    }
  }
  return openFolder(p, options);
}

/** Weight files at the root of a folder: single-file checkpoints beside the components. */
const ROOT_WEIGHTS = /\.(safetensors|ckpt|pt|pth|bin)$/i;

/** What model_index.json says: the pipeline class and the components it lists (undefined without the file). */
interface ModelIndex {
  readonly className?: string;
  readonly components: ReadonlySet<string>;
}

async function readModelIndex(dir: string): Promise<ModelIndex | undefined> {
  const file = path.join(dir, 'model_index.json');
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new FormatError('FORMAT_METADATA_INVALID', `${file}: not valid JSON`, { file });
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new FormatError('FORMAT_METADATA_INVALID', `${file}: expected a JSON object`, { file });
  }
  const obj = raw as Record<string, unknown>;
  // A component entry is [library, class]; [null, null] marks a component the pipeline does not have.
  const components = new Set(
    Object.entries(obj)
      .filter(([k, v]) => !k.startsWith('_') && Array.isArray(v) && typeof v[0] === 'string')
      .map(([k]) => k),
  );
  return { ...(typeof obj._class_name === 'string' ? { className: obj._class_name } : {}), components };
}

/** The families a pipeline class is for (the classes lora-mix knows; others say nothing). */
function pipelineArchs(className: string | undefined): readonly Arch[] | undefined {
  if (className === undefined) return undefined;
  if (/^StableDiffusionXL/.test(className)) return ['sdxl', 'ssd1b'];
  if (/^StableDiffusion(Img2Img|Inpaint)?Pipeline$/.test(className)) return ['sd15'];
  return undefined;
}

interface FolderScan {
  readonly files: BaseWeightFile[];
  readonly skip: string[];
  readonly notes: string[];
  readonly shapes: Record<string, ShapeInfo[]>;
  readonly unreadable: { component: Component; files: string[] }[];
}

/** The weight files of one component folder: safetensors opened (every variant), other formats noted. */
async function scanComponent(
  dir: string,
  component: Component,
  scan: FolderScan,
  opened: SafetensorsFile[],
): Promise<void> {
  const cdir = path.join(dir, component);
  const names = (await fs.readdir(cdir)).sort();
  const weights = names.filter((n) => n.endsWith('.safetensors'));
  const others = names.filter((n) => OTHER_WEIGHTS.test(n));
  if (weights.length === 0) {
    // Copied byte for byte; a LoRA that changes it is refused when the fusion is planned.
    if (others.length > 0) {
      scan.unreadable.push({ component, files: others });
      scan.notes.push(
        `${component}/ holds no safetensors (${others.join(', ')}): copied unchanged; a LoRA that changes ${component} is refused`,
      );
    }
    return;
  }
  // Detect from the plain variant when there is one, else the first; every variant is fused.
  const variants = [...new Set(weights.map(variantOf))].sort((a, b) =>
    a === '' ? -1 : b === '' ? 1 : a.localeCompare(b),
  );
  const main = variants[0];
  const list: ShapeInfo[] = [];
  for (const name of weights) {
    const file = await openSafetensors(path.join(cdir, name));
    opened.push(file);
    scan.files.push({ file, rel: `${component}/${name}`, component });
    if (variantOf(name) === main) list.push(...file.tensors);
  }
  scan.shapes[component] = list;
  for (const o of others) {
    scan.skip.push(`${component}/${o}`);
    scan.notes.push(`${component}/${o} is not carried over: it would hold the unfused weights`);
  }
}

/** Root single-file checkpoints: left out of the output (default) or fused, which needs safetensors of the folder's arch. */
async function scanRoot(
  dir: string,
  detection: CheckpointDetection,
  mode: 'omit' | 'fuse',
  scan: FolderScan,
  opened: SafetensorsFile[],
): Promise<void> {
  const entries = await fs.readdir(dir, { withFileTypes: true });
  const roots = entries
    .filter((e) => e.isFile() && ROOT_WEIGHTS.test(e.name))
    .map((e) => e.name)
    .sort();
  for (const name of roots) {
    if (mode === 'omit') {
      scan.skip.push(name);
      scan.notes.push(
        `${name} (a single-file checkpoint at the folder's root) is left out of the output: it would hold the unfused weights; fuse it too with rootCheckpoint 'fuse' / --root-checkpoint fuse`,
      );
      continue;
    }
    if (!name.endsWith('.safetensors')) {
      throw new FormatError(
        'FORMAT_UNKNOWN',
        `${dir}: the root checkpoint ${name} is not safetensors and cannot be fused; convert it first, or leave it out (rootCheckpoint 'omit')`,
        { file: path.join(dir, name) },
      );
    }
    const file = await openSafetensors(path.join(dir, name));
    opened.push(file);
    const own = detectCheckpoint(file.tensors, { source: path.join(dir, name) });
    if (own.arch !== detection.arch || own.size !== detection.size) {
      throw new ArchError(
        'ARCH_MISMATCH',
        `${dir}: the root checkpoint ${name} is ${own.arch} (${own.size}) but the folder's components are ${detection.arch} (${detection.size})`,
        { file: path.join(dir, name), expected: detection.arch, found: own.arch },
      );
    }
    scan.files.push({ file, rel: name, component: null, detection: own });
    scan.notes.push(`${name} (a single-file checkpoint at the folder's root) is fused too`);
  }
}

async function openFolder(dir: string, options: OpenBaseOptions): Promise<OpenedBase> {
  const opened: SafetensorsFile[] = [];
  const closeAll = async (): Promise<void> => {
    await Promise.allSettled(opened.map((f) => f.close()));
  };
  try {
    const scan: FolderScan = { files: [], skip: [], notes: [], shapes: {}, unreadable: [] };
    const index = await readModelIndex(dir);
    for (const component of [...FUSED_COMPONENTS, 'vae'] as const) {
      // model_index.json decides which components the pipeline has; without it, the folders present do.
      if (index && !index.components.has(component)) continue;
      const st = await statOrNull(path.join(dir, component));
      if (!st?.isDirectory()) continue;
      if (component === 'vae') {
        const names = await fs.readdir(path.join(dir, component));
        if (names.some((n) => n.endsWith('.safetensors') || OTHER_WEIGHTS.test(n)))
          scan.shapes.vae = [{ name: 'vae', shape: [] }];
        continue;
      }
      await scanComponent(dir, component, scan, opened);
    }
    const detection = detectDiffusersFolder(scan.shapes, { source: dir });
    const archs = pipelineArchs(index?.className);
    if (archs && !archs.includes(detection.arch)) {
      throw new ArchError(
        'ARCH_MISMATCH',
        `${dir}: model_index.json names a ${index?.className} but the unet/ weights are ${detection.arch} (${detection.size})`,
        { file: path.join(dir, 'model_index.json'), expected: archs, found: detection.arch },
      );
    }
    await scanRoot(dir, detection, options.rootCheckpoint ?? 'omit', scan, opened);
    return {
      name: dir,
      detection,
      files: scan.files,
      folder: { dir, skip: scan.skip, notes: scan.notes, unreadable: scan.unreadable },
      close: closeAll,
    };
  } catch (e) {
    await closeAll();
    throw e;
  }
}

/**
 * Write a folder output: copy the base folder except the weight files `write` produces (and the skipped ones) into a
 * temporary folder beside `out`, let `write` fill in the fused files, then rename it to `out`. `out` must not exist
 * (or be an empty folder); on any failure the temporary folder is removed and nothing appears at `out`.
 */
export async function writeFolder(base: OpenedBase, out: string, write: (dir: string) => Promise<void>): Promise<void> {
  const folder = base.folder!;
  const target = path.resolve(out);
  const src = path.resolve(folder.dir);
  if (target === src || target.startsWith(src + path.sep)) {
    throw new IoError(
      'OUTPUT_WOULD_OVERWRITE_INPUT',
      `${out}: the output folder would be the base folder or inside it`,
      { file: out },
    );
  }
  const existing = await statOrNull(target);
  if (existing) {
    const empty = existing.isDirectory() && (await fs.readdir(target)).length === 0;
    if (!empty)
      throw new IoError('OUTPUT_EXISTS', `${out}: already exists; choose a new folder for the fused checkpoint`, {
        file: out,
      });
  }
  // Temporary folders a killed fuse left beside the target (our naming, dead owner, older than this run) go first.
  await removeStaleTemps(target, { folders: true });
  const tmp = tempPathFor(target);
  registerTemp(tmp);
  const rewritten = new Set(
    [...base.files.map((f) => f.rel), ...folder.skip].map((r) => path.join(src, ...r.split('/'))),
  );
  try {
    await fs.cp(src, tmp, {
      recursive: true,
      errorOnExist: true,
      force: false,
      filter: (p) => !rewritten.has(path.resolve(p)),
    });
    await write(tmp);
    if (existing) await fs.rmdir(target);
    await fs.rename(tmp, target);
    releaseTemp(tmp);
  } catch (e) {
    await fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    releaseTemp(tmp);
    if (!(e instanceof LoraMixError)) {
      throw new IoError(
        'IO_WRITE_FAILED',
        `${out}: writing the fused folder failed (${e instanceof Error ? e.message : String(e)})`,
        { file: out },
        { cause: e },
      );
    }
    throw e;
  }
}
