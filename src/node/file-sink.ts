/**
 * Files as ByteSinks: bytes go to a temp file beside the target (named and cleaned up by temp-files.ts); commit
 * fsyncs it (unless `fsync: false`), renames it over the target and fsyncs the directory; abort (or a signal) removes it. Only regular
 * files or new paths are written: a FIFO, device, socket or directory at the target is refused before anything is
 * created. With `direct`, writes bypass the page cache through O_DIRECT staging buffers (direct-writer.ts); with
 * `syncEvery`, the bytes written are fdatasynced in the background as the file grows.
 */
import { constants, promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import type { ByteSink } from '../core/bytes.js';
import { IoError } from '../core/errors.js';
import type { RefuseList } from '../core/host.js';
import { DirectWriter } from './direct-writer.js';
import { assertNotOverwriting, describeError, errnoCode, fileTypeName } from './file-checks.js';
import { registerTemp, releaseTemp, removeStaleTemps, tempPathFor } from './temp-files.js';

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
  /**
   * fsync the temp file before the rename and the folder after it (default true). false keeps the temp + rename
   * (no partial file is ever visible at the target) but not the durability: the OS writes the bytes back later.
   */
  fsync?: boolean;
  /**
   * While writing, fdatasync the temp file in the background each time this many more bytes have reached it (at
   * most one such sync in flight; the writes never wait for it), so that commit's fsync has only the last stretch
   * left. Default 0 (none): on the machine measured (ext4 on a virtio disk with a write-back cache, quiet) 64 MiB
   * syncs made an SD1.5 fuse faster (4.63 vs 5.95 s) and an SDXL fuse slower (11.8 vs 10.0 s): each sync is a journal
   * commit that holds back the O_DIRECT writes beside it (bench/RESULTS.md, session 8).
   * Ignored with `fsync: false`. Durability is the same either way: commit still fsyncs the file and its folder.
   */
  syncEvery?: number;
}

export interface FileSink extends ByteSink {
  /** The final path. */
  readonly path: string;
  /** The temporary file being written (removed on abort or signal, renamed on commit). */
  readonly tempPath: string;
  /** True while writes bypass the page cache (O_DIRECT was asked for and the filesystem accepts it). */
  readonly directIO: boolean;
  /** Stale temps of a killed earlier run that were removed beside the target. */
  readonly staleRemoved: readonly string[];
}

/**
 * The target must be a regular file or not exist. Returns its permission bits (kept by the output) when it exists.
 */
async function checkTarget(target: string): Promise<number | undefined> {
  let st;
  try {
    st = await fs.stat(target);
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return undefined;
    throw new IoError('IO_WRITE_FAILED', `${target}: cannot check the output path (${describeError(e)})`, {
      file: target,
    });
  }
  if (!st.isFile()) {
    throw new IoError(
      'IO_NOT_A_REGULAR_FILE',
      `${target}: the output is ${fileTypeName(st)}, not a regular file; lora-mix writes only regular files or new paths (it would replace it)`,
      { file: target, found: fileTypeName(st) },
    );
  }
  return st.mode & 0o777;
}

/** Create the temp file (O_EXCL); with `direct`, try O_DIRECT first and fall back where it is refused. */
async function openTemp(
  target: string,
  tempPath: string,
  mode: number,
  direct: boolean,
): Promise<{ fh: FileHandle; direct: boolean }> {
  const O_DIRECT = (constants as { O_DIRECT?: number }).O_DIRECT;
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL;
  try {
    if (direct && typeof O_DIRECT === 'number' && O_DIRECT !== 0) {
      try {
        return { fh: await fs.open(tempPath, flags | O_DIRECT, mode), direct: true };
      } catch (e) {
        if (errnoCode(e) !== 'EINVAL') throw e; // the filesystem refuses O_DIRECT (tmpfs, …)
      }
    }
    return { fh: await fs.open(tempPath, flags, mode), direct: false };
  } catch (e) {
    throw new IoError(
      'IO_WRITE_FAILED',
      `${target}: cannot create a temporary file in ${path.dirname(tempPath)} (${describeError(e)})`,
      { file: target },
      { cause: e },
    );
  }
}

/** fsync the directory so the rename survives a crash (best effort: not on Windows or some network filesystems). */
async function syncDirectory(dir: string): Promise<void> {
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
}

/**
 * A sink that writes `.<name>.lora-mix-<pid>-<random>.tmp` beside `target`; commit fsyncs it, renames it over the
 * target and fsyncs the directory; abort closes and removes it. The overwrite and file-type checks run, and stale
 * temps of killed runs are removed, before anything is created.
 */
export async function fileSink(target: string, options: FileSinkOptions = {}): Promise<FileSink> {
  await assertNotOverwriting(target, options.refuse ?? []);
  const mode = await checkTarget(target);
  const staleRemoved = await removeStaleTemps(target);
  const tempPath = tempPathFor(target);
  const opened = await openTemp(target, tempPath, mode ?? 0o666, options.direct === true);
  registerTemp(tempPath);
  const sync = options.fsync !== false;
  const syncEvery = sync ? (options.syncEvery ?? 0) : 0;
  const writer = new DirectWriter(opened.fh, tempPath, opened.direct, target, syncEvery);
  let state: 'open' | 'committed' | 'aborted' = 'open';

  const removeTemp = async (): Promise<void> => {
    await writer.close();
    await fs.rm(tempPath, { force: true }).catch(() => undefined);
    releaseTemp(tempPath);
  };
  const refuse = (why: string): IoError => new IoError('IO_WRITE_FAILED', `${target}: ${why}`, { file: target });

  return {
    name: target,
    path: target,
    tempPath,
    staleRemoved,
    get directIO() {
      return writer.direct;
    },
    async write(chunk: Uint8Array): Promise<void> {
      if (state !== 'open') throw refuse(`write after ${state}`);
      await writer.write(chunk);
    },
    async writeAt(offset: number, bytes: Uint8Array): Promise<void> {
      if (state !== 'open') throw refuse(`write after ${state}`);
      await writer.writeAt(offset, bytes);
    },
    async commit(): Promise<void> {
      if (state === 'committed') return;
      if (state !== 'open') throw refuse('cannot commit: the sink was aborted');
      if (writer.failed) {
        // A write or a background data sync failed: nothing of it may stay behind.
        state = 'aborted';
        await removeTemp();
        throw writer.error ?? refuse('cannot commit: a write failed');
      }
      try {
        await writer.finish();
        await writer.syncAndClose(sync);
        await fs.rename(tempPath, target);
      } catch (e) {
        state = 'aborted';
        await removeTemp();
        throw e instanceof IoError
          ? e
          : new IoError(
              'IO_WRITE_FAILED',
              `${target}: could not move ${tempPath} into place (${describeError(e)})`,
              { file: target },
              { cause: e },
            );
      }
      releaseTemp(tempPath);
      state = 'committed';
      if (sync) await syncDirectory(path.dirname(path.resolve(target)));
    },
    async abort(): Promise<void> {
      if (state !== 'open') return;
      state = 'aborted';
      await removeTemp();
    },
  };
}
