import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { ArchError, FormatError, LoraError, SafetensorsError } from '../src/core/errors.js';
import { detectFileKind, loadLora } from '../src/formats/index.js';
import { getLayout } from '../src/layout/index.js';
import { caught, decodeBytes, fixture, makeFile, open } from './formats-helpers.js';

const sd15 = getLayout('sd15', 'tiny');
const toQ = sd15.byPath.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q')!;
const [OUT, IN] = toQ.shape as [number, number];
const NAME = toQ.kohyaNames[0]!;
const lora = (name = NAME, r = 2) => [
  { name: `${name}.lora_down.weight`, shape: [r, IN] },
  { name: `${name}.lora_up.weight`, shape: [OUT, r] },
];

describe('adapter kinds lora-mix refuses: FORMAT_UNSUPPORTED_ADAPTER naming the type and a key', () => {
  const cases: [string, string[], RegExp][] = [
    ['(IA)³', ['weight', 'on_input'], /\(IA\)³/],
    ['set_weight', ['set_weight'], /set_weight/],
    ['PEFT OFT', ['oft_r'], /PEFT OFT\/BOFT/],
  ];
  for (const [label, suffixes, type] of cases) {
    it(label, async () => {
      const bytes = makeFile(suffixes.map((s) => ({ name: `${NAME}.${s}`, shape: [2, 2] })));
      const e = await caught(() => decodeBytes(bytes, {}, 'adapter.safetensors'));
      expect(e).toBeInstanceOf(FormatError);
      expect(e.code).toBe('FORMAT_UNSUPPORTED_ADAPTER');
      expect(e.message).toMatch(type);
      expect(e.message).toContain('adapter.safetensors');
      expect(e.message).toContain(NAME);
    });
  }
});

