/**
 * Diffusers folders as users have them: model_index.json decides the components; a single-file checkpoint at the
 * root (as the SD1.5 repository holds) is left out of the output or fused on request, and the report says which;
 * a component stored only as pytorch_model.bin is copied byte for byte unless a LoRA changes it, which is refused.
 */
import { FX, tensorValues, useTempDir } from './fuse-helpers.js';
import { type CliRun, runCli } from './cli-helpers.js';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { fuseLoras } from '../src/fuse/index.js';
import { LoraMixError } from '../src/core/errors.js';
import { syntheticNorms } from '../src/fixtures/generate.js';
import { encodeModules } from '../src/formats/encode.js';
import { writeSafetensors } from '../src/safetensors/index.js';

const LCM = path.join(FX, 'sd15', 'lcm-lora.kohya.safetensors'); // UNet only
const STYLE = path.join(FX, 'sd15', 'style-lora.kohya.safetensors'); // UNet attention + text encoder
/** The first bytes of a protocol-2 pickle, as torch.save wrote pytorch_model.bin before zip files. */
const PICKLE = Uint8Array.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);

const temp = useTempDir('lora-mix-folders-');

/** A copy of the SD1.5 fixture folder with a root checkpoint beside the components. */
async function folderWithRoot(name: string): Promise<string> {
  const dir = path.join(temp.dir, name);
  await fs.cp(path.join(FX, 'sd15', 'diffusers'), dir, { recursive: true });
  await fs.copyFile(path.join(FX, 'sd15', 'base.safetensors'), path.join(dir, 'v1-5-pruned-emaonly.safetensors'));
  return dir;
}

const cli = (argv: string[]): Promise<CliRun> => runCli(argv, temp.dir);

