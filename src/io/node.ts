/**
 * Node adapters: files as ByteSources (positional reads on one FileHandle, never the whole file in one buffer)
 * and as ByteSinks (temp file beside the target, fsync, rename, fsync of the directory; abort removes the temp).
 */
import { randomBytes } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { IoError } from '../errors.js';
import { parseSafetensors, type SafetensorsFile } from '../safetensors/read.js';
import type { ByteSink, ByteSource } from './source.js';

/** Largest single positional read (Node refuses reads over 2 GiB − 1). */
const MAX_READ = 1 << 30;

function errnoCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && typeof (e as { code?: unknown }).code === 'string' ? (e as { code: string }).code : undefined;
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
    if (code === 'ENOENT') throw new IoError('INPUT_NOT_FOUND', `${filePath}: no such file`, { file: filePath }, { cause: e });
    throw new IoError('IO_READ_FAILED', `${filePath}: cannot open for reading (${describe(e)})`, { file: filePath }, { cause: e });
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
      throw new IoError('IO_READ_FAILED', `${filePath}: byte range ${start}…${end} is outside the file (0…${size})`,
        { file: filePath, expected: size, found: end });
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
        throw new IoError('IO_READ_FAILED', `${filePath}: read of bytes ${start + done}…${start + done + want} failed (${describe(e)})`,
          { file: filePath }, { cause: e });
      }
      if (got === 0) {
        throw new IoError('IO_READ_FAILED',
          `${filePath}: the file ended at byte ${start + done} while reading up to ${end} (it shrank after opening?)`,
          { file: filePath, expected: end, found: start + done });
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

/** Things a file sink must not replace: sources (by identity or name) or paths. */
export type RefuseList = readonly (ByteSource | string)[];

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
      same = (input.identity !== undefined && input.identity === targetId) ||
        (typeof inputPath === 'string' && (await realOrResolved(inputPath)) === targetReal);
    }
    if (same) {
      throw new IoError('OUTPUT_WOULD_OVERWRITE_INPUT',
        `${target}: the output is the same file as the input '${label}'; choose another output path`,
        { file: target, input: label });
    }
  }
}

export interface FileSinkOptions {
  /** Inputs the target must not be (checked before the temp file is created). */
  refuse?: RefuseList;
}

export interface FileSink extends ByteSink {
  /** The final path. */
  readonly path: string;
  /** The temporary file being written (removed on abort, renamed on commit). */
  readonly tempPath: string;
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
  let fh: FileHandle | null;
  try {
    fh = await fs.open(tempPath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode ?? 0o666);
  } catch (e) {
    throw new IoError('IO_WRITE_FAILED', `${target}: cannot create a temporary file in ${dir} (${describe(e)})`, { file: target }, { cause: e });
  }
  let state: 'open' | 'committed' | 'aborted' = 'open';
  let written = 0;
  let failed = false;

  const removeTemp = async (): Promise<void> => {
    const h = fh;
    fh = null;
    if (h) await h.close().catch(() => undefined);
    await fs.rm(tempPath, { force: true }).catch(() => undefined);
  };

  return {
    name: target,
    path: target,
    tempPath,
    async write(chunk: Uint8Array): Promise<void> {
      if (state !== 'open' || !fh) throw new IoError('IO_WRITE_FAILED', `${target}: write after ${state}`, { file: target });
      let done = 0;
      while (done < chunk.byteLength) {
        const want = Math.min(chunk.byteLength - done, MAX_READ);
        try {
          const { bytesWritten } = await fh.write(chunk, done, want, written + done);
          done += bytesWritten;
        } catch (e) {
          failed = true;
          throw new IoError('IO_WRITE_FAILED', `${target}: writing ${tempPath} failed at byte ${written + done} (${describe(e)})`,
            { file: target }, { cause: e });
        }
      }
      written += done;
    },
    async commit(): Promise<void> {
      if (state === 'committed') return;
      if (state !== 'open' || !fh || failed) {
        throw new IoError('IO_WRITE_FAILED', `${target}: cannot commit: ${failed ? 'a write failed' : 'the sink was aborted'}`, { file: target });
      }
      try {
        await fh.sync();
        await fh.close();
        fh = null;
        await fs.rename(tempPath, target);
      } catch (e) {
        state = 'aborted';
        await removeTemp();
        throw new IoError('IO_WRITE_FAILED', `${target}: could not move ${tempPath} into place (${describe(e)})`, { file: target }, { cause: e });
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
