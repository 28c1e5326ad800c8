/**
 * Runtime stacks (src/formats/stack.ts, src/cli/stack-args.ts): A1111 prompt syntax and ComfyUI workflows (UI and
 * API formats) read into per-component weights; a prompt / workflow merge is byte-identical to the equivalent
 * explicit merge; bad stacks are typed errors with nothing written.
 */
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, runCli } from './cli-helpers.js';
import { FormatError } from '../src/core/errors.js';
import { parseComfyWorkflow, parsePromptStack } from '../src/formats/stack.js';
import { lbwBlocks } from '../src/lora/lbw.js';

const FIXTURES = path.resolve(__dirname, '..', 'fixtures');
let tmp = '';
let loras = '';

function run(argv: string[]): Promise<CliRun> {
  return runCli(argv, tmp);
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'lora-mix-stack-'));
  loras = path.join(tmp, 'loras');
  await mkdir(path.join(loras, 'styles'), { recursive: true });
  await copyFile(path.join(FIXTURES, 'sd15', 'lcm-lora.kohya.safetensors'), path.join(loras, 'lcm.safetensors'));
  await copyFile(
    path.join(FIXTURES, 'sd15', 'style-lora.kohya.safetensors'),
    path.join(loras, 'styles', 'style.safetensors'),
  );
});
afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const uiWorkflow = (mode = 0) => ({
  last_node_id: 5,
  last_link_id: 4,
  nodes: [
    { id: 4, type: 'CheckpointLoaderSimple', mode: 0, inputs: [], outputs: [], widgets_values: ['sd15.safetensors'] },
    {
      id: 10,
      type: 'LoraLoader',
      mode: 0,
      inputs: [
        { name: 'model', type: 'MODEL', link: 1 },
        { name: 'clip', type: 'CLIP', link: 2 },
      ],
      widgets_values: ['lcm.safetensors', 1, 1],
    },
    {
      id: 11,
      type: 'LoraLoader',
      mode,
      inputs: [
        { name: 'model', type: 'MODEL', link: 3 },
        { name: 'clip', type: 'CLIP', link: 4 },
      ],
      widgets_values: ['styles\\style.safetensors', 0.5, 0.8],
    },
  ],
  links: [
    [1, 4, 0, 10, 0, 'MODEL'],
    [2, 4, 1, 10, 1, 'CLIP'],
    [3, 10, 0, 11, 0, 'MODEL'],
    [4, 10, 1, 11, 1, 'CLIP'],
  ],
  version: 0.4,
});

