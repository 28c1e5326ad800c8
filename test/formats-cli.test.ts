import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, runCli } from './cli-helpers.js';
import { PROVENANCE_METADATA_KEY } from '../src/core/provenance.js';
import { loadLora } from '../src/formats/index.js';
import { MERGE_METADATA_KEY, VERSION_METADATA_KEY } from '../src/lora/index.js';
import { FIXTURES } from './formats-helpers.js';

function run(argv: string[], cwd = FIXTURES): Promise<CliRun> {
  return runCli(argv, cwd);
}

/**
 * Two safetensors files hold the same header (but for the provenance entry the CLI adds, which names the inputs, and
 * the conversion's record, lora_mix_version / lora_mix_merge) and byte-identical tensor data.
 */
function sameExceptProvenance(a: Buffer, b: Buffer): boolean {
  const split = (x: Buffer) => {
    const n = 8 + Number(x.readBigUInt64LE(0));
    const header = JSON.parse(x.subarray(8, n).toString('utf8')) as { __metadata__?: Record<string, string> };
    for (const k of [PROVENANCE_METADATA_KEY, MERGE_METADATA_KEY, VERSION_METADATA_KEY])
      delete header.__metadata__?.[k];
    return { header, data: x.subarray(n) };
  };
  const x = split(a);
  const y = split(b);
  return JSON.stringify(x.header) === JSON.stringify(y.header) && x.data.equals(y.data);
}

