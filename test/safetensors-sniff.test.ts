import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { bufferSource } from '../src/core/memory.js';
import { SafetensorsError } from '../src/core/errors.js';
import { parseSafetensors, serializeSafetensors, sniffFileKind } from '../src/safetensors/index.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const cat = (...parts: (Uint8Array | number[])[]): Uint8Array => {
  const out: number[] = [];
  for (const p of parts) out.push(...p);
  return Uint8Array.from(out);
};
/** A plausible body after a magic number, so the file is long enough to be mistaken for weights. */
const body = (n = 200): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 37 + 11) & 0xff);

async function refusal(bytes: Uint8Array, name = 'model.ckpt'): Promise<SafetensorsError> {
  const e = await parseSafetensors(bufferSource(bytes, name)).then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(SafetensorsError);
  return e as SafetensorsError;
}

// Real first bytes of each kind: torch.save zip ('PK\x03\x04' + 'archive/data.pkl' entry), a protocol-2 pickle
// (torch < 1.6 / .ckpt), GGUF v3, ONNX (ir_version 8, producer 'pytorch'), JSON, an HTML error page, a Git LFS
// pointer, NumPy.
const CASES: readonly [string, Uint8Array, string, RegExp][] = [
  [
    'torch zip',
    cat(enc('PK\x03\x04'), [0, 0, 8, 0], enc('archive/data.pkl'), body()),
    'torch-zip',
    /PyTorch.*torch\.save/,
  ],
  ['pickle', cat([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8], body()), 'pickle', /pickle/],
  ['gguf', cat(enc('GGUF'), [3, 0, 0, 0], body()), 'gguf', /GGUF/],
  ['onnx', cat([0x08, 0x08, 0x12, 0x07], enc('pytorch'), [0x1a, 0x05], enc('2.1.0'), body()), 'onnx', /ONNX/],
  [
    'json',
    enc('{\n  "_class_name": "StableDiffusionPipeline",\n  "unet": ["diffusers", "UNet2DConditionModel"]\n}'),
    'json',
    /JSON/,
  ],
  ['html', enc('<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body></body></html>'), 'html', /HTML/],
  [
    'lfs',
    enc('version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1719125304\n'),
    'git-lfs-pointer',
    /Git LFS/,
  ],
  ['npy', cat([0x93], enc('NUMPY'), [1, 0], body()), 'npy', /NumPy/],
];

describe('non-safetensors files are named from their first bytes', () => {
  for (const [label, bytes, kind, what] of CASES) {
    it(`${label}: SAFETENSORS_NOT_SAFETENSORS naming the kind and the fix`, async () => {
      const e = await refusal(bytes);
      expect(e.code).toBe('SAFETENSORS_NOT_SAFETENSORS');
      expect(e.details.kind).toBe(kind);
      expect(e.message).toMatch(what);
      expect(e.message).toContain('model.ckpt');
      expect(sniffFileKind(bytes.subarray(0, 64), bytes.length)?.kind).toBe(kind);
    });
  }

  it('pickles, zips and GGUF say to convert to safetensors first', async () => {
    for (const [, bytes, kind] of CASES.filter(([, , k]) => ['pickle', 'torch-zip', 'npy'].includes(k))) {
      expect((await refusal(bytes)).message, kind).toMatch(/convert it to safetensors first/);
    }
  });

  it('an empty file is named as empty', async () => {
    const e = await refusal(new Uint8Array(0), 'empty.safetensors');
    expect(e.code).toBe('SAFETENSORS_NOT_SAFETENSORS');
    expect(e.details.kind).toBe('empty');
    expect(e.message).toContain('empty file');
  });

  it('a valid safetensors file is never second-guessed, whatever its header length bytes look like', async () => {
    const file = serializeSafetensors([{ name: 'w', dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) }]);
    const parsed = await parseSafetensors(bufferSource(file, 'ok.safetensors'));
    expect(parsed.tensors.map((t) => t.name)).toEqual(['w']);
  });

  it('random bytes are either a recognised kind or the reader’s own header error, never a crash', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: 80 }), async (bytes) => {
        const e = await parseSafetensors(bufferSource(bytes, 'x')).then(
          () => undefined,
          (x: unknown) => x,
        );
        if (e !== undefined) expect(e).toBeInstanceOf(SafetensorsError);
      }),
      { numRuns: 300 },
    );
  });
});
