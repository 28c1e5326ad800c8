/**
 * Node adapters: files as ByteSources (positional reads on one FileHandle, never the whole file in one buffer)
 * and as ByteSinks (file-sink.ts: temp file beside the target, fsync, rename, fsync of the directory; abort or a
 * signal removes the temp). Only regular files are read: the file type is checked before a file is opened.
 */
import { constants, promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { IoError } from '../core/errors.js';
import { checkInputFile, describeError as describe, errnoCode, fileTypeName } from './file-checks.js';
import { parseSafetensors, type SafetensorsFile } from '../safetensors/read.js';
import type { ByteSource } from '../core/bytes.js';
import type { RefuseList } from '../core/host.js';

export type { RefuseList };

/** Largest single positional read (Node refuses reads over 2 GiB − 1). */
const MAX_READ = 1 << 30;

/** A ByteSource over a file FileHandle, with `identity` = "dev:ino". */
export interface FileSource extends ByteSource {
  readonly path: string;
  readonly identity: string;
  readInto(start: number, target: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

/** Open a file for positional reads. INPUT_NOT_FOUND when it does not exist. */
export async function fileSource(filePath: string): Promise<FileSource> {
  await checkInputFile(filePath);
  let fh: FileHandle;
  try {
    // O_NONBLOCK: should the path turn into a FIFO after the check, the open still does not wait for a writer.
    fh = await fs.open(filePath, constants.O_RDONLY | constants.O_NONBLOCK);
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
    throw new IoError(
      'IO_NOT_A_REGULAR_FILE',
      `${filePath}: this is ${fileTypeName(st)}, not a regular file; lora-mix reads regular files only`,
      { file: filePath, found: fileTypeName(st) },
    );
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

export { assertNotOverwriting } from './file-checks.js';
export { fileSink, type FileSink, type FileSinkOptions } from './file-sink.js';
