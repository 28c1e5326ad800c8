/** `lora-mix fuse` and `lora-mix verify` through main(): summaries, JSON, exit codes, progress, usage errors. */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, runCli } from './cli-helpers.js';
import type { FuseReport } from '../src/fuse/types.js';
import type { VerifyReport } from '../src/verify/types.js';

const FIXTURES = path.resolve(import.meta.dirname, '..', 'fixtures');

function run(argv: string[], isTTY = false): Promise<CliRun> {
  return runCli(argv, FIXTURES, { isTTY });
}

let tmp = '';
beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'lora-mix-fuse-cli-'));
});
afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const LORAS = ['sd15/lcm-lora.kohya.safetensors:1.0', 'sd15/style-lora.kohya.safetensors:0.8'];

describe('lora-mix fuse / verify', () => {
  it('fuses, prints the summary with modules per group, and verify passes (exit 0)', async () => {
    const o = path.join(tmp, 'f32.safetensors');
    const r = await run(['fuse', '--base', 'sd15/base.safetensors', ...LORAS, '-o', o, '--dtype', 'f32']);
    expect(r.err).not.toMatch(/error/);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/fused 350 module\(s\)/);
    expect(r.out).toMatch(/unet\/attention 192/);
    expect(r.out).toMatch(/text_encoder\/text_encoder 72/);
    expect(r.out).toMatch(/overflow: none/);
    expect(r.out).toMatch(/kernel: wasm-simd/);
    expect(r.out).toMatch(/peak memory/);
    expect(r.err).toMatch(/fuse: \d+\/1006 tensors/); // progress lines when stderr is not a terminal
    const v = await run(['verify', '--fused', o, '--base', 'sd15/base.safetensors', ...LORAS]);
    expect(v.code).toBe(0);
    expect(v.out).toMatch(/verified 350 module\(s\)/);
    expect(v.out).toMatch(/OK: every module within tolerance/);
  });

  it('verify fails (exit 1) when the weights are not the ones that were fused, naming the modules', async () => {
    const o = path.join(tmp, 'f32.safetensors');
    const v = await run([
      'verify',
      '--fused',
      o,
      '--base',
      'sd15/base.safetensors',
      'sd15/lcm-lora.kohya.safetensors:1.0',
      'sd15/style-lora.kohya.safetensors:0.5',
      '--json',
    ]);
    expect(v.code).toBe(1);
    const report = JSON.parse(v.out) as VerifyReport;
    expect(report.ok).toBe(false);
    expect(report.failed).toBe(264); // every module of the style LoRA; the LCM-only modules still pass
    expect(report.worst!.worstRatio).toBeGreaterThan(100);
    // And with a LoRA left out entirely:
    const w = await run([
      'verify',
      '--fused',
      o,
      '--base',
      'sd15/base.safetensors',
      'sd15/lcm-lora.kohya.safetensors:1.0',
    ]);
    expect(w.code).toBe(1);
    expect(w.out).toMatch(/FAILED/);
  });

  it('--json gives the whole report; --device gpu reports the fallback; a terminal gets a redrawn bar with ETA', async () => {
    const o = path.join(tmp, 'gpu.safetensors');
    const r = await run(
      ['fuse', '--base', 'sd15/base.safetensors', ...LORAS, '-o', o, '--device', 'gpu', '--json'],
      true,
    );
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out) as FuseReport;
    expect(report.modulesFused).toBe(350);
    expect(report.fellBack).toBe(true);
    expect(report.fallbackReason).toMatch(/gpu\.js/);
    expect(r.err).toMatch(/\r.*tensors, .* ETA/);
  });

  it('usage errors and typed input errors exit non-zero with a one-line message and leave no output', async () => {
    const o = path.join(tmp, 'bad.safetensors');
    const cases: [string[], RegExp][] = [
      [['fuse', ...LORAS, '-o', o], /--base CKPT is required/],
      [['fuse', '--base', 'sd15/base.safetensors', ...LORAS], /-o OUT is required/],
      [['fuse', '--base', 'sd15/base.safetensors', '-o', o], /at least one LoRA/],
      [
        ['fuse', '--base', 'sd15/base.safetensors', ...LORAS, '-o', o, '--dtype', 'f8'],
        /--dtype expects f32, f16 or bf16/,
      ],
      [
        ['fuse', '--base', 'sd15/base.safetensors', ...LORAS, '-o', o, '--on-overflow', 'wrap'],
        /--on-overflow expects error or clamp/,
      ],
      [['fuse', '--base', 'sd15/base.safetensors', 'sd15/lcm-lora.kohya.safetensors:x', '-o', o], /must be a number/],
      [['fuse', '--base', 'sd15/unet.safetensors', ...LORAS, '-o', o], /LORA_UNMATCHED_MODULES/],
      [['fuse', '--base', 'sd15/base.safetensors', 'sdxl/lcm-lora.kohya.safetensors', '-o', o], /ARCH_MISMATCH/],
      [
        ['fuse', '--base', 'sd15/base.safetensors', ...LORAS, '-o', 'sd15/base.safetensors'],
        /OUTPUT_WOULD_OVERWRITE_INPUT/,
      ],
      [['verify', '--base', 'sd15/base.safetensors', ...LORAS], /--fused OUT is required/],
    ];
    for (const [argv, message] of cases) {
      const r = await run(argv);
      expect(r.code, argv.join(' ')).not.toBe(0);
      expect(r.err, argv.join(' ')).toMatch(message);
      expect(r.err).not.toMatch(/\n\s+at /); // no stack trace
    }
    expect((await readdir(tmp)).filter((n) => n.includes('bad'))).toEqual([]);
  });

  it('--help teaches: usage, the base forms, an example', async () => {
    const r = await run(['fuse', '--help']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/Usage: lora-mix fuse --base CKPT/);
    expect(r.out).toMatch(/diffusers folder/);
    expect(r.out).toMatch(/--on-overflow/);
    const v = await run(['verify', '--help']);
    expect(v.out).toMatch(/Exit status: 0 when every module is within tolerance/);
  });
});