describe('adapter kinds with a missing half, wrong shapes or two kinds in one module', () => {
  const cases: [string, { name: string; shape: number[] }[], string, RegExp][] = [
    [
      'LoHa without hada_w1_b',
      [
        { name: `${NAME}.hada_w1_a`, shape: [OUT, 2] },
        { name: `${NAME}.hada_w2_a`, shape: [OUT, 2] },
        { name: `${NAME}.hada_w2_b`, shape: [2, IN] },
      ],
      'FORMAT_INCOMPLETE_MODULE',
      /without hada_w1_b/,
    ],
    [
      'LoKr with lokr_w2_a but no lokr_w2_b',
      [
        { name: `${NAME}.lokr_w1`, shape: [4, 4] },
        { name: `${NAME}.lokr_w2_a`, shape: [OUT / 4, 2] },
      ],
      'FORMAT_INCOMPLETE_MODULE',
      /lokr_w2_a without lokr_w2_b/,
    ],
    [
      'GLoRA without b2',
      [
        { name: `${NAME}.a1.weight`, shape: [IN, 2] },
        { name: `${NAME}.a2.weight`, shape: [2, IN] },
        { name: `${NAME}.b1.weight`, shape: [OUT, 2] },
      ],
      'FORMAT_INCOMPLETE_MODULE',
      /without b2\.weight/,
    ],
    [
      'a Tucker LoCon core without its factors',
      [{ name: `${NAME}.lora_mid.weight`, shape: [2, 2, 3, 3] }],
      'FORMAT_INCOMPLETE_MODULE',
      /lora_down/,
    ],
    [
      'LoRA and LoKr tensors in one module',
      [...lora(), { name: `${NAME}.lokr_w1`, shape: [4, 4] }],
      'FORMAT_MIXED',
      /LoRA and LoKr/,
    ],
    [
      'LoHa pairs of different widths',
      [
        { name: `${NAME}.hada_w1_a`, shape: [OUT, 2] },
        { name: `${NAME}.hada_w1_b`, shape: [2, IN] },
        { name: `${NAME}.hada_w2_a`, shape: [OUT, 2] },
        { name: `${NAME}.hada_w2_b`, shape: [2, IN + 1] },
      ],
      'LORA_SHAPE_MISMATCH',
      /do not fit together/,
    ],
    [
      'a DoRA magnitude of the wrong length',
      [...lora(), { name: `${NAME}.dora_scale`, shape: [OUT + 1, 1] }],
      'LORA_SHAPE_MISMATCH',
      /DoRA magnitude/,
    ],
    [
      'OFT blocks that are not square',
      [{ name: `${NAME}.oft_blocks`, shape: [OUT / 4, 4, 3] }],
      'LORA_SHAPE_MISMATCH',
      /expected \[n, b, b\]/,
    ],
    [
      'OFT blocks that rotate another number of rows than the weight has',
      [{ name: `${NAME}.oft_blocks`, shape: [OUT / 4 + 1, 4, 4] }],
      'LORA_SHAPE_MISMATCH',
      /rotated rows/,
    ],
    [
      'BOFT stages whose butterfly groups do not divide the rows',
      [{ name: `${NAME}.oft_blocks`, shape: [12, OUT / 2, 2, 2] }],
      'LORA_SHAPE_MISMATCH',
      /stage \d+ pairs rows in groups of/,
    ],
    [
      'an OFT rescale of the wrong length',
      [
        { name: `${NAME}.oft_blocks`, shape: [OUT / 4, 4, 4] },
        { name: `${NAME}.rescale`, shape: [OUT + 1, 1] },
      ],
      'LORA_SHAPE_MISMATCH',
      /rescale/,
    ],
    [
      'an OFT rescale without its blocks',
      [{ name: `${NAME}.rescale`, shape: [OUT, 1] }],
      'FORMAT_INCOMPLETE_MODULE',
      /without oft_blocks/,
    ],
    [
      'LoRA and OFT tensors in one module',
      [...lora(), { name: `${NAME}.oft_blocks`, shape: [OUT / 4, 4, 4] }],
      'FORMAT_MIXED',
      /LoRA and OFT\/BOFT/,
    ],
    [
      'an OFT with a DoRA magnitude',
      [
        { name: `${NAME}.oft_blocks`, shape: [OUT / 4, 4, 4] },
        { name: `${NAME}.dora_scale`, shape: [OUT, 1] },
      ],
      'FORMAT_UNSUPPORTED_ADAPTER',
      /DoRA/,
    ],
  ];
  for (const [label, tensors, code, message] of cases) {
    it(label, async () => {
      const e = await caught(() => decodeBytes(makeFile(tensors), {}, 'adapter.safetensors'));
      expect(e.code).toBe(code);
      expect(e.message).toMatch(message);
      expect(e.message).toContain('adapter.safetensors');
      expect(e.message).toContain(NAME);
    });
  }

  it('the committed bad fixtures', async () => {
    for (const [file, code, type] of [
      ['bad/loha-missing-half.safetensors', 'FORMAT_INCOMPLETE_MODULE', /hada_w1_b/],
      ['bad/lokr-shapes.safetensors', 'LORA_SHAPE_MISMATCH', /attn1_to_q/],
      ['bad/mixed-kinds.safetensors', 'FORMAT_MIXED', /LoRA and LoHa/],
      ['bad/oft.safetensors', 'FORMAT_UNSUPPORTED_ADAPTER', /OFT/],
    ] as const) {
      const e = await caught(() => loadLora(fixture(file)));
      expect(e.code, file).toBe(code);
      expect(e.message).toMatch(type);
    }
  });
});

describe('not a LoRA', () => {
  it('a base checkpoint (single file or diffusers component) is FORMAT_NOT_A_LORA', async () => {
    for (const file of [
      'sd15/base.safetensors',
      'sd15/unet.safetensors',
      'sdxl/diffusers/unet/diffusion_pytorch_model.safetensors',
      'sdxl/diffusers/text_encoder_2/model.safetensors',
    ]) {
      const e = await caught(() => loadLora(fixture(file)));
      expect(e.code, file).toBe('FORMAT_NOT_A_LORA');
      expect(e.message).toMatch(/base checkpoint/);
      expect(e.message).toContain(file);
    }
  });

  it('an unrelated or empty file is FORMAT_NOT_A_LORA naming its first keys', async () => {
    const e = await caught(() =>
      decodeBytes(
        makeFile([
          { name: 'foo.bar', shape: [2] },
          { name: 'baz', shape: [1] },
        ]),
      ),
    );
    expect(e.code).toBe('FORMAT_NOT_A_LORA');
    expect(e.message).toContain('foo.bar');
    expect((await caught(() => decodeBytes(makeFile([])))).code).toBe('FORMAT_NOT_A_LORA');
  });

  it('detectFileKind tells LoRAs, checkpoints, refused adapters and other files apart', async () => {
    const of = async (rel: string) => detectFileKind(await open(new Uint8Array(await readFile(fixture(rel))), rel));
    expect((await of('sd15/style-lora.kohya.safetensors')).kind).toBe('lora');
    const cp = await of('sdxl/base.safetensors');
    expect(cp.kind).toBe('checkpoint');
    if (cp.kind === 'checkpoint')
      expect([cp.detection.arch, cp.detection.size, cp.detection.naming]).toEqual(['sdxl', 'tiny', 'single-file']);
    expect((await of('bad/oft.safetensors')).kind).toBe('unsupported-adapter');
    expect((await detectFileKind(await open(makeFile([{ name: 'foo', shape: [1] }])))).kind).toBe('other');
  });
});