describe('a root single-file checkpoint beside the components', () => {
  it('is left out of the output by default, and the summary says so', async () => {
    const base = await folderWithRoot('root-omit');
    const r = await cli(['fuse', '--base', base, LCM, '-o', path.join(temp.dir, 'root-omit-out'), '-q']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/v1-5-pruned-emaonly\.safetensors .*left out of the output/);
    const files = await fs.readdir(path.join(temp.dir, 'root-omit-out'));
    expect(files.sort()).toEqual(['model_index.json', 'text_encoder', 'unet']);
  });

  it('is fused on request, to exactly what fusing it alone gives', async () => {
    const base = await folderWithRoot('root-fuse');
    const out = path.join(temp.dir, 'root-fuse-out');
    const r = await fuseLoras(base, [LCM], [0.9], { out, rootCheckpoint: 'fuse' });
    expect(r.notes.join('\n')).toMatch(/v1-5-pruned-emaonly\.safetensors .*fused too/);
    const alone = path.join(temp.dir, 'root-alone.safetensors');
    await fuseLoras(path.join(FX, 'sd15', 'base.safetensors'), [LCM], [0.9], { out: alone });
    expect(await tensorValues(path.join(out, 'v1-5-pruned-emaonly.safetensors'))).toEqual(await tensorValues(alone));
  });

  it('a root .ckpt cannot be fused: refused on request, left out by default', async () => {
    const base = await folderWithRoot('root-ckpt');
    await fs.writeFile(path.join(base, 'v1-5-pruned.ckpt'), PICKLE);
    const e = await fuseLoras(base, [LCM], [1], {
      out: path.join(temp.dir, 'root-ckpt-out'),
      rootCheckpoint: 'fuse',
    }).then(
      () => null,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(LoraMixError);
    expect((e as LoraMixError).message).toMatch(/v1-5-pruned\.ckpt.*not safetensors/);
    await expect(fs.stat(path.join(temp.dir, 'root-ckpt-out'))).rejects.toThrow();
    const r = await fuseLoras(base, [LCM], [1], { out: path.join(temp.dir, 'root-ckpt-out2') });
    expect(r.notes.filter((n) => /left out/.test(n))).toHaveLength(2);
  });
});

describe('a component stored only as pytorch_model.bin', () => {
  async function binTextEncoder(name: string): Promise<string> {
    const dir = path.join(temp.dir, name);
    await fs.cp(path.join(FX, 'sd15', 'diffusers'), dir, { recursive: true });
    await fs.rm(path.join(dir, 'text_encoder', 'model.safetensors'));
    await fs.writeFile(path.join(dir, 'text_encoder', 'pytorch_model.bin'), PICKLE);
    return dir;
  }

  it('is copied byte for byte when the LoRAs do not change it', async () => {
    const base = await binTextEncoder('bin-te');
    const out = path.join(temp.dir, 'bin-te-out');
    const r = await fuseLoras(base, [LCM], [1], { out });
    expect(r.modulesFused).toBeGreaterThan(0);
    expect(r.notes.join('\n')).toMatch(/text_encoder\/ holds no safetensors/);
    expect(new Uint8Array(await fs.readFile(path.join(out, 'text_encoder', 'pytorch_model.bin')))).toEqual(PICKLE);
  });

  it('is a clear error, with nothing written, when a LoRA changes it', async () => {
    const base = await binTextEncoder('bin-te-touched');
    const out = path.join(temp.dir, 'bin-te-touched-out');
    const e = await fuseLoras(base, [STYLE], [1], { out }).then(
      () => null,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(LoraMixError);
    expect((e as LoraMixError).code).toBe('FORMAT_UNKNOWN');
    expect((e as LoraMixError).message).toMatch(/changes text_encoder .*pytorch_model\.bin.*convert/);
    await expect(fs.stat(out)).rejects.toThrow();
  });

  it('a norm-layer difference aimed at it is the same FORMAT_UNKNOWN, naming the norm, nothing written', async () => {
    const base = await binTextEncoder('bin-te-norm');
    const norms = syntheticNorms('sd15', 'tiny', 40, 5).filter((n) => n.entry.component === 'text_encoder');
    expect(norms.length).toBeGreaterThan(0);
    const enc = encodeModules([], { format: 'comfyui', dtype: 'F32' }, {}, undefined, norms);
    const lora = path.join(temp.dir, 'te-norm-only.safetensors');
    await writeSafetensors(lora, enc.tensors, { metadata: enc.metadata });
    const out = path.join(temp.dir, 'bin-te-norm-out');
    const e = await fuseLoras(base, [lora], [1], { out }).then(
      () => null,
      (x: unknown) => x,
    );
    expect((e as LoraMixError).code).toBe('FORMAT_UNKNOWN');
    expect((e as LoraMixError).message).toContain(norms[0]!.entry.path);
    expect((e as LoraMixError).message).toMatch(/pytorch_model\.bin.*convert/);
    await expect(fs.stat(out)).rejects.toThrow();
  });
});

describe('model_index.json decides the layout', () => {
  it('a folder whose model_index.json names another pipeline than its unet is an ARCH_MISMATCH', async () => {
    const dir = path.join(temp.dir, 'wrong-index');
    await fs.cp(path.join(FX, 'sd15', 'diffusers'), dir, { recursive: true });
    const index = JSON.parse(await fs.readFile(path.join(dir, 'model_index.json'), 'utf8'));
    await fs.writeFile(
      path.join(dir, 'model_index.json'),
      JSON.stringify({ ...index, _class_name: 'StableDiffusionXLPipeline' }),
    );
    const e = await fuseLoras(dir, [LCM], [1], { out: path.join(temp.dir, 'wrong-index-out') }).then(
      () => null,
      (x: unknown) => x,
    );
    expect((e as LoraMixError).code).toBe('ARCH_MISMATCH');
  });

  it('a component folder model_index.json does not list is not read (it is copied)', async () => {
    const dir = path.join(temp.dir, 'unlisted');
    await fs.cp(path.join(FX, 'sd15', 'diffusers'), dir, { recursive: true });
    const index = JSON.parse(await fs.readFile(path.join(dir, 'model_index.json'), 'utf8'));
    delete index.text_encoder;
    await fs.writeFile(path.join(dir, 'model_index.json'), JSON.stringify(index));
    const out = path.join(temp.dir, 'unlisted-out');
    const r = await fuseLoras(dir, [LCM], [1], { out });
    expect(r.modulesFused).toBeGreaterThan(0);
    expect(await fs.readFile(path.join(out, 'text_encoder', 'model.safetensors'))).toEqual(
      await fs.readFile(path.join(dir, 'text_encoder', 'model.safetensors')),
    );
  });
});
