import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildWasmFiles, ROOT } from '../scripts/build-wasm.js';
import { base64ToBytes } from '../src/core/base64.js';
import { CONVERT_WASM } from '../src/core/dtype-wasm-bytes.js';
import { SHA256_WASM } from '../src/core/sha256-wasm-bytes.js';
import { FACTOR_F16_WASM } from '../src/lora/factor-f16-bytes.js';
import { GRAM_WASM } from '../src/lora/gram-bytes.js';
import { ROTATE_WASM } from '../src/lora/rotate-bytes.js';
import { TRIM_WASM } from '../src/lora/trim-bytes.js';
import {
  KERNEL_PLAIN,
  KERNEL_PLAIN_SHARED,
  KERNEL_RELAXED,
  KERNEL_RELAXED_SHARED,
} from '../src/kernels/kernel-bytes.js';

describe('committed WebAssembly', () => {
  it('src/core/dtype-wasm.wat, src/core/sha256.wat, src/lora/factor-f16.wat, src/lora/trim.wat, src/lora/gram.wat, src/lora/rotate.wat, src/kernels/kernel.wat and *-bytes.ts equal a fresh generation and wabt compile (npm run build:wasm)', async () => {
    const files = await buildWasmFiles();
    expect(Object.keys(files).sort()).toEqual([
      'src/core/dtype-wasm-bytes.ts',
      'src/core/dtype-wasm.wat',
      'src/core/sha256-wasm-bytes.ts',
      'src/core/sha256.wat',
      'src/kernels/kernel-bytes.ts',
      'src/kernels/kernel.wat',
      'src/lora/factor-f16-bytes.ts',
      'src/lora/factor-f16.wat',
      'src/lora/gram-bytes.ts',
      'src/lora/gram.wat',
      'src/lora/rotate-bytes.ts',
      'src/lora/rotate.wat',
      'src/lora/trim-bytes.ts',
      'src/lora/trim.wat',
    ]);
    for (const [rel, content] of Object.entries(files)) {
      const committed = await readFile(path.join(ROOT, rel), 'utf8');
      expect(committed, `${rel} is stale: run npm run build:wasm`).toBe(content);
    }
  }, 60_000);

  it('every build is a valid module with the expected exports', () => {
    const conv = new WebAssembly.Module(base64ToBytes(CONVERT_WASM));
    expect(
      WebAssembly.Module.exports(conv)
        .map((e) => e.name)
        .sort(),
    ).toEqual(['bf16_to_f32', 'f16_to_f32', 'f32_to_bf16', 'f32_to_f16', 'memory']);
    const sha = new WebAssembly.Module(base64ToBytes(SHA256_WASM));
    expect(
      WebAssembly.Module.exports(sha)
        .map((e) => e.name)
        .sort(),
    ).toEqual(['blocks', 'memory']);
    const factor = new WebAssembly.Module(base64ToBytes(FACTOR_F16_WASM));
    expect(
      WebAssembly.Module.exports(factor)
        .map((e) => e.name)
        .sort(),
    ).toEqual(['encode_f16', 'kr_up', 'memory', 'mul_row', 'take_special']);
    const trim = new WebAssembly.Module(base64ToBytes(TRIM_WASM));
    expect(
      WebAssembly.Module.exports(trim)
        .map((e) => e.name)
        .sort(),
    ).toEqual(['hist_high', 'hist_low', 'memory', 'vote', 'vote2', 'zero']);
    const gram = new WebAssembly.Module(base64ToBytes(GRAM_WASM));
    expect(
      WebAssembly.Module.exports(gram)
        .map((e) => e.name)
        .sort(),
    ).toEqual(['gram', 'memory']);
    const rotate = new WebAssembly.Module(base64ToBytes(ROTATE_WASM));
    expect(
      WebAssembly.Module.exports(rotate)
        .map((e) => e.name)
        .sort(),
    ).toEqual(['memory', 'rotate']);
    // the plain builds compile without relaxed SIMD; all four share one export list
    const plain = new WebAssembly.Module(base64ToBytes(KERNEL_PLAIN));
    const names = WebAssembly.Module.exports(plain).map((e) => e.name);
    expect(names).toContain('pack_a');
    expect(names).toContain('update_f16_bf16');
    expect(names.filter((n) => n.startsWith('update_'))).toHaveLength(9);
    const plainShared = new WebAssembly.Module(base64ToBytes(KERNEL_PLAIN_SHARED));
    expect(WebAssembly.Module.imports(plainShared)).toEqual([{ module: 'env', name: 'memory', kind: 'memory' }]);
    // relaxed builds use f32x4.relaxed_madd (opcode 0xfd 0x85 0x02), the plain ones never do
    const hasMadd = (b: Uint8Array): boolean => {
      for (let i = 0; i + 2 < b.length; i++) if (b[i] === 0xfd && b[i + 1] === 0x85 && b[i + 2] === 0x02) return true;
      return false;
    };
    expect(hasMadd(base64ToBytes(KERNEL_RELAXED))).toBe(true);
    expect(hasMadd(base64ToBytes(KERNEL_RELAXED_SHARED))).toBe(true);
    expect(hasMadd(base64ToBytes(KERNEL_PLAIN))).toBe(false);
    expect(hasMadd(base64ToBytes(KERNEL_PLAIN_SHARED))).toBe(false);
  });
});