describe('lora-mix convert', () => {
  let tmp = '';
  beforeAll(async () => {
    tmp = await mkdtemp(path.join(tmpdir(), 'lora-mix-convert-'));
  });
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('kohya (SGM paths) → PEFT gives the committed PEFT file, and back gives the committed kohya file', async () => {
    const out = path.join(tmp, 'style.peft.safetensors');
    const r = await run(['convert', 'sdxl/style-lora.kohya-sgm.safetensors', '-o', out, '--to', 'peft']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('kohya (sgm paths) F16 → peft F16');
    // the conversion's record, under the keys a merge writes its own
    const meta = (await loadLora(out)).metadata;
    expect(JSON.parse(meta[MERGE_METADATA_KEY]!)).toEqual({ convert: { exact: true } });
    expect(meta[VERSION_METADATA_KEY]).toBeDefined();
    expect(
      sameExceptProvenance(
        await readFile(out),
        await readFile(path.join(FIXTURES, 'sdxl/style-lora.peft.safetensors')),
      ),
    ).toBe(true);
    const back = path.join(tmp, 'style.kohya.safetensors');
    const r2 = await run(['convert', out, '-o', back, '--to', 'kohya', '--kohya-paths', 'sgm']);
    expect(r2.code, r2.err).toBe(0);
    expect(
      sameExceptProvenance(
        await readFile(back),
        await readFile(path.join(FIXTURES, 'sdxl/style-lora.kohya-sgm.safetensors')),
      ),
    ).toBe(true);
  });

  it('--dtype, --arch with --allow-unmatched and --json', async () => {
    const out = path.join(tmp, 'lcm-ssd1b.safetensors');
    const r = await run([
      'convert',
      'sdxl/lcm-lora.kohya.safetensors',
      '-o',
      out,
      '--to',
      'kohya',
      '--arch',
      'ssd1b',
      '--allow-unmatched',
      '--dtype',
      'fp32',
      '--json',
    ]);
    expect(r.code, r.err).toBe(0);
    const report = JSON.parse(r.out);
    expect(report).toMatchObject({
      arch: 'ssd1b',
      modules: 423,
      to: { format: 'kohya', kohyaPaths: 'diffusers', dtype: 'F32' },
    });
    expect(report.unmatched).toHaveLength(365);
    const l = await loadLora(out);
    expect([l.arch, l.dtype, l.modules.size]).toEqual(['ssd1b', 'F32', 423]);
  });

  it('refuses to overwrite its input and leaves it untouched', async () => {
    const input = path.join(FIXTURES, 'sd15/style-lora.kohya.safetensors');
    const before = await readFile(input);
    const r = await run(['convert', input, '-o', 'sd15/../sd15/style-lora.kohya.safetensors', '--to', 'peft']);
    expect(r.code).toBe(3);
    expect(r.err).toContain('OUTPUT_WOULD_OVERWRITE_INPUT');
    expect((await readFile(input)).equals(before)).toBe(true);
  });

  it('usage errors exit 2; input errors exit 1 with the code', async () => {
    expect((await run(['convert', 'sd15/style-lora.kohya.safetensors', '--to', 'peft'])).code).toBe(2);
    expect(
      (await run(['convert', 'sd15/style-lora.kohya.safetensors', '-o', path.join(tmp, 'x.safetensors')])).code,
    ).toBe(2);
    expect(
      (
        await run([
          'convert',
          'sd15/style-lora.kohya.safetensors',
          '-o',
          path.join(tmp, 'x.safetensors'),
          '--to',
          'loha',
        ])
      ).code,
    ).toBe(2);
    expect(
      (
        await run([
          'convert',
          'sd15/style-lora.kohya.safetensors',
          '-o',
          path.join(tmp, 'x.safetensors'),
          '--to',
          'peft',
          '--kohya-paths',
          'sgm',
        ])
      ).code,
    ).toBe(2);
    expect(
      (
        await run([
          'convert',
          'sd15/style-lora.kohya.safetensors',
          '-o',
          path.join(tmp, 'x.safetensors'),
          '--to',
          'peft',
          '--dtype',
          'int8',
        ])
      ).code,
    ).toBe(2);
    const bad = await run(['convert', 'bad/oft.safetensors', '-o', path.join(tmp, 'x.safetensors'), '--to', 'peft']);
    expect(bad.code).toBe(1);
    expect(bad.err).toContain('FORMAT_UNSUPPORTED_ADAPTER');
    await expect(stat(path.join(tmp, 'x.safetensors'))).rejects.toThrow();
    const mismatch = await run([
      'convert',
      'sdxl/lcm-lora.kohya.safetensors',
      '-o',
      path.join(tmp, 'x.safetensors'),
      '--to',
      'peft',
      '--arch',
      'sd15',
    ]);
    expect(mismatch.code).toBe(1);
    expect(mismatch.err).toContain('ARCH_MISMATCH');
  });
});

describe('lora-mix inspect (LoRA-aware)', () => {
  it('describes a LoRA: format, arch, groups, ranks, alphas', async () => {
    const r = await run(['inspect', 'sd15/lcm-lora.kohya.safetensors', '--summary']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/kind:\s+LoRA/);
    expect(r.out).toMatch(/format:\s+kohya \(UNet names: diffusers paths\)/);
    expect(r.out).toMatch(/arch:\s+SD1\.5/);
    expect(r.out).toMatch(/ranks:\s+8×278/);
    expect(r.out).toMatch(/LCM targets: 278 of 278/);
    expect(r.out).toContain('file        sd15/lcm-lora.kohya.safetensors');
  });

  it('--json carries the kind and the summary beside the raw header', async () => {
    const r = await run(['inspect', 'sdxl/style-lora.peft.safetensors', '--json', '--summary']);
    const j = JSON.parse(r.out);
    expect(j.kind).toBe('lora');
    expect(j.lora).toMatchObject({ format: 'peft', arch: 'sdxl', modules: 986 });
    expect(j.totals.tensors).toBe(1972);
  });

  it('describes base checkpoints and refused adapters; a broken LoRA exits 1 with its error', async () => {
    const cp = await run(['inspect', 'ssd1b/base.safetensors', '--summary']);
    expect(cp.out).toMatch(/kind:\s+base checkpoint/);
    expect(cp.out).toMatch(/arch:\s+SSD-1B/);
    expect(cp.out).toMatch(/naming:\s+single-file/);
    const folder = await run([
      'inspect',
      'sd15/diffusers/unet/diffusion_pytorch_model.safetensors',
      '--json',
      '--summary',
    ]);
    expect(JSON.parse(folder.out).checkpoint).toMatchObject({ arch: 'sd15', naming: 'diffusers-unet' });
    const oft = await run(['inspect', 'bad/oft.safetensors']);
    expect(oft.code).toBe(0);
    expect(oft.out).toMatch(/OFT\/BOFT adapter/);
    const broken = await run(['inspect', 'bad/rank-mismatch.safetensors']);
    expect(broken.code).toBe(1);
    expect(broken.out).toContain('LORA_RANK_MISMATCH');
  });

  it('a LoraError raised while a file is decoded is about the input: exit 1 in every command, code kept', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lora-mix-decode-exit-'));
    try {
      for (const [file, code] of [
        ['bad/rank-mismatch.safetensors', 'LORA_RANK_MISMATCH'],
        ['bad/lokr-shapes.safetensors', 'LORA_SHAPE_MISMATCH'],
      ] as const) {
        for (const argv of [
          ['merge', file, '-o', path.join(dir, 'm.safetensors')],
          ['convert', file, '--to', 'peft', '-o', path.join(dir, 'c.safetensors')],
          ['fuse', '--base', 'sd15/base.safetensors', file, '-o', path.join(dir, 'f.safetensors')],
        ]) {
          const r = await run(argv);
          expect({ argv, code: r.code }).toEqual({ argv, code: 1 });
          expect(r.err).toContain(code);
        }
        const e = await loadLora(path.join(FIXTURES, file)).catch((x: unknown) => x);
        expect(e).toMatchObject({ code, details: expect.objectContaining({ input: true }) });
      }
      // Nothing was written.
      for (const f of ['m.safetensors', 'c.safetensors', 'f.safetensors'])
        await expect(stat(path.join(dir, f))).rejects.toThrow();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
