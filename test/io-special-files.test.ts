/**
 * Files: only regular files are read or written (a FIFO input never blocks; a device, FIFO or directory at the
 * output is never replaced); a signal removes the temp file and the process still dies of the signal; a rerun
 * removes stale temps that a killed run left beside its target, and nothing else.
 */
import { type CliRun, runCli } from './cli-helpers.js';
import { execFileSync, spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileSink, fileSource } from '../src/node/files.js';
import { liveTemps, removeStaleTemps, tempOwnerPid, tempPathFor } from '../src/node/temp-files.js';

const ROOT = path.resolve(__dirname, '..');
const FIXTURES = path.join(ROOT, 'fixtures');
const STYLE = path.join(FIXTURES, 'sd15/style-lora.kohya.safetensors');
const BASE = path.join(FIXTURES, 'sd15/base.safetensors');
let tmp = '';

const run = (argv: string[]): Promise<CliRun> => runCli(argv, tmp);

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'lora-mix-files-'));
  execFileSync('mkfifo', [path.join(tmp, 'pipe.safetensors')]);
  await fs.mkdir(path.join(tmp, 'folder.safetensors'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('special files', () => {
  it('inputs: a FIFO or a directory is refused before it is opened (no blocking), in every command', async () => {
    for (const bad of ['pipe.safetensors', 'folder.safetensors']) {
      for (const argv of [
        ['inspect', bad],
        ['merge', bad, '-o', 'out.safetensors'],
        ['convert', bad, '--to', 'peft', '-o', 'out.safetensors'],
        ['fuse', '--base', BASE, bad, '-o', 'out.safetensors', '-q'],
      ]) {
        const r = await run(argv);
        expect(r.code, argv.join(' ')).toBe(3);
        expect(r.err).toMatch(/IO_NOT_A_REGULAR_FILE/);
      }
    }
    await expect(fileSource(path.join(tmp, 'pipe.safetensors'))).rejects.toMatchObject({
      code: 'IO_NOT_A_REGULAR_FILE',
      message: expect.stringMatching(/FIFO/),
    });
  });

  it('outputs: a device, a FIFO or a directory is refused and left as it was; nothing is created', async () => {
    for (const target of ['/dev/null', path.join(tmp, 'pipe.safetensors'), path.join(tmp, 'folder.safetensors')]) {
      for (const argv of [
        ['merge', STYLE, '-o', target],
        ['convert', STYLE, '--to', 'peft', '-o', target],
        ['fuse', '--base', BASE, STYLE, '-o', target, '-q'],
      ]) {
        const r = await run(argv);
        expect(r.code, argv.join(' ')).toBe(3);
        expect(r.err).toMatch(/IO_NOT_A_REGULAR_FILE.*not a regular file/);
      }
      await expect(fileSink(target)).rejects.toMatchObject({ code: 'IO_NOT_A_REGULAR_FILE' });
    }
    expect((await fs.stat('/dev/null')).isCharacterDevice()).toBe(true);
    expect((await fs.stat(path.join(tmp, 'pipe.safetensors'))).isFIFO()).toBe(true);
    expect((await fs.readdir(tmp)).sort()).toEqual(['folder.safetensors', 'pipe.safetensors']);
    expect(liveTemps()).toEqual([]);
  });
});

describe('signals remove the temp file', () => {
  it.each(['SIGTERM', 'SIGINT', 'SIGHUP'] as const)(
    '%s mid-write: the temp is gone and the child dies of it',
    async (signal) => {
      const target = path.join(tmp, `killed-${signal}.safetensors`);
      const child = spawn(process.execPath, ['--import', 'tsx', 'test/io-sink-child.ts', target], {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      const tempPath = await new Promise<string>((resolve, reject) => {
        let buf = '';
        child.stdout!.on('data', (d: Buffer) => {
          buf += d.toString();
          if (buf.includes('\n')) resolve(buf.trim());
        });
        child.on('exit', () => reject(new Error(`child exited early: ${stderr}`)));
      });
      expect((await fs.stat(tempPath)).size).toBe(1 << 20);
      const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
      child.kill(signal);
      expect(await exited).toBe(signal);
      await expect(fs.stat(tempPath)).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(fs.stat(target)).rejects.toMatchObject({ code: 'ENOENT' });
    },
  );
});

describe('stale temps', () => {
  /** A pid that is not running now. */
  function deadPid(): number {
    for (let pid = 4_000_000; pid > 1000; pid -= 7919) {
      try {
        process.kill(pid, 0);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ESRCH') return pid;
      }
    }
    throw new Error('no free pid found');
  }

  it('names encode the pid; a rerun removes old temps of dead runs beside its target, and nothing else', async () => {
    const dir = await fs.mkdtemp(path.join(tmp, 'stale-'));
    const target = path.join(dir, 'out.safetensors');
    const mine = tempPathFor(target);
    expect(path.basename(mine)).toMatch(/^\.out\.safetensors\.lora-mix-\d+-[0-9a-f]{12}\.tmp$/);
    expect(tempOwnerPid('out.safetensors', path.basename(mine))).toBe(process.pid);
    expect(tempOwnerPid('other.safetensors', path.basename(mine))).toBeUndefined();
    const dead = deadPid();
    const old = new Date(Date.now() - 3600_000);
    const files = {
      stale: `.out.safetensors.lora-mix-${dead}-0123456789ab.tmp`,
      live: `.out.safetensors.lora-mix-${process.pid}-0123456789ab.tmp`,
      otherTarget: `.other.safetensors.lora-mix-${dead}-0123456789ab.tmp`,
      legacy: `.out.safetensors.0123456789ab.tmp`,
      legacyPrefixed: `.out.safetensors.lora-mix-0123456789ab.tmp`,
      legacyFresh: `.out.safetensors.ba9876543210.tmp`,
      notOurs: `.out.safetensors.backup.tmp`,
      fresh: `.out.safetensors.lora-mix-${dead}-ba9876543210.tmp`,
    };
    for (const [k, name] of Object.entries(files)) {
      await fs.writeFile(path.join(dir, name), 'x');
      if (k !== 'fresh' && k !== 'legacyFresh') await fs.utimes(path.join(dir, name), old, old);
    }
    // Only old temps for this target go — a dead run's, and the pre-pid naming's (no owner: age decides) — not a
    // live pid's, not one newer than this run (a run that started after us), not another target's, not a name
    // lora-mix does not write.
    expect((await removeStaleTemps(target)).sort()).toEqual([files.stale, files.legacy, files.legacyPrefixed].sort());
    const kept = [files.fresh, files.live, files.notOurs, files.otherTarget, files.legacyFresh];
    expect((await fs.readdir(dir)).sort()).toEqual(kept.sort());
    // A command writing the target does the same.
    await fs.writeFile(path.join(dir, files.stale), 'x');
    await fs.utimes(path.join(dir, files.stale), old, old);
    await fs.writeFile(path.join(dir, files.legacy), 'x');
    await fs.utimes(path.join(dir, files.legacy), old, old);
    const r = await run(['merge', STYLE, '-o', target]);
    expect(r.code).toBe(0);
    expect((await fs.readdir(dir)).sort()).toEqual([...kept, 'out.safetensors'].sort());
  });

  it('a diffusers-folder fuse removes the temporary folders killed fuses left, and nothing else', async () => {
    const dir = await fs.mkdtemp(path.join(tmp, 'stale-dir-'));
    const target = path.join(dir, 'fused');
    const dead = deadPid();
    const old = new Date(Date.now() - 3600_000);
    const names = {
      stale: `.fused.lora-mix-${dead}-0123456789ab.tmp`,
      live: `.fused.lora-mix-${process.pid}-0123456789ab.tmp`,
      fresh: `.fused.lora-mix-${dead}-ba9876543210.tmp`,
      otherTarget: `.other.lora-mix-${dead}-0123456789ab.tmp`,
      notOurs: '.fused.keep.tmp',
      link: `.fused.lora-mix-${dead}-00000000beef.tmp`,
    };
    const elsewhere = await fs.mkdtemp(path.join(tmp, 'elsewhere-'));
    await fs.writeFile(path.join(elsewhere, 'precious'), 'x');
    for (const [k, name] of Object.entries(names)) {
      const p = path.join(dir, name);
      if (k === 'link') {
        await fs.symlink(elsewhere, p);
        continue;
      }
      await fs.mkdir(path.join(p, 'unet'), { recursive: true });
      await fs.writeFile(path.join(p, 'unet', 'diffusion_pytorch_model.safetensors'), 'partial');
      if (k !== 'fresh') await fs.utimes(p, old, old);
    }
    // The file-only sweep (single-file outputs) leaves folders alone.
    expect(await removeStaleTemps(target)).toEqual([]);
    const r = await run(['fuse', '--base', path.join(FIXTURES, 'sd15/diffusers'), STYLE, '-o', target, '-q']);
    expect(r.code).toBe(0);
    const left = (await fs.readdir(dir)).sort();
    expect(left).toEqual([names.live, names.fresh, names.otherTarget, names.notOurs, names.link, 'fused'].sort());
    expect(await fs.readFile(path.join(elsewhere, 'precious'), 'utf8')).toBe('x');
  });
});