describe('parsing', () => {
  it('A1111: positional te, unet (defaults to te), dyn; named te= unet= lbw=; several tags', () => {
    const e = parsePromptStack(
      'a cat, <lora:lcm:1> <lora:style:0.8:0.5>, <lora:x> <lora:y:te=0.2> <lora:z:0.5:unet=1.5:lbw=ALL> <lora:d:1:1:8>',
    );
    expect(e.map((x) => [x.name, x.te, x.unet])).toEqual([
      ['lcm', 1, 1],
      ['style', 0.8, 0.5],
      ['x', 1, 1],
      ['y', 0.2, 0.2],
      ['z', 0.5, 1.5],
      ['d', 1, 1],
    ]);
    expect(e[4]!.lbw).toBe('ALL');
    expect(e[5]!.dyn).toBe(8);
    expect(e[5]!.warnings.join()).toMatch(/dyn/);
    expect(() => parsePromptStack('no tags here')).toThrow(FormatError);
    expect(() => parsePromptStack('<lora:a:abc>')).toThrow(FormatError);
  });

  it('ComfyUI: UI and API formats, chain order, ModelOnly has no clip strength, muted/bypassed loaders skipped', () => {
    const ui = parseComfyWorkflow(uiWorkflow());
    expect(ui.entries.map((x) => [x.name, x.unet, x.te])).toEqual([
      ['lcm.safetensors', 1, 1],
      ['styles/style.safetensors', 0.5, 0.8],
    ]);
    const bypassed = parseComfyWorkflow(uiWorkflow(4));
    expect(bypassed.entries).toHaveLength(1);
    expect(bypassed.warnings.join()).toMatch(/bypassed/);
    const api = parseComfyWorkflow({
      '4': { class_type: 'CheckpointLoaderSimple', inputs: {} },
      '12': {
        class_type: 'LoraLoaderModelOnly',
        inputs: { model: ['10', 0], lora_name: 'b.safetensors', strength_model: 0.7 },
      },
      '10': {
        class_type: 'LoraLoader',
        inputs: { model: ['4', 0], clip: ['4', 1], lora_name: 'a.safetensors', strength_model: 1, strength_clip: 0.3 },
      },
    });
    expect(api.entries.map((x) => [x.name, x.unet, x.te])).toEqual([
      ['a.safetensors', 1, 0.3],
      ['b.safetensors', 0.7, 0],
    ]);
    expect(() => parseComfyWorkflow({ '1': { class_type: 'KSampler', inputs: {} } })).toThrow(/no active LoraLoader/);
  });

  it('lbw: a short list expands with 0 for the blocks it leaves out; presets ALL / NONE', () => {
    const b = lbwBlocks('1,0,0,0,0,0,0,0,0,0,0,1', 'sdxl');
    expect(b.BASE).toBe(1);
    expect(b.OUT05).toBe(1);
    expect(b.IN04).toBe(0);
    expect(b.IN01).toBe(0); // not in the 12-value order: 0, as the extension does
    expect(() => lbwBlocks('1,2,3', 'sd15')).toThrow(/lbw/);
  });

  // The extension's BLOCKID17 and its to26 expansion, written out independently of src/lora/blocks.ts.
  const BLOCKID17 = 'BASE IN01 IN02 IN04 IN05 IN07 IN08 M00 OUT03 OUT04 OUT05 OUT06 OUT07 OUT08 OUT09 OUT10 OUT11';
  const DEFAULTS: Record<string, string> = {
    NONE: '0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0',
    ALL: '1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1',
    INS: '1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0',
    IND: '1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0',
    INALL: '1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0',
    MIDD: '1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0',
    OUTD: '1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0',
    OUTS: '1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1',
    OUTALL: '1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1',
    'ALL0.5': '0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5',
  };
  for (const arch of ['sd15', 'sdxl'] as const) {
    it(`lbw presets on ${arch}: every default preset of the extension, expanded as its to26 does`, () => {
      for (const [name, values] of Object.entries(DEFAULTS)) {
        const ids = BLOCKID17.split(' ');
        const v = values.split(',').map(Number);
        const got = lbwBlocks(name, arch);
        for (const [id, ratio] of Object.entries(got)) {
          const i = ids.indexOf(id);
          expect(ratio, `${name} ${id}`).toBe(i >= 0 ? v[i] : 0);
        }
        // A preset is exactly its list.
        expect(lbwBlocks(values, arch)).toEqual(got);
      }
      const sdxl = arch === 'sdxl';
      expect(Object.keys(lbwBlocks('ALL', arch)).includes('OUT11')).toBe(!sdxl);
      expect(lbwBlocks('OUTALL', arch).OUT08).toBe(1);
      expect(lbwBlocks('OUTALL', arch).OUT02 ?? 0).toBe(0);
    });
  }

  it('lbw: unknown preset names are a typed error naming the known ones (names are case-sensitive)', () => {
    for (const bad of ['STYLE', 'all', 'FLUXALL', 'ALL,']) {
      let err: unknown;
      try {
        lbwBlocks(bad, 'sdxl');
      } catch (e) {
        err = e;
      }
      expect(err, bad).toMatchObject({ code: 'OPTION_INVALID' });
      expect(String((err as Error).message), bad).toMatch(
        /NONE, ALL, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0\.5/,
      );
    }
    expect(() => lbwBlocks('all', 'sd15')).toThrow(/case-sensitive: ALL/);
  });
});

describe('merge from a stack', () => {
  it('a prompt and the equivalent explicit merge give byte-identical files', async () => {
    const a = path.join(tmp, 'prompt.safetensors'),
      b = path.join(tmp, 'explicit.safetensors');
    const r = await run([
      'merge',
      '--prompt',
      '<lora:lcm:1> <lora:style:0.8:0.5:dyn=4>',
      '--lora-dir',
      'loras',
      '-o',
      a,
    ]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/read from prompt: 2 LoRA/);
    expect(r.err).toMatch(/dyn/);
    const e = await run([
      'merge',
      'loras/lcm.safetensors:1',
      'loras/styles/style.safetensors:unet=0.5,te=0.8',
      '-o',
      b,
    ]);
    expect(e.code, e.err).toBe(0);
    expect(Buffer.compare(await readFile(a), await readFile(b))).toBe(0);
  });

  it('a ComfyUI workflow gives the same file as the equivalent explicit merge', async () => {
    const wf = path.join(tmp, 'wf.json');
    await writeFile(wf, JSON.stringify(uiWorkflow()));
    const a = path.join(tmp, 'wf.safetensors');
    const r = await run(['merge', '--comfy-workflow', 'wf.json', '--lora-dir', 'loras', '-o', a]);
    expect(r.code, r.err).toBe(0);
    expect(Buffer.compare(await readFile(a), await readFile(path.join(tmp, 'explicit.safetensors')))).toBe(0);
  });

  it('a LoRA missing from --lora-dir, a workflow without loaders: typed errors, nothing written', async () => {
    const o = path.join(tmp, 'never.safetensors');
    const r = await run(['merge', '--prompt', '<lora:lcm:1> <lora:nope:1>', '--lora-dir', 'loras', '-o', o]);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/nope/);
    const wf = path.join(tmp, 'empty.json');
    await writeFile(wf, JSON.stringify({ '1': { class_type: 'KSampler', inputs: {} } }));
    const w = await run([
      'fuse',
      '--base',
      path.join(FIXTURES, 'sd15', 'base.safetensors'),
      '--comfy-workflow',
      'empty.json',
      '--lora-dir',
      'loras',
      '-o',
      o,
    ]);
    expect(w.code).not.toBe(0);
    expect(w.err).toMatch(/LoraLoader/);
    expect((await readdir(tmp)).filter((n) => n.includes('never'))).toEqual([]);
  });
});
