/**
 * fsync: false (FileSinkOptions, FuseOptions, `lora-mix fuse --no-fsync`): the output is still written to a temp
 * file and renamed into place, byte for byte the same, but no fsync is issued; the default syncs.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { fileSink } from '../src/node/file-sink.js';
import { runCli } from './cli-helpers.js';

const FIXTURES = path.resolve(import.meta.dirname, '..', 'fixtures');
let tmp = '';
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-fsync-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});
afterEach(() => {
  vi.restoreAllMocks();
});

/** Spy on FileHandle.prototype.sync (the class is not exported: reach it through an open handle). */
async function syncSpy() {
  const fh = await fs.open(path.join(FIXTURES, 'sd15', 'base.safetensors'), 'r');
  const proto = Object.getPrototypeOf(fh) as { sync: () => Promise<void> };
  await fh.close();
  return vi.spyOn(proto, 'sync');
}

describe('fsync on and off', () => {
  it('fileSink syncs by default and not with fsync: false; both rename into place and leave no temp', async () => {
    for (const fsync of [true, false]) {
      const spy = await syncSpy();
      const target = path.join(tmp, `sink-${fsync}.bin`);
      const sink = await fileSink(target, fsync ? {} : { fsync: false });
      await sink.write(new Uint8Array([1, 2, 3]));
      await sink.commit();
      expect(spy.mock.calls.length > 0).toBe(fsync);
      expect([...(await fs.readFile(target))]).toEqual([1, 2, 3]);
      expect((await fs.readdir(tmp)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
      spy.mockRestore();
    }
  });

  it('lora-mix fuse --no-fsync writes the same file as a synced fuse, without an fsync', async () => {
    const args = (o: string) => [
      'fuse',
      '--base',
      'sd15/base.safetensors',
      'sd15/lcm-lora.kohya.safetensors',
      '-o',
      o,
      '-q',
    ];
    const a = path.join(tmp, 'synced.safetensors');
    const b = path.join(tmp, 'unsynced.safetensors');
    const spy = await syncSpy();
    expect((await runCli(args(a), FIXTURES)).code).toBe(0);
    const synced = spy.mock.calls.length;
    expect(synced).toBeGreaterThan(0);
    expect((await runCli([...args(b), '--no-fsync'], FIXTURES)).code).toBe(0);
    expect(spy.mock.calls.length).toBe(synced);
    expect(Buffer.compare(await fs.readFile(a), await fs.readFile(b))).toBe(0);
    const help = await runCli(['fuse', '--help'], FIXTURES);
    expect(help.out).toMatch(/--no-fsync\s+do not wait for the disk to confirm the output/);
  });
});
