/**
 * Usage and API misuse: one exit code per error family, the same for the same mistake in every command; repeated
 * value flags; non-finite weights; -q; API arguments checked at the boundary with typed errors.
 */
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT, exitCodeFor } from '../src/cli/main.js';
import { type CliRun, runCli } from './cli-helpers.js';
import {
  ArchError,
  ArgumentError,
  FormatError,
  FuseError,
  IoError,
  LoraError,
  LoraMixError,
  OptionError,
  SafetensorsError,
  SamplerError,
  UsageError,
  errorFromCode,
} from '../src/core/errors.js';
import { loadLora, saveLora } from '../src/formats/index.js';
import { fuseLoras, mergeLoras } from '../src/node.js';

const FIXTURES = path.resolve(__dirname, '..', 'fixtures');
const STYLE = 'sd15/style-lora.kohya.safetensors';
const LCM = 'sd15/lcm-lora.kohya.safetensors';
const BASE = 'sd15/base.safetensors';
let tmp = '';

function run(argv: string[], isTTY = false): Promise<CliRun> {
  return runCli(argv, FIXTURES, { isTTY });
}

async function caught(f: () => unknown): Promise<LoraMixError> {
  try {
    await f();
  } catch (e) {
    if (!(e instanceof LoraMixError)) throw new Error(`expected a LoraMixError, got ${String(e)}`);
    return e;
  }
  throw new Error('expected an error, got none');
}

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'lora-mix-usage-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('exit codes: one per family', () => {
  it('exitCodeFor maps every family to its documented code', () => {
    expect(exitCodeFor(new UsageError('x'))).toBe(EXIT.usage);
    expect(exitCodeFor(new ArgumentError('ARG_INVALID', 'x'))).toBe(2);
    expect(exitCodeFor(new OptionError('OPTION_INVALID', 'x'))).toBe(2);
    expect(exitCodeFor(new SafetensorsError('SAFETENSORS_TRUNCATED', 'x'))).toBe(1);
    expect(exitCodeFor(new FormatError('FORMAT_NONFINITE', 'x'))).toBe(1);
    expect(exitCodeFor(new ArchError('ARCH_MISMATCH', 'x'))).toBe(1);
    expect(exitCodeFor(new IoError('IO_WRITE_FAILED', 'x'))).toBe(3);
    expect(exitCodeFor(new LoraError('LORA_EMPTY', 'x'))).toBe(4);
    expect(exitCodeFor(new FuseError('FUSE_OVERFLOW', 'x'))).toBe(5);
    expect(exitCodeFor(new SamplerError('SAMPLER_INVALID_STEPS', 'x'))).toBe(6);
    expect(exitCodeFor(Object.assign(new Error('EACCES'), { code: 'EACCES', syscall: 'open' }))).toBe(3);
    expect(exitCodeFor(new TypeError('bug'))).toBe(70);
  });

  it('docs/errors.md lists every code of src/core/errors.ts', async () => {
    const src = await fs.readFile(path.resolve(__dirname, '..', 'src/core/errors.ts'), 'utf8');
    const docs = await fs.readFile(path.resolve(__dirname, '..', 'docs/errors.md'), 'utf8');
    const types = src.slice(0, src.indexOf('export class LoraMixError'));
    const codes = [...types.matchAll(/'([A-Z][A-Z0-9_]*)'/g)].map((m) => m[1]!);
    expect(codes).toContain('ARCH_UNDETECTED');
    expect(codes.length).toBeGreaterThan(60);
    expect(codes.filter((c) => !docs.includes(`\`${c}\``))).toEqual([]);
  });

  it('errorFromCode rebuilds the family from a code', () => {
    expect(errorFromCode('OPTION_INVALID', 'm')).toBeInstanceOf(OptionError);
    expect(errorFromCode('INPUT_NOT_FOUND', 'm')).toBeInstanceOf(IoError);
    expect(errorFromCode('KERNEL_FAILED', 'm')).toBeInstanceOf(FuseError);
    expect(errorFromCode('NOPE', 'm')).toBeUndefined();
  });

  it('the same mistake exits the same way in every command', async () => {
    const out = path.join(tmp, 'x.safetensors');
    const archCases = [
      ['merge', STYLE, '-o', out, '--arch', 'sd3'],
      ['convert', STYLE, '--to', 'peft', '-o', out, '--arch', 'sd3'],
      ['layout', 'sd3'],
    ];
    for (const argv of archCases) {
      const r = await run(argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toMatch(/sd3/);
    }
    for (const w of ['1e400', 'Infinity', '-inf', 'NaN']) {
      for (const argv of [
        ['merge', `${STYLE}:${w}`, '-o', out],
        ['fuse', '--base', BASE, `${STYLE}:${w}`, '-o', out],
        ['verify', '--fused', BASE, '--base', BASE, `${STYLE}:${w}`],
      ]) {
        const r = await run(argv);
        expect(r.code, argv.join(' ')).toBe(2);
        expect(r.err).toMatch(/not a finite number/);
      }
    }
    await expect(fs.readdir(tmp)).resolves.toEqual([]);
  });

  it('a missing input is I/O (3) and a file that is not safetensors is input (1), in every command', async () => {
    const out = path.join(tmp, 'x.safetensors');
    for (const argv of [
      ['inspect', 'nope.safetensors'],
      ['merge', 'nope.safetensors', '-o', out],
      ['convert', 'nope.safetensors', '--to', 'peft', '-o', out],
      ['fuse', '--base', BASE, 'nope.safetensors', '-o', out],
    ]) {
      expect((await run(argv)).code, argv.join(' ')).toBe(3);
    }
    for (const argv of [
      ['inspect', 'bad/truncated.safetensors'],
      ['merge', 'bad/truncated.safetensors', '-o', out],
      ['convert', 'bad/truncated.safetensors', '--to', 'peft', '-o', out],
    ]) {
      expect((await run(argv)).code, argv.join(' ')).toBe(1);
    }
  });
});

