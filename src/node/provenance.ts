/**
 * Hashes for provenance (src/core/provenance.ts), streamed from disk with node:crypto: a whole LoRA file, or only
 * the header of a base checkpoint (its first 8 + N bytes).
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { ProvenanceInput } from '../core/provenance.js';
import { checkInputFile } from './file-checks.js';

/** Hex SHA-256 of bytes [0, end) of a file (the whole file without `end`), read in 4 MiB chunks. */
export async function sha256File(file: string, end?: number): Promise<string> {
  const hash = createHash('sha256');
  if (end === 0) return hash.digest('hex');
  const stream = createReadStream(file, {
    highWaterMark: 4 << 20,
    ...(end !== undefined ? { start: 0, end: end - 1 } : {}),
  });
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Provenance of a LoRA file: size and SHA-256 of the whole file. */
export async function loraProvenance(file: string, name: string, weight?: string): Promise<ProvenanceInput> {
  await checkInputFile(file); // typed errors, and a FIFO is never read
  const st = await fs.stat(file);
  return {
    role: 'lora',
    name,
    size: st.size,
    sha256: await sha256File(file),
    ...(weight !== undefined ? { weight } : {}),
  };
}

/** Size of the 8-byte length plus the JSON header of a safetensors file. */
async function headerBytes(file: string): Promise<number> {
  const fh = await fs.open(file, 'r');
  try {
    const b = Buffer.alloc(8);
    const { bytesRead } = await fh.read(b, 0, 8, 0);
    if (bytesRead < 8) return bytesRead;
    return 8 + Number(b.readBigUInt64LE(0));
  } finally {
    await fh.close();
  }
}

/**
 * Provenance of a base checkpoint: a file's size and the SHA-256 of its header; a diffusers folder's total size
 * of its safetensors files and a SHA-256 over their headers in path order.
 */
export async function baseProvenance(base: string, name: string): Promise<ProvenanceInput> {
  const st = await fs.stat(base).catch(() => null);
  if (!st?.isDirectory()) {
    await checkInputFile(base);
    const n = Math.min(await headerBytes(base), (await fs.stat(base)).size);
    return { role: 'base', name, size: (await fs.stat(base)).size, headerSha256: await sha256File(base, n) };
  }
  const files: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of (await fs.readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile() && e.name.endsWith('.safetensors')) files.push(p);
    }
  };
  await walk(base);
  const hash = createHash('sha256');
  let size = 0;
  for (const f of files) {
    size += (await fs.stat(f)).size;
    hash.update(`${path.relative(base, f)}\n`);
    hash.update(await sha256File(f, await headerBytes(f)));
  }
  return { role: 'base', name, size, headerSha256: hash.digest('hex') };
}
