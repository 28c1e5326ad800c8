import { describe, expect, it } from 'vitest';
import { layoutCommand } from '../src/cli/commands/layout.js';
import { type CliRun, runCli } from './cli-helpers.js';

function run(argv: string[]): Promise<CliRun> {
  return runCli(['layout', ...argv], '/', { commands: [layoutCommand] });
}

describe('lora-mix layout', () => {
  it('prints the SD1.5 table with every spelling and the footer figures', async () => {
    const r = await run(['sd15']);
    expect(r.code).toBe(0);
    const lines = r.out.split('\n');
    expect(lines[0]).toMatch(
      /^path\s+single-file key\s+kohya \(diffusers\)\s+kohya \(SGM\)\s+PEFT stem\s+shape\s+block\s+LCM$/,
    );
    const row = lines.find((l) => l.startsWith('unet.up_blocks.0.upsamplers.0.conv '))!;
    expect(row.split(/\s+/)).toEqual([
      'unet.up_blocks.0.upsamplers.0.conv',
      'model.diffusion_model.output_blocks.2.1.conv.weight',
      'lora_unet_up_blocks_0_upsamplers_0_conv',
      'lora_unet_output_blocks_2_1_conv',
      'unet.up_blocks.0.upsamplers.0.conv',
      '[1280,1280,3,3]',
      'OUT02',
      'yes',
    ]);
    expect(r.out).toContain('SD1.5: 356 modules — unet 282');
    // The 72 layer Linears plus both embedding tables (ComfyUI maps LoRAs onto them too).
    expect(r.out).toContain('text_encoder 74 (74 linear, 0 conv2d)');
    expect(r.out).toContain('LCM-LoRA targets: 278 modules, 67,252,224 LoRA parameters at rank 64');
  });

  it('--component unet --lcm-only for SDXL and SSD-1B', async () => {
    const sdxl = await run(['sdxl', '--component', 'unet', '--lcm-only']);
    expect(sdxl.out).toContain('SDXL: 788 modules — unet 788');
    expect(sdxl.out).toContain('196,751,360 LoRA parameters at rank 64');
    expect(sdxl.out).not.toContain('unet.conv_in ');
    const ssd = await run(['ssd1b', '--lcm-only']);
    expect(ssd.out).toContain('LCM-LoRA targets: 423 modules, 104,902,656 LoRA parameters at rank 64');
  });

  it('--json prints one object per module', async () => {
    const r = await run(['sdxl', '--json', '--tiny', '--component', 'text_encoder_2']);
    expect(r.code).toBe(0);
    const rows = JSON.parse(r.out) as Record<string, unknown>[];
    // 32 layers × 6 Linears, both embedding tables and text_projection (stored transposed in the single file).
    expect(rows).toHaveLength(195);
    expect(rows.filter((x) => x.extra).map((x) => x.localPath)).toEqual([
      'text_model.embeddings.token_embedding',
      'text_model.embeddings.position_embedding',
      'text_projection',
    ]);
    expect(rows.find((x) => x.localPath === 'text_projection')).toMatchObject({
      singleFileWeightKey: 'conditioner.embedders.1.model.text_projection',
      singleFileTransposed: true,
      kohyaDiffusers: 'lora_te2_text_projection',
    });
    expect(rows.find((x) => !x.extra)).toMatchObject({
      path: 'text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj',
      singleFileWeightKey: 'conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight',
      singleFileRows: [0, 12],
      kohyaDiffusers: 'lora_te2_text_model_encoder_layers_0_self_attn_q_proj',
      kohyaSgm: null,
      shape: [12, 12],
      block: 'BASE',
      lcmTarget: false,
    });
    const unet = JSON.parse((await run(['sd15', '--json'])).out) as {
      kind: string;
      kernel?: number[];
      loraParamsAtRank64: number;
      lcmTarget: boolean;
    }[];
    expect(unet.filter((m) => m.lcmTarget).reduce((t, m) => t + m.loraParamsAtRank64, 0)).toBe(67_252_224);
    expect(unet.every((m) => (m.kind === 'conv2d') === Array.isArray(m.kernel))).toBe(true);
  });

  it('usage errors exit 2 with a message', async () => {
    for (const argv of [
      [],
      ['sd2'],
      ['sd15', 'sdxl'],
      ['sd15', '--component', 'vae'],
      ['sd15', '--component', 'text_encoder_2'],
      ['sd15', '--bogus'],
    ]) {
      const r = await run(argv);
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/lora-mix layout: error USAGE/);
    }
  });

  it('--help shows examples', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('lora-mix layout sdxl --component unet --lcm-only');
  });
});