describe('flags', () => {
  it('a value flag given twice is a usage error naming both values', async () => {
    const a = path.join(tmp, 'a.safetensors');
    const b = path.join(tmp, 'b.safetensors');
    for (const argv of [
      ['merge', STYLE, '-o', a, '-o', b],
      ['merge', STYLE, '-o', a, '--output', b],
      ['merge', STYLE, '-o', a, '--rank', '2', '--rank', '4'],
      ['convert', STYLE, '--to', 'peft', '--to', 'kohya', '-o', a],
      ['fuse', '--base', BASE, '--base', BASE, STYLE, '-o', a],
    ]) {
      const r = await run(argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toMatch(/given twice/);
    }
    await expect(fs.readdir(tmp)).resolves.toEqual([]);
  });

  it('convert --allow-unmatched without --arch is a usage error, as in merge', async () => {
    for (const cmd of ['convert', 'merge']) {
      const argv = [cmd, STYLE, '-o', path.join(tmp, 'a.safetensors'), '--allow-unmatched'];
      if (cmd === 'convert') argv.push('--to', 'peft');
      const r = await run(argv);
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/--allow-unmatched needs --arch/);
    }
  });

  it('merge -q prints no progress; without it a terminal gets the bar', async () => {
    const out = path.join(tmp, 'q.safetensors');
    const loud = await run(['merge', STYLE, `${LCM}:0.5`, '-o', out, '--dtype', 'fp32'], true);
    expect(loud.code).toBe(0);
    expect(loud.err).toMatch(/merge \[/);
    const quiet = await run(['merge', STYLE, `${LCM}:0.5`, '-o', out, '-q', '--dtype', 'fp32'], true);
    expect(quiet.code).toBe(0);
    expect(quiet.err).toBe('');
    await fs.rm(out);
  });
});

describe('API misuse is a typed error at the boundary', () => {
  it('mergeLoras', async () => {
    const style = await loadLora(path.join(FIXTURES, STYLE));
    const cases: [() => unknown, string, RegExp][] = [
      [() => mergeLoras(['x.safetensors'] as never, [1]), 'ARG_INVALID', /input 1.*a string.*loadLora\(path\)/],
      [() => mergeLoras([null] as never, [1]), 'ARG_INVALID', /input 1.*null/],
      [() => mergeLoras(style as never, [1]), 'ARG_INVALID', /array of LoRAs.*\[lora\]/],
      [() => mergeLoras(undefined as never, [1]), 'ARG_INVALID', /undefined/],
      [() => mergeLoras([], []), 'ARG_MISSING', /no input/],
      [() => mergeLoras([style], [1, 2]), 'ARG_INVALID', /one weight per input/],
      [() => mergeLoras([style], ['1'] as never), 'ARG_INVALID', /weight/],
      [() => mergeLoras([style], [Number.NaN]), 'ARG_INVALID', /finite/],
      [() => mergeLoras([style], [1], { rank: 0 }), 'OPTION_INVALID', /rank/],
    ];
    for (const [f, code, message] of cases) {
      const e = await caught(f);
      expect(e.code, String(f)).toBe(code);
      expect(e.message).toMatch(message);
    }
  });

  it('loadLora and saveLora', async () => {
    for (const bad of [undefined, 42, null, '', {}, [1]]) {
      const e = await caught(() => loadLora(bad as never));
      expect(e.code).toBe('ARG_INVALID');
      expect(e.message).toMatch(/loadLora: expected a file path/);
    }
    const style = await loadLora(path.join(FIXTURES, STYLE));
    const out = path.join(tmp, 'saved.safetensors');
    expect((await caught(() => saveLora(style, out, undefined as never))).code).toBe('ARG_MISSING');
    for (const format of ['Kohya2', 'diffusers', 'lycoris', '', 42]) {
      const e = await caught(() => saveLora(style, out, { format } as never));
      expect(e.code, String(format)).toBe('OPTION_INVALID');
    }
    expect((await caught(() => saveLora(style, out, {} as never))).code).toBe('OPTION_INVALID');
    expect((await caught(() => saveLora(style, out, { format: 'kohya', kohyaPaths: 'ldm' as never }))).code).toBe(
      'OPTION_INVALID',
    );
    expect((await caught(() => saveLora(style, 42 as never, { format: 'peft' }))).code).toBe('ARG_INVALID');
    expect((await caught(() => saveLora({} as never, out, { format: 'peft' }))).code).toBe('ARG_INVALID');
    await expect(fs.readdir(tmp)).resolves.toEqual([]);
    // Names are matched without regard to case: 'PEFT' is the PEFT spelling, and the file holds every module.
    const r = await saveLora(style, out, { format: 'PEFT' as never });
    expect(r.byteLength).toBeGreaterThan(1000);
    expect((await loadLora(out)).modules.size).toBe(style.modules.size);
    await fs.rm(out);
  });

  it('fuseLoras', async () => {
    const base = path.join(FIXTURES, BASE);
    const style = path.join(FIXTURES, STYLE);
    const out = path.join(tmp, 'fused.safetensors');
    const cases: [() => unknown, string][] = [
      [() => fuseLoras(base, [], [], { out }), 'ARG_MISSING'],
      [() => fuseLoras(base, [style], [1, 2], { out }), 'ARG_INVALID'],
      [() => fuseLoras(base, [42 as never], [1], { out }), 'ARG_INVALID'],
      [() => fuseLoras(base, [style], [1], { out: 42 as never }), 'ARG_INVALID'],
      [() => fuseLoras(base, [style], [1], { out, onOverflow: 'wrap' as never }), 'OPTION_INVALID'],
      [() => fuseLoras(base, [style], [1], { out, dtype: 'F8' as never }), 'OPTION_INVALID'],
      [() => fuseLoras(base, [style], [1], { out, device: 'tpu' as never }), 'OPTION_INVALID'],
    ];
    for (const [f, code] of cases) expect((await caught(f)).code, String(f)).toBe(code);
    await expect(fs.readdir(tmp)).resolves.toEqual([]);
  });
});
