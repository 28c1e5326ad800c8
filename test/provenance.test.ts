/**
 * Provenance in every written file: tool, version, command, each input's name, size and SHA-256 (a base: its header
 * hash), the weights and the options; inspect prints it.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, runCli } from './cli-helpers.js';
import { PROVENANCE_METADATA_KEY, readProvenance } from '../src/core/provenance.js';
import { VERSION } from '../src/core/version.js';
import { openSafetensors } from '../src/node/files.js';

const FIXTURES = path.resolve(__dirname, '..', 'fixtures');
const STYLE = 'sd15/style-lora.kohya.safetensors';
const LCM = 'sd15/lcm-lora.kohya.safetensors';
const BASE = 'sd15/base.safetensors';
let tmp = '';

function run(argv: string[]): Promise<CliRun> {
  return runCli(argv, FIXTURES);
}

async function sha256(file: string, end?: number): Promise<string> {
  const bytes = await fs.readFile(path.join(FIXTURES, file));
  return createHash('sha256')
    .update(end === undefined ? bytes : bytes.subarray(0, end))
    .digest('hex');
}

async function provenanceOf(file: string) {
  const f = await openSafetensors(file);
  try {
    expect(f.metadata[PROVENANCE_METADATA_KEY]).toBeDefined();
    return readProvenance(f.metadata)!;
  } finally {
    await f.close();
  }
}

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'lora-mix-provenance-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('provenance', () => {
  it('merge records every LoRA with its size, SHA-256 and weight, and the options; inspect prints it', async () => {
    const out = path.join(tmp, 'merged.safetensors');
    expect((await run(['merge', `${LCM}:1`, `${STYLE}:0.8`, '-o', out, '--rank', '4', '-q'])).code).toBe(0);
    const p = await provenanceOf(out);
    expect(p).toMatchObject({ tool: 'lora-mix', version: VERSION, command: 'merge' });
    expect(p.options).toMatchObject({ format: 'kohya', rank: 4 });
    expect(p.inputs).toEqual([
      {
        role: 'lora',
        name: LCM,
        size: (await fs.stat(path.join(FIXTURES, LCM))).size,
        sha256: await sha256(LCM),
        weight: '1',
      },
      {
        role: 'lora',
        name: STYLE,
        size: (await fs.stat(path.join(FIXTURES, STYLE))).size,
        sha256: await sha256(STYLE),
        weight: '0.8',
      },
    ]);
    const shown = await run(['inspect', out, '--summary']);
    expect(shown.code).toBe(0);
    expect(shown.out).toMatch(/made by: +lora-mix \S+ merge \(format=kohya/);
    expect(shown.out).toContain(`sha256 ${await sha256(STYLE)}`);
  });

  it('convert records its input; fuse records the base by the hash of its header', async () => {
    const conv = path.join(tmp, 'converted.safetensors');
    expect((await run(['convert', STYLE, '--to', 'peft', '-o', conv])).code).toBe(0);
    const c = await provenanceOf(conv);
    expect(c.command).toBe('convert');
    expect(c.inputs).toEqual([expect.objectContaining({ role: 'lora', name: STYLE, sha256: await sha256(STYLE) })]);

    const fused = path.join(tmp, 'fused.safetensors');
    expect((await run(['fuse', '--base', BASE, `${LCM}:1`, '-o', fused, '-q'])).code).toBe(0);
    const f = await provenanceOf(fused);
    const baseBytes = await fs.readFile(path.join(FIXTURES, BASE));
    const headerEnd = 8 + Number(baseBytes.readBigUInt64LE(0));
    expect(f.command).toBe('fuse');
    expect(f.inputs[0]).toEqual({
      role: 'base',
      name: BASE,
      size: baseBytes.byteLength,
      headerSha256: await sha256(BASE, headerEnd),
    });
    expect(f.inputs[1]).toMatchObject({ role: 'lora', name: LCM, sha256: await sha256(LCM), weight: '1' });
  });

  it('resize records its input and its rule', async () => {
    const out = path.join(tmp, 'resized.safetensors');
    expect((await run(['resize', STYLE, '--sv-fro', '0.9', '--max-rank', '4', '-o', out, '-q'])).code).toBe(0);
    const r = await provenanceOf(out);
    expect(r.command).toBe('resize');
    expect(r.inputs).toEqual([expect.objectContaining({ role: 'lora', name: STYLE, sha256: await sha256(STYLE) })]);
    expect(r.options).toMatchObject({ svFro: 0.9, maxRank: 4, format: 'kohya' });
  });

  it('no written metadata records an absolute path or parent folders of an input: file names only', async () => {
    // Inputs outside the working directory, given by absolute path.
    const away = await fs.mkdtemp(path.join(tmp, 'private-folder-'));
    const copy = async (rel: string): Promise<string> => {
      const to = path.join(away, path.basename(rel));
      await fs.copyFile(path.join(FIXTURES, rel), to);
      return to;
    };
    const [base, lcm, style] = [await copy(BASE), await copy(LCM), await copy(STYLE)];
    const out = (n: string): string => path.join(tmp, n);
    const runs: [string, string[]][] = [
      ['m.safetensors', ['merge', `${lcm}:1`, `${style}:0.8`, '-o', out('m.safetensors'), '-q']],
      ['c.safetensors', ['convert', style, '--to', 'peft', '-o', out('c.safetensors')]],
      ['f.safetensors', ['fuse', '--base', base, `${lcm}:1`, '-o', out('f.safetensors'), '-q']],
      ['u.safetensors', ['unfuse', '--fused', out('f.safetensors'), `${lcm}:1`, '-o', out('u.safetensors'), '-q']],
      [
        'x.safetensors',
        ['extract', '--base', base, '--tuned', out('f.safetensors'), '--rank', '2', '-o', out('x.safetensors'), '-q'],
      ],
    ];
    // The name each output's metadata must still record.
    const named: Record<string, string> = {
      'm.safetensors': lcm,
      'c.safetensors': style,
      'f.safetensors': lcm,
      'u.safetensors': out('f.safetensors'),
      'x.safetensors': out('f.safetensors'),
    };
    for (const [name, argv] of runs) {
      const r = await run(argv);
      expect({ argv, code: r.code, err: r.err }).toMatchObject({ code: 0 });
      const f = await openSafetensors(out(name));
      try {
        const text = JSON.stringify(f.metadata);
        for (const leak of [away, tmp, FIXTURES, path.basename(away)])
          expect({ name, text }).not.toEqual({ name, text: expect.stringContaining(leak) });
        expect(text).toContain(path.basename(named[name] ?? ''));
      } finally {
        await f.close();
      }
    }
    const p = await provenanceOf(out('f.safetensors'));
    expect(p.inputs.map((i) => i.name)).toEqual([path.basename(base), path.basename(lcm)]);
  });
});
