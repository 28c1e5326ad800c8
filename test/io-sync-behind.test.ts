/**
 * Background data syncs of fileSink (`syncEvery`, off by default): while the file is written, fdatasync runs every
 * so many bytes so that commit's fsync has little left. They must happen when asked for, never when fsync is off or
 * by default, leave the bytes unchanged, and a failing one must end in a typed IoError and no file at all.
 */
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { IoError } from '../src/core/errors.js';
import { fileSink } from '../src/node/file-sink.js';

const SPACING = 64 << 20;
import { writeSafetensors } from '../src/safetensors/write.js';
import { bytes } from './io-helpers.js';

let tmp = '';
beforeAll(async () => {
  // Beside the repository (a real disk, where O_DIRECT works), not on a tmpfs.
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-syncbehind-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});
afterEach(() => {
  vi.restoreAllMocks();
});

type Proto = { datasync: () => Promise<void>; sync: () => Promise<void> };

/** FileHandle.prototype (the class is not exported: reach it through an open handle). */
async function handleProto(): Promise<Proto> {
  const fh = await fs.open(import.meta.filename, 'r');
  const proto = Object.getPrototypeOf(fh) as Proto;
  await fh.close();
  return proto;
}

const leftovers = async (name: string): Promise<string[]> => (await fs.readdir(tmp)).filter((n) => n.includes(name));

describe('fileSink background data syncs', () => {
  it('a direct sink with syncEvery: 64 MiB fdatasyncs while it writes, before commit; the bytes are the same', async () => {
    const proto = await handleProto();
    const events: string[] = [];
    const realSync = proto.sync;
    const ds = vi.spyOn(proto, 'datasync');
    vi.spyOn(proto, 'sync').mockImplementation(function (this: unknown) {
      events.push('sync');
      return realSync.call(this);
    });
    const target = path.join(tmp, 'default.bin');
    const sink = await fileSink(target, { direct: true, syncEvery: SPACING });
    const piece = bytes(8 << 20, 3);
    const n = (SPACING >> 23) + 3; // a bit more than the spacing, in 8 MiB pieces
    for (let i = 0; i < n; i++) await sink.write(piece);
    await new Promise((r) => setTimeout(r, 50)); // the staged write in flight lands
    const beforeCommit = ds.mock.calls.length;
    await sink.commit();
    expect(beforeCommit).toBeGreaterThanOrEqual(1);
    expect(ds.mock.calls.length).toBe(beforeCommit);
    expect(events[0]).toBe('sync'); // commit still fsyncs the file
    const got = await fs.readFile(target);
    expect(got.length).toBe(n * piece.length);
    for (let i = 0; i < n; i++)
      expect(Buffer.compare(got.subarray(i * piece.length, (i + 1) * piece.length), piece)).toBe(0);
    expect(await leftovers('.tmp')).toEqual([]);
  });

  it('syncEvery sets the spacing, also for plain writes; never more than one in flight', async () => {
    const proto = await handleProto();
    const realDs = proto.datasync;
    let inFlight = 0;
    let most = 0;
    let calls = 0;
    vi.spyOn(proto, 'datasync').mockImplementation(async function (this: unknown) {
      calls++;
      inFlight++;
      most = Math.max(most, inFlight);
      try {
        await new Promise((r) => setTimeout(r, 5));
        return await realDs.call(this);
      } finally {
        inFlight--;
      }
    });
    for (const direct of [false, true]) {
      calls = 0;
      const target = path.join(tmp, `spaced-${direct}.bin`);
      const sink = await fileSink(target, { direct, syncEvery: 1 << 20 });
      const parts: Uint8Array[] = [];
      for (let i = 0; i < 40; i++) {
        const p = bytes((1 << 20) + 7 * i, i);
        parts.push(p);
        await sink.write(p);
        if (i % 8 === 0) await new Promise((r) => setTimeout(r, 20)); // let a sync finish now and then
      }
      await sink.commit();
      expect(calls).toBeGreaterThanOrEqual(direct ? 2 : 3);
      expect(Buffer.compare(await fs.readFile(target), Buffer.concat(parts))).toBe(0);
    }
    expect(most).toBe(1);
  });

  it('no data syncs with fsync: false, with syncEvery: 0, or by default (direct or plain)', async () => {
    const proto = await handleProto();
    const ds = vi.spyOn(proto, 'datasync');
    const cases = [
      { direct: true, fsync: false, syncEvery: 1 << 20 },
      { direct: true, syncEvery: 0 },
      { direct: true },
      { direct: false },
    ];
    for (const [i, options] of cases.entries()) {
      const target = path.join(tmp, `none-${i}.bin`);
      const sink = await fileSink(target, options);
      const n = i < 2 ? 3 : (SPACING >> 24) + 2; // past 64 MiB where a default would matter
      for (let k = 0; k < n; k++) await sink.write(bytes(16 << 20, k));
      await sink.commit();
      expect((await fs.stat(target)).size).toBe(n * (16 << 20));
    }
    expect(ds).not.toHaveBeenCalled();
  });

  it('a failing data sync is reported as a typed IoError and leaves neither the output nor a temp file', async () => {
    const proto = await handleProto();
    const eio = Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
    // Through the sink: the failure surfaces at the next write (the caller then aborts) or at commit, which removes
    // the temp file itself.
    for (const at of ['write', 'commit'] as const) {
      const ds = vi.spyOn(proto, 'datasync').mockRejectedValue(eio);
      const target = path.join(tmp, `failed-${at}.bin`);
      const sink = await fileSink(target, { direct: true, syncEvery: 1 << 20 });
      let caught: unknown = null;
      let where = '';
      try {
        where = 'write';
        for (let i = 0; i < (at === 'write' ? 4 : 1); i++) {
          await sink.write(bytes(16 << 20, i));
          if (at === 'write') await new Promise((r) => setTimeout(r, 30));
        }
        where = 'commit';
        await sink.commit();
      } catch (e) {
        caught = e;
      }
      expect(where).toBe(at);
      expect(ds).toHaveBeenCalled();
      expect(caught).toBeInstanceOf(IoError);
      expect((caught as IoError).code).toBe('IO_WRITE_FAILED');
      expect((caught as IoError).message).toMatch(/syncing .* to disk failed.*EIO/);
      if (at === 'commit') expect(await leftovers(`failed-${at}`)).toEqual([]);
      await sink.abort();
      expect(existsSync(target)).toBe(false);
      expect(await leftovers(`failed-${at}`)).toEqual([]);
      ds.mockRestore();
    }
    // Through writeSafetensors, which aborts the sink on failure: the same error, nothing left.
    vi.spyOn(proto, 'datasync').mockRejectedValue(eio);
    const target = path.join(tmp, 'failed.safetensors');
    const big = (16 << 20) + 5;
    const tensors = Array.from({ length: 3 }, (_, i) => ({
      name: `t${i}`,
      dtype: 'U8' as const,
      shape: [big],
      data: () => bytes(big, i),
    }));
    const sink = await fileSink(target, { direct: true, syncEvery: 1 << 20 });
    const err = await writeSafetensors(sink, tensors).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(IoError);
    expect((err as IoError).code).toBe('IO_WRITE_FAILED');
    expect(existsSync(target)).toBe(false);
    expect(await leftovers('failed.safetensors')).toEqual([]);
  });
});
