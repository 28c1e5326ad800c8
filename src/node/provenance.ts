/**
 * Hashes for provenance (src/core/provenance.ts), streamed from disk with node:crypto: a whole LoRA file, or only
 * the header of a base checkpoint (its first 8 + N bytes).
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { currentHost, installHost } from '../core/host.js';
import type { ProvenanceInput } from '../core/provenance.js';
import { hashingSource, type HashingSource } from '../core/sha256-source.js';
import type { Sha256 } from '../core/sha256.js';
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

/**
 * Provenance of a LoRA file: size and SHA-256 of the whole file (`sha256` gives it, e.g. a ReadTap's, instead of a
 * read of the file).
 */
export async function loraProvenance(
  file: string,
  name: string,
  weight?: string,
  sha256: (file: string) => Promise<string> = sha256File,
): Promise<ProvenanceInput> {
  await checkInputFile(file); // typed errors, and a FIFO is never read
  const st = await fs.stat(file);
  return {
    role: 'lora',
    name,
    size: st.size,
    sha256: await sha256(file),
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

/** node:crypto's SHA-256 behind the core's incremental interface (native: several times the plain JS speed). */
export function nodeSha256(): Sha256 {
  const h = createHash('sha256');
  let n = 0;
  let done: Buffer | null = null;
  const self: Sha256 = {
    update(bytes) {
      h.update(bytes);
      n += bytes.byteLength;
      return self;
    },
    digest() {
      done ??= h.digest();
      return new Uint8Array(done);
    },
    hex() {
      return Buffer.from(self.digest()).toString('hex');
    },
    get byteLength() {
      return n;
    },
  };
  return self;
}

/** Bytes held for reads that arrive ahead of the hashed prefix (the rest is read at once past it). */
const TAP_KEEP_BYTES = 32 << 20;

/**
 * SHA-256 of input files from the reads the command makes anyway (src/core/sha256-source.ts), instead of a separate
 * pass over each file. While a tap is open, every file source the library opens for one of `paths` (through the
 * host: loadLora, fuse, the streaming merge) is a view of one shared hashing source per file: its reads feed the
 * file's hash, and closing is deferred so that `sha256` can read what the command skipped (tensors it did not need)
 * and finish the hash.
 * Files the command never opens are hashed by a plain read. `close` restores the host and closes the files.
 */
export interface ReadTap {
  /** Hash these files too (from their next open on). */
  want(paths: readonly string[]): void;
  /** The file's hex SHA-256 (reads what nobody read; a file never opened is read whole). */
  sha256(file: string): Promise<string>;
  /** Bytes read only for the hashes so far (the part of the files the command did not read itself). */
  readonly extraBytes: number;
  close(): Promise<void>;
}

export function tapReads(paths: readonly string[] = []): ReadTap {
  const host = currentHost();
  const wanted = new Set(paths.map((p) => path.resolve(p)));
  const taps = new Map<string, { source: HashingSource; close: () => Promise<void> }>();
  let extra = 0;
  if (host) {
    installHost({
      ...host,
      async openSource(p) {
        const key = path.resolve(p);
        if (!wanted.has(key)) return host.openSource(p);
        let tap = taps.get(key);
        if (!tap) {
          const inner = await host.openSource(p);
          tap = { source: hashingSource(inner, TAP_KEEP_BYTES, nodeSha256), close: async () => inner.close?.() };
          taps.set(key, tap);
        }
        // Every open of the file shares one handle and one hash (reads in any order, each byte hashed once). No
        // close: the command's close is deferred to the tap's, since the hash may still need to read the file.
        const source = tap.source;
        return {
          name: source.name,
          byteLength: source.byteLength,
          ...(source.identity !== undefined ? { identity: source.identity } : {}),
          read: source.read,
          ...(source.readInto ? { readInto: source.readInto } : {}),
        };
      },
    });
  }
  return {
    want(more) {
      for (const p of more) wanted.add(path.resolve(p));
    },
    async sha256(file) {
      const t = taps.get(path.resolve(file));
      if (!t) return sha256File(file);
      const before = t.source.extraBytes;
      const hex = await t.source.finish();
      extra += t.source.extraBytes - before;
      return hex;
    },
    get extraBytes() {
      return extra;
    },
    async close() {
      if (host) installHost(host);
      await Promise.allSettled([...taps.values()].map((t) => t.close()));
      taps.clear();
    },
  };
}