describe('key and module errors', () => {
  it('keys that are no LoRA factor in any spelling: FORMAT_KEY_UNRESOLVED listing them (first 10 + count)', async () => {
    const extra = Array.from({ length: 12 }, (_, i) => ({
      name: `extra_state.tok${i}.param`,
      shape: [1, 4],
    }));
    const e = await caught(() => decodeBytes(makeFile([...lora(), ...extra])));
    expect(e).toBeInstanceOf(FormatError);
    expect(e.code).toBe('FORMAT_KEY_UNRESOLVED');
    expect(e.message).toContain('extra_state.tok0.param');
    expect(e.message).toContain('(+2 more)');
    expect(e.details).toMatchObject({ count: 12 });
    const ok = await decodeBytes(makeFile([...lora(), ...extra]), { allowUnmatched: true });
    expect(ok.modules.size).toBe(1);
    expect(ok.unmatched).toHaveLength(12);
  });

  it('module names no layout knows: FORMAT_KEY_UNRESOLVED', async () => {
    const e = await caught(() =>
      decodeBytes(
        makeFile([...lora(), ...lora('lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_qq')]),
      ),
    );
    expect(e.code).toBe('FORMAT_KEY_UNRESOLVED');
    expect(e.message).toContain('to_qq');
    const ok = await decodeBytes(makeFile([...lora(), ...lora('lora_unet_nowhere_to_q')]), { allowUnmatched: true });
    expect(ok.unmatched).toEqual([{ key: 'lora_unet_nowhere_to_q', reason: expect.stringContaining('no module') }]);
  });

  it('down without up, up without down, alpha alone: FORMAT_INCOMPLETE_MODULE', async () => {
    const [down, up] = lora();
    const k = sd15.byPath.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k')!.kohyaNames[0]!;
    for (const tensors of [[down!], [up!], [down!, up!, { name: `${k}.alpha`, shape: [] }]]) {
      const e = await caught(() => decodeBytes(makeFile(tensors)));
      expect(e.code).toBe('FORMAT_INCOMPLETE_MODULE');
    }
    const e = await caught(() => loadLora(fixture('bad/incomplete.safetensors')));
    expect(e.code).toBe('FORMAT_INCOMPLETE_MODULE');
    expect(e.message).toMatch(/down without up/);
  });

  it('ranks of down and up disagree: LORA_RANK_MISMATCH', async () => {
    const e = await caught(() =>
      decodeBytes(
        makeFile([
          { name: `${NAME}.lora_down.weight`, shape: [4, IN] },
          { name: `${NAME}.lora_up.weight`, shape: [OUT, 3] },
        ]),
      ),
    );
    expect(e).toBeInstanceOf(LoraError);
    expect(e.code).toBe('LORA_RANK_MISMATCH');
    expect(e.message).toMatch(/rank 4.*rank 3/);
    expect((await caught(() => loadLora(fixture('bad/rank-mismatch.safetensors')))).code).toBe('LORA_RANK_MISMATCH');
  });

  it('a module of rank 0 (both factors empty): LORA_RANK_MISMATCH saying so, not "rank 0 but rank 0"', async () => {
    const e = await caught(() =>
      decodeBytes(
        makeFile([
          { name: `${NAME}.lora_down.weight`, shape: [0, IN] },
          { name: `${NAME}.lora_up.weight`, shape: [OUT, 0] },
        ]),
      ),
    );
    expect(e.code).toBe('LORA_RANK_MISMATCH');
    expect(e.message).toMatch(/has rank 0 .*hold no values.*remove its keys/);
    expect(e.message).not.toMatch(/but the up factor/);
    // One empty side only is still a disagreement of ranks.
    const half = await caught(() =>
      decodeBytes(
        makeFile([
          { name: `${NAME}.lora_down.weight`, shape: [0, IN] },
          { name: `${NAME}.lora_up.weight`, shape: [OUT, 2] },
        ]),
      ),
    );
    expect(half.code).toBe('LORA_RANK_MISMATCH');
    expect(half.message).toMatch(/rank 0 .*but the up factor has rank 2/);
  });

  it('factors that fit no layout module: LORA_SHAPE_MISMATCH with expected vs found', async () => {
    const e = await caught(() =>
      decodeBytes(
        makeFile([
          { name: `${NAME}.lora_down.weight`, shape: [2, IN + 1] },
          { name: `${NAME}.lora_up.weight`, shape: [OUT, 2] },
        ]),
      ),
    );
    expect(e.code).toBe('LORA_SHAPE_MISMATCH');
    expect(e.message).toContain(`[r, ${IN}]`);
    expect(e.message).toContain(`found down [2, ${IN + 1}]`);
    const three = await caught(() =>
      decodeBytes(
        makeFile([
          { name: `${NAME}.lora_down.weight`, shape: [2, IN, 1] },
          { name: `${NAME}.lora_up.weight`, shape: [OUT, 2] },
        ]),
      ),
    );
    expect(three.code).toBe('LORA_SHAPE_MISMATCH');
  });

  it('kohya and PEFT spellings in one file, or two PEFT adapters: FORMAT_MIXED', async () => {
    const stem = `unet.${sd15.byPath.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k')!.localPath}`;
    const e = await caught(() =>
      decodeBytes(
        makeFile([
          ...lora(),
          { name: `${stem}.lora_A.weight`, shape: [2, IN] },
          { name: `${stem}.lora_B.weight`, shape: [OUT, 2] },
        ]),
      ),
    );
    expect(e.code).toBe('FORMAT_MIXED');
    const two = await caught(() =>
      decodeBytes(
        makeFile([
          { name: `unet.${toQ.localPath}.lora_A.default.weight`, shape: [2, IN] },
          { name: `unet.${toQ.localPath}.lora_B.default.weight`, shape: [OUT, 2] },
          { name: `${stem}.lora_A.other.weight`, shape: [2, IN] },
          { name: `${stem}.lora_B.other.weight`, shape: [OUT, 2] },
        ]),
      ),
    );
    expect(two.code).toBe('FORMAT_MIXED');
    expect(two.message).toMatch(/default, other/);
  });

  it('a non-finite alpha is refused with FORMAT_NONFINITE naming the alpha', async () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const e = await caught(() =>
        decodeBytes(makeFile([...lora(), { name: `${NAME}.alpha`, shape: [], values: [bad] }])),
      );
      expect(e.code).toBe('FORMAT_NONFINITE');
      expect(e.message).toContain(`${NAME}.alpha`);
    }
  });

  it("a truncated file is the reader's SAFETENSORS_TRUNCATED", async () => {
    const e = await caught(() => loadLora(fixture('bad/truncated.safetensors')));
    expect(e).toBeInstanceOf(SafetensorsError);
    expect(e.code).toBe('SAFETENSORS_TRUNCATED');
  });
});

