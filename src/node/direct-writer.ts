/**
 * Sequential writes into an open temp file, either plainly or with O_DIRECT: bytes are staged in two page-aligned
 * 16 MiB buffers, one written while the other fills; the padded last block is cut back on finish. If the
 * filesystem refuses the first O_DIRECT write (stricter alignment rules), the writer reopens the file without it
 * and carries on; the bytes on disk are the same either way. With `syncEvery`, the bytes already written are
 * fdatasynced in the background as the file grows, so the caller's final fsync has only the last stretch left.
 */
import { constants, promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { IoError } from '../core/errors.js';
import { describeError, errnoCode } from './file-checks.js';

/** Largest single positional write (Node refuses more than 2 GiB − 1 at once). */
const MAX_IO = 1 << 30;
/** O_DIRECT staging: chunk size (a multiple of every common logical block size) and the block size to pad to. */
const DIRECT_CHUNK = 16 << 20;
const DIRECT_BLOCK = 4096;

/** Page-aligned memory: WebAssembly memories are allocated by mmap, so their buffers start on a page boundary. */
function alignedBuffer(bytes: number): Uint8Array {
  return new Uint8Array(new WebAssembly.Memory({ initial: Math.ceil(bytes / 65536) }).buffer, 0, bytes);
}

/** Write buf[0, n) at `at`, looping over short writes. */
export async function writeAll(fh: FileHandle, buf: Uint8Array, n: number, at: number): Promise<void> {
  let done = 0;
  while (done < n) {
    const { bytesWritten } = await fh.write(buf, done, Math.min(n - done, MAX_IO), at + done);
    done += bytesWritten;
  }
}

export class DirectWriter {
  #fh: FileHandle | null;
  #direct: boolean;
  #failed = false;
  /** Bytes accepted by write(). */
  #written = 0;
  // O_DIRECT staging state.
  readonly #stage: Uint8Array[];
  #cur = 0;
  #fill = 0;
  /** Bytes handed to the file (a multiple of DIRECT_CHUNK until finish). */
  #flushed = 0;
  #pending: Promise<void> | null = null;
  /** The first failure (a write or a background data sync), reported by every later call. */
  #error: IoError | null = null;
  /** Background data syncs: one every `syncEvery` bytes handed to the file, at most one in flight (0: none). */
  readonly #syncEvery: number;
  /** File offset the last finished data sync covered. */
  #syncedTo = 0;
  #syncing: Promise<void> | null = null;
  #syncs = 0;

  constructor(
    fh: FileHandle,
    private readonly tempPath: string,
    direct: boolean,
    private readonly target: string,
    syncEvery = 0,
  ) {
    this.#fh = fh;
    this.#direct = direct;
    this.#syncEvery = Number.isFinite(syncEvery) && syncEvery > 0 ? syncEvery : 0;
    this.#stage = direct ? [alignedBuffer(DIRECT_CHUNK), alignedBuffer(DIRECT_CHUNK)] : [];
  }

  get direct(): boolean {
    return this.#direct;
  }

  get failed(): boolean {
    return this.#failed;
  }

  /** The failure that made `failed` true, when it was a write or a data sync of this writer. */
  get error(): IoError | null {
    return this.#error;
  }

  /** Background data syncs started so far. */
  get dataSyncs(): number {
    return this.#syncs;
  }

  #fail(err: IoError): IoError {
    this.#failed = true;
    this.#error ??= err;
    return err;
  }

  #writeFailed(at: number, e: unknown): IoError {
    return this.#fail(
      new IoError(
        'IO_WRITE_FAILED',
        `${this.target}: writing ${this.tempPath} failed at byte ${at} (${describeError(e)})`,
        { file: this.target },
        { cause: e },
      ),
    );
  }

  /**
   * Once `syncEvery` more bytes have reached the file than the last data sync covered, start an fdatasync on the
   * libuv pool and return at once: the writer never waits for it, and the next one starts only after it is done.
   * A failure is kept and reported by the next write, by finish and by the sink's commit.
   */
  #syncBehind(end: number): void {
    if (this.#syncEvery === 0 || this.#syncing || this.#failed || !this.#fh) return;
    if (end - this.#syncedTo < this.#syncEvery) return;
    this.#syncs++;
    this.#syncing = this.#fh
      .datasync()
      .then(
        () => {
          this.#syncedTo = Math.max(this.#syncedTo, end);
        },
        (e: unknown) => {
          this.#fail(
            new IoError(
              'IO_WRITE_FAILED',
              `${this.target}: syncing ${this.tempPath} to disk failed after byte ${end} (${describeError(e)})`,
              { file: this.target },
              { cause: e },
            ),
          );
        },
      )
      .then(() => {
        this.#syncing = null;
      });
  }

  /** Wait for a data sync in flight; throw the writer's failure, if any. */
  async #settleSync(): Promise<void> {
    if (this.#syncing) await this.#syncing;
    if (this.#error) throw this.#error;
  }

  #handle(): FileHandle {
    if (!this.#fh) throw new IoError('IO_WRITE_FAILED', `${this.target}: write after close`, { file: this.target });
    return this.#fh;
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.#failed) {
      throw (
        this.#error ?? new IoError('IO_WRITE_FAILED', `${this.target}: an earlier write failed`, { file: this.target })
      );
    }
    const fh = this.#handle();
    if (this.#stage.length > 0) {
      await this.#writeStaged(chunk);
    } else {
      await writeAll(fh, chunk, chunk.byteLength, this.#written).catch((e: unknown) => {
        throw this.#writeFailed(this.#written, e);
      });
      this.#syncBehind(this.#written + chunk.byteLength);
    }
    this.#written += chunk.byteLength;
  }

  /** Leave O_DIRECT for plain writes: the first direct write was refused (alignment rules of this filesystem). */
  async #leaveDirect(): Promise<void> {
    await this.#settleSync();
    await this.#handle().close();
    this.#fh = await fs.open(this.tempPath, constants.O_WRONLY);
    this.#direct = false;
  }

  async #flushStage(bytes: number, padTo: number): Promise<void> {
    const buf = this.#stage[this.#cur] as Uint8Array;
    const at = this.#flushed;
    if (padTo > bytes) buf.fill(0, bytes, padTo);
    if (this.#pending) await this.#pending;
    if (at === 0) {
      // First write: done synchronously so a refusal can still fall back to plain writes.
      try {
        await writeAll(this.#handle(), buf, padTo, at);
      } catch (e) {
        if (errnoCode(e) !== 'EINVAL') throw this.#writeFailed(at, e);
        await this.#leaveDirect();
        await writeAll(this.#handle(), buf, bytes, at).catch((e2: unknown) => {
          throw this.#writeFailed(at, e2);
        });
      }
      this.#syncBehind(at + bytes);
    } else {
      const p = writeAll(this.#handle(), buf, padTo, at).then(
        () => this.#syncBehind(at + bytes),
        (e: unknown) => {
          throw this.#writeFailed(at, e);
        },
      );
      p.catch(() => undefined); // reported by the next write or by finish
      this.#pending = p;
    }
    this.#flushed += bytes;
    this.#cur ^= 1;
    this.#fill = 0;
  }

  async #writeStaged(chunk: Uint8Array): Promise<void> {
    let off = 0;
    while (off < chunk.byteLength) {
      if (!this.#direct) {
        // Fell back after the first chunk: plain writes from here on.
        const at = this.#flushed + this.#fill;
        await writeAll(this.#handle(), chunk.subarray(off), chunk.byteLength - off, at).catch((e: unknown) => {
          throw this.#writeFailed(at, e);
        });
        this.#flushed += chunk.byteLength - off;
        this.#syncBehind(this.#flushed);
        return;
      }
      const k = Math.min(DIRECT_CHUNK - this.#fill, chunk.byteLength - off);
      (this.#stage[this.#cur] as Uint8Array).set(chunk.subarray(off, off + k), this.#fill);
      this.#fill += k;
      off += k;
      if (this.#fill === DIRECT_CHUNK) await this.#flushStage(DIRECT_CHUNK, DIRECT_CHUNK);
    }
  }

  /**
   * Overwrite bytes already accepted, [at, at + bytes.byteLength): those still in the staging buffer are changed
   * there; those already handed to the file are written again (through a plain descriptor with O_DIRECT, once the
   * write in flight is done).
   */
  async writeAt(at: number, bytes: Uint8Array): Promise<void> {
    const end = at + bytes.byteLength;
    if (at < 0 || end > this.#written) {
      throw new IoError(
        'IO_WRITE_FAILED',
        `${this.target}: rewrite of bytes ${at}…${end} beyond the ${this.#written} written`,
        {
          file: this.target,
        },
      );
    }
    if (!this.#direct) {
      await writeAll(this.#handle(), bytes, bytes.byteLength, at).catch((e: unknown) => {
        throw this.#writeFailed(at, e);
      });
      return;
    }
    const staged = this.#flushed;
    if (end > staged) {
      const from = Math.max(at, staged);
      (this.#stage[this.#cur] as Uint8Array).set(bytes.subarray(from - at), from - staged);
    }
    if (at >= staged) return;
    if (this.#pending) await this.#pending;
    const plain = await fs.open(this.tempPath, constants.O_WRONLY);
    try {
      await writeAll(plain, bytes, Math.min(end, staged) - at, at);
    } catch (e) {
      throw this.#writeFailed(at, e);
    } finally {
      await plain.close();
    }
  }

  /** Write what is staged; cut the padded last block back to the bytes written. */
  async finish(): Promise<void> {
    if (this.#stage.length > 0) {
      if (this.#pending) await this.#pending;
      this.#pending = null;
      if (this.#direct && this.#fill > 0) {
        await this.#flushStage(this.#fill, Math.ceil(this.#fill / DIRECT_BLOCK) * DIRECT_BLOCK);
        if (this.#pending) await this.#pending;
        this.#pending = null;
        await this.#handle().truncate(this.#written);
      }
    }
    await this.#settleSync();
  }

  /** fsync (unless `sync` is false) and close (after finish). */
  async syncAndClose(sync = true): Promise<void> {
    const fh = this.#handle();
    if (sync) await fh.sync();
    this.#fh = null;
    await fh.close();
  }

  /** Close without syncing (abort); waits for a write in flight. Idempotent. */
  async close(): Promise<void> {
    if (this.#pending) await this.#pending.catch(() => undefined);
    this.#pending = null;
    if (this.#syncing) await this.#syncing;
    const fh = this.#fh;
    this.#fh = null;
    if (fh) await fh.close().catch(() => undefined);
  }
}
