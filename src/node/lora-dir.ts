/**
 * Finding the files a runtime stack names in a LoRA folder (Node only), the way the UIs do:
 * - A1111 (extensions-builtin/Lora/networks.py): the folder is walked recursively; a LoRA's name is its file name
 *   without extension, whatever subfolder it is in; the `ss_output_name` metadata of a file is an alias.
 * - ComfyUI: `lora_name` is a path relative to the loras folder (Windows separators already turned into '/').
 * Only .safetensors files can be read by lora-mix; a name that resolves to a .ckpt / .pt file is reported as such.
 */
import { readdir } from 'node:fs/promises';
import * as path from 'node:path';
import { IoError } from '../core/errors.js';
import { openSafetensors } from './files.js';

const EXTENSIONS = ['.safetensors', '.ckpt', '.pt'];

async function walk(dir: string, out: string[]): Promise<void> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (e) {
    throw new IoError('INPUT_NOT_FOUND', `--lora-dir ${dir}: cannot read the folder (${(e as Error).message})`, {
      file: dir,
    });
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await walk(p, out);
    else if (EXTENSIONS.includes(path.extname(e.name).toLowerCase())) out.push(p);
  }
}

/** A resolver of stack names to files in `dir`. */
export async function loraDirectory(dir: string): Promise<{
  /** An A1111 name (file name without extension, or ss_output_name). */
  byName(name: string, origin: string): Promise<string>;
  /** A ComfyUI lora_name (relative path; falls back to the file name). */
  byRelativePath(rel: string, origin: string): Promise<string>;
}> {
  const files: string[] = [];
  await walk(dir, files);
  let aliases: Map<string, string> | null = null;
  const readable = (file: string, origin: string): string => {
    if (path.extname(file).toLowerCase() !== '.safetensors') {
      throw new IoError(
        'INPUT_NOT_FOUND',
        `${origin}: ${file} is a pickle checkpoint; lora-mix reads only .safetensors LoRAs`,
        { file },
      );
    }
    return file;
  };
  const notFound = (name: string, origin: string): IoError =>
    new IoError(
      'INPUT_NOT_FOUND',
      `${origin}: no LoRA named '${name}' in --lora-dir ${dir} (${files.length} LoRA file(s) there${
        files.length
          ? `, e.g. ${files
              .slice(0, 3)
              .map((f) => path.basename(f))
              .join(', ')}`
          : ''
      }); nothing was written`,
      { file: dir, key: name },
    );
  const byName = async (name: string, origin: string): Promise<string> => {
    const hits = files.filter((f) => path.basename(f, path.extname(f)) === name);
    const st = hits.find((f) => path.extname(f).toLowerCase() === '.safetensors') ?? hits[0];
    if (st) return readable(st, origin);
    if (!aliases) {
      aliases = new Map();
      for (const f of files) {
        if (path.extname(f).toLowerCase() !== '.safetensors') continue;
        try {
          const sf = await openSafetensors(f);
          const alias = sf.metadata.ss_output_name;
          await sf.close();
          if (alias && !aliases.has(alias)) aliases.set(alias, f);
        } catch {
          // Not a readable safetensors file: it cannot be an alias target.
        }
      }
    }
    const alias = aliases.get(name);
    if (alias) return alias;
    throw notFound(name, origin);
  };
  return {
    byName,
    async byRelativePath(rel, origin) {
      const norm = rel.replace(/\\/g, '/');
      const direct = files.find((f) => path.relative(dir, f).split(path.sep).join('/') === norm);
      if (direct) return readable(direct, origin);
      const base = path.basename(norm, path.extname(norm));
      return byName(base, origin);
    },
  };
}