describe('architecture errors', () => {
  it('an SDXL LoRA requested as SD1.5 (and the reverse) is ARCH_MISMATCH', async () => {
    const e = await caught(() => loadLora(fixture('sdxl/lcm-lora.kohya.safetensors'), { arch: 'sd15' }));
    expect(e).toBeInstanceOf(ArchError);
    expect(e.code).toBe('ARCH_MISMATCH');
    expect(e.message).toMatch(/SDXL \(tiny\) LoRA.*SD1\.5 was requested/);
    expect(e.details).toMatchObject({ expected: 'sd15', found: 'sdxl' });
    const r = await caught(() => loadLora(fixture('sd15/style-lora.kohya.safetensors'), { arch: 'ssd1b' }));
    expect(r.code).toBe('ARCH_MISMATCH');
  });

  it('an SDXL LoRA on SSD-1B: LORA_UNMATCHED_MODULES listing the 365 missing modules, or allowed', async () => {
    const e = await caught(() => loadLora(fixture('sdxl/lcm-lora.kohya.safetensors'), { arch: 'ssd1b' }));
    expect(e.code).toBe('LORA_UNMATCHED_MODULES');
    expect(e.message).toMatch(/365 of 788/);
    expect(e.message).toContain('transformer_blocks_4');
    const ok = await loadLora(fixture('sdxl/lcm-lora.kohya.safetensors'), { arch: 'ssd1b', allowUnmatched: true });
    expect(ok.arch).toBe('ssd1b');
    expect(ok.modules.size).toBe(423);
    expect(ok.unmatched).toHaveLength(365);
    expect(ok.unmatched[0]!.reason).toMatch(/SSD-1B/);
  });

  it('a forced size that does not fit is a shape error', async () => {
    const e = await caught(() =>
      loadLora(fixture('sd15/style-lora.kohya.safetensors'), { arch: 'sd15', size: 'full' }),
    );
    expect(e.code).toBe('LORA_SHAPE_MISMATCH');
  });
});
