/**
 * Every runnable example (examples/*.ts, found with readdir so a new one cannot be left out; examples/web is the
 * browser page and is not run here) runs with tsx as a child process, exits 0, prints the lines that say it did
 * its job, and leaves nothing behind in the repository.
 */
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = path.resolve(__dirname, '..');
const EXAMPLES = readdirSync(path.join(ROOT, 'examples'), { withFileTypes: true })
  .filter((d) => d.isFile() && d.name.endsWith('.ts'))
  .map((d) => d.name)
  .sort();

/** Lines each known example must print (any new example must at least run cleanly and print something). */
const EXPECT: Record<string, readonly RegExp[]> = {
  'merge-lcm-style.ts': [
    /^loaded fixtures\/sd15\/lcm-lora\.kohya\.safetensors: kohya sd15 \(tiny\), 278 modules, rank 8×278, LCM targets 278\/278$/m,
    /^loaded fixtures\/sd15\/style-lora\.kohya\.safetensors: kohya sd15 \(tiny\), 264 modules, rank 4×264/m,
    /^merged 1\.0 × LCM \+ 0\.8 × style: 350 modules, exact: true, rank 4–12/m,
    /^check unet\.mid_block\..*: max \|Δ − \(Δ_LCM \+ 0\.8·Δ_style\)\| = \d\.\d\de-(1[0-9]|[2-9][0-9])/m,
    /^reloaded: kohya sd15 \(tiny\), 350 modules$/m,
    /^rank-reduced to 8: exact: false, rank 4–8, mean norm kept 9\d\.\d\d%/m,
    /^done: merge-lcm-style$/m,
  ],
  'block-weights.ts': [
    /^SD1\.5 blocks \(26\):/m,
    /^style on OUT blocks only: 278 modules, exact: true, rank 8–12$/m,
    /^the three spellings give the same LoRA: true$/m,
    /^IN04 .*: max \|Δ − Δ_LCM\| = 0\.00e\+0$/m,
    /^OUT05 .*: max \|Δ − \(Δ_LCM \+ 0\.8·Δ_style\)\| = \d\.\d\de-(1[0-9]|[2-9][0-9])$/m,
    /^BASE: 72 text-encoder modules of the style LoRA, 0 kept \(72 dropped with reason 'zero-weight'\)$/m,
    /^'IN12=0' on SD1\.5: OPTION_INVALID: /m,
    /^done: block-weights$/m,
  ],
  'fuse.ts': [
    /^fused 350 module\(s\) into fixtures\/sd15\/base\.safetensors \(sd15 \(tiny\), single-file\)/m,
    /^tensors: 1006 \(350 fused, 656 copied, 0 converted\)/m,
    /^overflow: none$/m,
    /^progress reached 100%$/m,
    /^metadata 'lora_mix_fuse': 1 × lcm-lora\.kohya\.safetensors, 0\.8 × style-lora\.kohya\.safetensors$/m,
    /^verified 350 module\(s\)/m,
    /^OK: every module within tolerance/m,
    /^diffusers folder: fused 350 modules \(diffusers-folder\) → model_index\.json, text_encoder\/model\.safetensors, unet\/diffusion_pytorch_model\.safetensors$/m,
    /^diffusers folder verified: OK \(350 modules\)$/m,
    /^done: fuse$/m,
  ],
  'sampler.ts': [
    /^4 step\(s\): 999, 759, 499, 259$/m,
    /final latent mean 1\.5000/,
    /^4 +consistency /m,
    /^50 Tweedie steps \(exact\): variance 45\.6% of σ²$/m,
  ],
};

async function listing(dir: string): Promise<string[]> {
  return (await readdir(path.join(ROOT, dir), { recursive: true })).map(String).sort();
}

describe('examples/', () => {
  it('are found, and the known ones are all there', () => {
    expect(EXAMPLES).toEqual(expect.arrayContaining(Object.keys(EXPECT)));
  });

  it.concurrent.each(EXAMPLES)('npx tsx examples/%s', async (name) => {
    const before = await Promise.all([listing('examples'), listing('fixtures')]);
    const r = await run(process.execPath, ['--import', 'tsx', path.join('examples', name)], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 120_000,
      maxBuffer: 16 * 1024 * 1024,
    }).catch((e: { code?: number; stdout?: string; stderr?: string }) => {
      throw new Error(`examples/${name} failed (exit ${String(e.code)}):\n${e.stderr ?? ''}\n${e.stdout ?? ''}`);
    });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().length).toBeGreaterThan(0);
    for (const re of EXPECT[name] ?? []) expect(r.stdout, `examples/${name} should print ${re}`).toMatch(re);
    // Outputs go to the system temp folder only.
    for (const m of r.stdout.matchAll(/(?:saved|→) (\/\S+\.safetensors)/g))
      expect(m[1]!.startsWith(tmpdir())).toBe(true);
    expect(await Promise.all([listing('examples'), listing('fixtures')])).toEqual(before);
  });
});
