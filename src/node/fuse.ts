/**
 * Node side of fusion: base checkpoints given as paths (single files and diffusers folders), folder output written
 * beside the target and moved into place at the end, and the multi-threaded CPU kernel.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FormatError, IoError, LoraMixError } from '../core/errors.js';
import { openSafetensors } from './files.js';
import { detectCheckpoint, detectDiffusersFolder, type TensorInfo as ShapeInfo } from '../layout/detect.js';
import type { Component } from '../layout/types.js';
import type { SafetensorsFile } from '../safetensors/read.js';
import type { BaseWeightFile, OpenedBase } from '../fuse/base.js';
import { createCpuKernel } from './kernel-threads.js';
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
export async function openBaseNode(p: string): Promise<OpenedBase> {
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
  return openFolder(p);
}

async function openFolder(dir: string): Promise<OpenedBase> {
  const opened: SafetensorsFile[] = [];
  const closeAll = async (): Promise<void> => {
    await Promise.allSettled(opened.map((f) => f.close()));
  };
  try {
    const files: BaseWeightFile[] = [];
    const skip: string[] = [];
    const notes: string[] = [];
    const shapes: Record<string, ShapeInfo[]> = {};
    for (const component of [...FUSED_COMPONENTS, 'vae'] as const) {
      const cdir = path.join(dir, component);
      const st = await statOrNull(cdir);
      if (!st?.isDirectory()) continue;
      const names = (await fs.readdir(cdir)).sort();
      const weights = names.filter((n) => n.endsWith('.safetensors'));
      const others = names.filter((n) => OTHER_WEIGHTS.test(n));
      if (component === 'vae') {
        if (weights.length > 0 || others.length > 0) shapes.vae = [{ name: 'vae', shape: [] }];
        continue;
      }
      if (weights.length === 0) {
        if (others.length > 0) {
          throw new FormatError(
            'FORMAT_UNKNOWN',
            `${dir}: ${component}/ holds only ${others.join(', ')}; lora-mix reads safetensors weights (convert the folder first)`,
            { file: cdir, found: others },
          );
        }
        continue;
      }
      // Detect from the plain variant when there is one, else the first; every variant is fused.
      const variants = [...new Set(weights.map(variantOf))].sort((a, b) =>
        a === '' ? -1 : b === '' ? 1 : a.localeCompare(b),
      );
      const main = variants[0]!;
      const list: ShapeInfo[] = [];
      for (const name of weights) {
        const file = await openSafetensors(path.join(cdir, name));
        opened.push(file);
        files.push({ file, rel: `${component}/${name}`, component });
        if (variantOf(name) === main) list.push(...file.tensors);
      }
      shapes[component] = list;
      for (const o of others) {
        skip.push(`${component}/${o}`);
        notes.push(`${component}/${o} is not carried over: it would hold the unfused weights`);
      }
    }
    const detection = detectDiffusersFolder(shapes, { source: dir });
    return { name: dir, detection, files, folder: { dir, skip, notes }, close: closeAll };
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
  const tmp = path.join(path.dirname(target), `.${path.basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
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
  } catch (e) {
    await fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
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
