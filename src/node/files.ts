/**
 * Node adapters: files as ByteSources (positional reads on one FileHandle, never the whole file in one buffer)
 * and as ByteSinks (temp file beside the target, fsync, rename, fsync of the directory; abort removes the temp).
 */
import { randomBytes } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { IoError } from '../core/errors.js';
import { parseSafetensors, type SafetensorsFile } from '../safetensors/read.js';
import type { ByteSink, ByteSource } from '../core/bytes.js';
import type { RefuseList } from '../core/host.js';

export type { RefuseList };

/** Largest single positional read (Node refuses reads over 2 GiB − 1). */
const MAX_READ = 1 << 30;

function errnoCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && typeof (e as { code?: unknown }).code === 'string'
    ? (e as { code: string }).code
    : undefined;
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A ByteSource over a file FileHandle, with `identity` = "dev:ino". */
export interface FileSource extends ByteSource {
  readonly path: string;
  readonly identity: string;
  readInto(start: number, target: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

/** Open a file for positional reads. INPUT_NOT_FOUND when it does not exist. */
export async function fileSource(filePath: string): Promise<FileSource> {
  let fh: FileHandle;
  try {
    fh = await fs.open(filePath, 'r');
  } catch (e) {
    const code = errnoCode(e);
    if (code === 'ENOENT')
      throw new IoError('INPUT_NOT_FOUND', `${filePath}: no such file`, { file: filePath }, { cause: e });
    throw new IoError(
      'IO_READ_FAILED',
      `${filePath}: cannot open for reading (${describe(e)})`,
      { file: filePath },
      { cause: e },
    );
  }
  let st;
  try {
    st = await fh.stat();
  } catch (e) {
    await fh.close().catch(() => undefined);
    throw new IoError('IO_READ_FAILED', `${filePath}: cannot stat (${describe(e)})`, { file: filePath }, { cause: e });
  }
  if (!st.isFile()) {
    await fh.close().catch(() => undefined);
    throw new IoError('IO_READ_FAILED', `${filePath}: not a regular file`, { file: filePath });
  }
  const size = st.size;
  let closed = false;
  const checkRange = (start: number, end: number): void => {
    if (closed) throw new IoError('IO_READ_FAILED', `${filePath}: read after close`, { file: filePath });
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start || end > size) {
      throw new IoError('IO_READ_FAILED', `${filePath}: byte range ${start}…${end} is outside the file (0…${size})`, {
        file: filePath,
        expected: size,
        found: end,
      });
    }
  };
  const fill = async (start: number, out: Uint8Array): Promise<void> => {
    const end = start + out.byteLength;
    let done = 0;
    while (done < out.byteLength) {
      const want = Math.min(out.byteLength - done, MAX_READ);
      let got: number;
      try {
        ({ bytesRead: got } = await fh.read(out, done, want, start + done));
      } catch (e) {
        throw new IoError(
          'IO_READ_FAILED',
          `${filePath}: read of bytes ${start + done}…${start + done + want} failed (${describe(e)})`,
          { file: filePath },
          { cause: e },
        );
      }
      if (got === 0) {
        throw new IoError(
          'IO_READ_FAILED',
          `${filePath}: the file ended at byte ${start + done} while reading up to ${end} (it shrank after opening?)`,
          { file: filePath, expected: end, found: start + done },
        );
      }
      done += got;
    }
  };
  return {
    name: filePath,
    path: filePath,
    byteLength: size,
    identity: `${st.dev}:${st.ino}`,
    async read(start: number, end: number): Promise<Uint8Array> {
      checkRange(start, end);
      const out = new Uint8Array(end - start);
      await fill(start, out);
      return out;
    },
    async readInto(start: number, target: Uint8Array): Promise<void> {
      checkRange(start, start + target.byteLength);
      await fill(start, target);
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      await fh.close();
    },
  };
}

/** Open and validate a safetensors file (header only; tensors are read on demand). Close it when done. */
export async function openSafetensors(filePath: string): Promise<SafetensorsFile> {
  const source = await fileSource(filePath);
  try {
    return await parseSafetensors(source);
  } catch (e) {
    await source.close().catch(() => undefined);
    throw e;
  }
}

async function identityOf(p: string): Promise<string | undefined> {
  try {
    const st = await fs.stat(p);
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

async function realOrResolved(p: string): Promise<string> {
  const abs = path.resolve(p);
  try {
    return await fs.realpath(abs);
  } catch {
    return abs;
  }
}

/**
 * Throw OUTPUT_WOULD_OVERWRITE_INPUT when `target` is the same file as any input (same dev:ino, or the same
 * resolved path). Nothing is written.
 */
export async function assertNotOverwriting(target: string, refuse: RefuseList): Promise<void> {
  if (refuse.length === 0) return;
  const targetId = await identityOf(target);
  const targetReal = await realOrResolved(target);
  for (const input of refuse) {
    const label = typeof input === 'string' ? input : input.name;
    let same = false;
    if (typeof input === 'string') {
      const id = await identityOf(input);
      same = (id !== undefined && id === targetId) || (await realOrResolved(input)) === targetReal;
    } else {
      const inputPath = (input as unknown as { path?: unknown }).path;
      same =
        (input.identity !== undefined && input.identity === targetId) ||
        (typeof inputPath === 'string' && (await realOrResolved(inputPath)) === targetReal);
    }
    if (same) {
      throw new IoError(
        'OUTPUT_WOULD_OVERWRITE_INPUT',
        `${target}: the output is the same file as the input '${label}'; choose another output path`,
        { file: target, input: label },
      );
    }
  }
}

export interface FileSinkOptions {
  /** Inputs the target must not be (checked before the temp file is created). */
  refuse?: RefuseList;
  /**
   * Write with O_DIRECT through two page-aligned 16 MiB staging buffers, bypassing the page cache (Linux). For
   * multi-GB outputs this saves the kernel's page-cache work, which on some machines costs more than the copy
   * itself. Where O_DIRECT is unavailable or refused (other systems, tmpfs, some filesystems) the sink quietly
   * writes through the page cache as usual. The bytes written are the same either way.
   */
  direct?: boolean;
}

/** O_DIRECT staging: chunk size (a multiple of every common logical block size) and the block size to pad to. */
const DIRECT_CHUNK = 16 << 20;
const DIRECT_BLOCK = 4096;

/** Page-aligned memory: WebAssembly memories are allocated by mmap, so their buffers start on a page boundary. */
function alignedBuffer(bytes: number): Uint8Array {
  return new Uint8Array(new WebAssembly.Memory({ initial: Math.ceil(bytes / 65536) }).buffer, 0, bytes);
}

const isEinval = (e: unknown): boolean =>
  typeof e === 'object' && e !== null && (e as { code?: unknown }).code === 'EINVAL';

export interface FileSink extends ByteSink {
  /** The final path. */
  readonly path: string;
  /** The temporary file being written (removed on abort, renamed on commit). */
  readonly tempPath: string;
  /** True while writes bypass the page cache (O_DIRECT was asked for and the filesystem accepts it). */
  readonly directIO: boolean;
}

/**
 * A sink that writes `.<name>.<random>.tmp` beside `target`; commit fsyncs it, renames it over the target and
 * fsyncs the directory; abort closes and removes it. The overwrite check runs before anything is created.
 */
export async function fileSink(target: string, options: FileSinkOptions = {}): Promise<FileSink> {
  await assertNotOverwriting(target, options.refuse ?? []);
  const dir = path.dirname(path.resolve(target));
  const tempPath = path.join(dir, `.${path.basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
  let mode: number | undefined;
  try {
    const st = await fs.stat(target);
    if (st.isDirectory()) throw new IoError('IO_WRITE_FAILED', `${target}: is a directory`, { file: target });
    mode = st.mode & 0o777;
  } catch (e) {
    if (e instanceof IoError) throw e;
  }
  const O_DIRECT = (constants as { O_DIRECT?: number }).O_DIRECT;
  let direct = options.direct === true && typeof O_DIRECT === 'number' && O_DIRECT !== 0;
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL;
  let fh: FileHandle | null = null;
  try {
    if (direct) {
      try {
        fh = await fs.open(tempPath, flags | O_DIRECT!, mode ?? 0o666);
      } catch (e) {
        if (!isEinval(e)) throw e;
        direct = false; // the filesystem refuses O_DIRECT (tmpfs, …)
      }
    }
    fh ??= await fs.open(tempPath, flags, mode ?? 0o666);
  } catch (e) {
    throw new IoError(
      'IO_WRITE_FAILED',
      `${target}: cannot create a temporary file in ${dir} (${describe(e)})`,
      { file: target },
      { cause: e },
    );
  }
  let state: 'open' | 'committed' | 'aborted' = 'open';
  let written = 0;
  let failed = false;

  const writeFailed = (at: number, e: unknown): IoError => {
    failed = true;
    return new IoError(
      'IO_WRITE_FAILED',
      `${target}: writing ${tempPath} failed at byte ${at} (${describe(e)})`,
      { file: target },
      { cause: e },
    );
  };

  /** Write buf[0, n) at `at`, looping over short writes. */
  const writeAt = async (buf: Uint8Array, n: number, at: number): Promise<void> => {
    let done = 0;
    while (done < n) {
      const want = Math.min(n - done, MAX_READ);
      const { bytesWritten } = await fh!.write(buf, done, want, at + done);
      done += bytesWritten;
    }
  };

  // ---- O_DIRECT: bytes are staged in aligned chunks; one chunk is written while the next fills.
  const stage = direct ? [alignedBuffer(DIRECT_CHUNK), alignedBuffer(DIRECT_CHUNK)] : [];
  let cur = 0;
  let fill = 0;
  let flushed = 0; // bytes handed to the file so far (a multiple of DIRECT_CHUNK until commit)
  let pending: Promise<void> | null = null;

  /** Leave O_DIRECT for plain writes: the first direct write was refused (alignment rules of this filesystem). */
  const leaveDirect = async (): Promise<void> => {
    await fh!.close();
    fh = await fs.open(tempPath, constants.O_WRONLY);
    direct = false;
  };

  const flushStage = async (bytes: number, padTo: number): Promise<void> => {
    const buf = stage[cur]!;
    const at = flushed;
    if (padTo > bytes) buf.fill(0, bytes, padTo);
    if (pending) await pending;
    if (at === 0) {
      // First write: done synchronously so a refusal can still fall back to plain writes.
      try {
        await writeAt(buf, padTo, at);
      } catch (e) {
        if (!isEinval(e)) throw writeFailed(at, e);
        await leaveDirect();
        try {
          await writeAt(buf, bytes, at);
        } catch (e2) {
          throw writeFailed(at, e2);
        }
      }
    } else {
      const p = writeAt(buf, padTo, at).catch((e: unknown) => {
        throw writeFailed(at, e);
      });
      p.catch(() => undefined); // reported by the next write or by commit
      pending = p;
    }
    flushed += bytes;
    cur ^= 1;
    fill = 0;
  };

  const writeStaged = async (chunk: Uint8Array): Promise<void> => {
    let off = 0;
    while (off < chunk.byteLength) {
      if (!direct) {
        // Fell back after the first chunk: plain writes from here on.
        await writeAt(chunk.subarray(off), chunk.byteLength - off, flushed + fill).catch((e: unknown) => {
          throw writeFailed(flushed + fill, e);
        });
        flushed += chunk.byteLength - off;
        return;
      }
      const k = Math.min(DIRECT_CHUNK - fill, chunk.byteLength - off);
      stage[cur]!.set(chunk.subarray(off, off + k), fill);
      fill += k;
      off += k;
      if (fill === DIRECT_CHUNK) await flushStage(DIRECT_CHUNK, DIRECT_CHUNK);
    }
  };

  const finishDirect = async (): Promise<void> => {
    if (pending) await pending;
    pending = null;
    if (!direct || fill === 0) return;
    const bytes = fill;
    await flushStage(bytes, Math.ceil(bytes / DIRECT_BLOCK) * DIRECT_BLOCK);
    if (pending) await pending;
    pending = null;
    // The last block was padded to the block size: cut the file back to the bytes written.
    await fh!.truncate(written);
  };

  const removeTemp = async (): Promise<void> => {
    if (pending) await pending.catch(() => undefined);
    pending = null;
    const h = fh;
    fh = null;
    if (h) await h.close().catch(() => undefined);
    await fs.rm(tempPath, { force: true }).catch(() => undefined);
  };

  return {
    name: target,
    path: target,
    tempPath,
    get directIO() {
      return direct;
    },
    async write(chunk: Uint8Array): Promise<void> {
      if (state !== 'open' || !fh)
        throw new IoError('IO_WRITE_FAILED', `${target}: write after ${state}`, { file: target });
      if (failed) throw new IoError('IO_WRITE_FAILED', `${target}: an earlier write failed`, { file: target });
      if (stage.length > 0) {
        await writeStaged(chunk);
        written += chunk.byteLength;
        return;
      }
      try {
        await writeAt(chunk, chunk.byteLength, written);
      } catch (e) {
        throw writeFailed(written, e);
      }
      written += chunk.byteLength;
    },
    async commit(): Promise<void> {
      if (state === 'committed') return;
      if (state !== 'open' || !fh || failed) {
        throw new IoError(
          'IO_WRITE_FAILED',
          `${target}: cannot commit: ${failed ? 'a write failed' : 'the sink was aborted'}`,
          { file: target },
        );
      }
      try {
        if (stage.length > 0) await finishDirect();
      } catch (e) {
        state = 'aborted';
        await removeTemp();
        throw e instanceof IoError ? e : writeFailed(written, e);
      }
      try {
        await fh.sync();
        await fh.close();
        fh = null;
        await fs.rename(tempPath, target);
      } catch (e) {
        state = 'aborted';
        await removeTemp();
        throw new IoError(
          'IO_WRITE_FAILED',
          `${target}: could not move ${tempPath} into place (${describe(e)})`,
          { file: target },
          { cause: e },
        );
      }
      state = 'committed';
      // Make the rename durable where directories can be fsynced (not on Windows, some network filesystems).
      try {
        const d = await fs.open(dir, 'r');
        try {
          await d.sync();
        } finally {
          await d.close();
        }
      } catch {
        // Best effort.
      }
    },
    async abort(): Promise<void> {
      if (state !== 'open') return;
      state = 'aborted';
      await removeTemp();
    },
  };
}
