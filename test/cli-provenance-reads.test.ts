/**
 * The CLI hashes each LoRA (provenance) from the command's own reads (src/node/provenance.ts tapReads over
 * src/core/sha256-source.ts): every byte of a LoRA is read once, and the provenance is byte for byte the one a
 * separate read of each file gives (src/cli/provenance.ts cliProvenance with sha256File). fuse and unfuse write a
 * placeholder and rewrite the header at the end: the file must read back whole with the final record.
 */
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliProvenance } from '../src/cli/provenance.js';
import { currentHost, installHost } from '../src/core/host.js';
import { PROVENANCE_METADATA_KEY, readProvenance } from '../src/core/provenance.js';
import { loadLora } from '../src/formats/index.js';
import { fuseLoras } from '../src/fuse/fuse.js';
import { openSafetensors } from '../src/node/files.js';
import { sha256File, tapReads } from '../src/node/provenance.js';
import { runCli } from './cli-helpers.js';

const FIXTURES = path.resolve(import.meta.dirname, '..', 'fixtures');
const LCM = 'sd15/lcm-lora.kohya.safetensors';
const STYLE = 'sd15/style-lora.kohya.safetensors';
const BASE = 'sd15/base.safetensors';
let tmp = '';
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'lora-mix-provenance-reads-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

/** The provenance string a written file carries, and whether every tensor reads back. */
async function written(file: string): Promise<string> {
  const f = await openSafetensors(file);
  try {
    for (const t of f.tensors.slice(0, 5))
      expect((await f.source.read(t.offset, t.offset + t.byteLength)).byteLength).toBe(t.byteLength);
    const p = f.metadata[PROVENANCE_METADATA_KEY];
    expect(p).toBeDefined();
    return p as string;
  } finally {
    await f.close();
  }
}

/** The same record made the old way: each LoRA read separately for its hash. */
async function separateRead(record: string, checkpoints: { file: string; role: string }[] = []): Promise<string> {
  const p = readProvenance({ [PROVENANCE_METADATA_KEY]: record })!;
  const loras = p.inputs
    .filter((x) => x.role === 'lora')
    .map((x) => ({
      file: path.join(FIXTURES, x.name),
      ...(x.weight !== undefined ? { weight: Number(x.weight) } : {}),
    }));
  const meta = await cliProvenance(p.command, FIXTURES, loras, p.options, checkpoints, sha256File);
  return meta[PROVENANCE_METADATA_KEY] as string;
}

/** Count the bytes the library reads from each file through the host while `fn` runs. */
async function countReads<T>(fn: () => Promise<T>): Promise<{ result: T; bytes: Map<string, number> }> {
  const host = currentHost()!;
  const bytes = new Map<string, number>();
  const add = (p: string, n: number): void => {
    bytes.set(path.resolve(p), (bytes.get(path.resolve(p)) ?? 0) + n);
  };
  installHost({
    ...host,
    async openSource(p) {
      const s = await host.openSource(p);
      return {
        name: s.name,
        byteLength: s.byteLength,
        ...(s.identity !== undefined ? { identity: s.identity } : {}),
        async read(a, b) {
          add(p, b - a);
          return s.read(a, b);
        },
        ...(s.readInto
          ? {
              async readInto(a: number, t: Uint8Array) {
                add(p, t.byteLength);
                return s.readInto!(a, t);
              },
            }
          : {}),
        ...(s.close ? { close: () => s.close!() } : {}),
      };
    },
  });
  try {
    return { result: await fn(), bytes };
  } finally {
    installHost(host);
  }
}

describe('provenance from the command’s own reads', () => {
  it('fuse (placeholder, header rewritten at the end), merge, convert and unfuse record the same bytes as separate reads', async () => {
    const fused = path.join(tmp, 'fused.safetensors');
    const r = await runCli(['fuse', '--base', BASE, `${LCM}:1`, `${STYLE}:0.8`, '-o', fused, '-q'], FIXTURES);
    expect(r.code).toBe(0);
    const fuseRecord = await written(fused);
    expect(fuseRecord).not.toContain('0'.repeat(64));
    expect(fuseRecord).toBe(await separateRead(fuseRecord, [{ file: path.join(FIXTURES, BASE), role: 'base' }]));

    const merged = path.join(tmp, 'merged.safetensors');
    expect((await runCli(['merge', `${LCM}:1`, `${STYLE}:0.8`, '-o', merged, '-q'], FIXTURES)).code).toBe(0);
    const mergeRecord = await written(merged);
    expect(mergeRecord).toBe(await separateRead(mergeRecord));

    const reduced = path.join(tmp, 'reduced.safetensors');
    expect(
      (await runCli(['merge', `${LCM}:1`, `${STYLE}:0.8`, '-o', reduced, '--rank', '4', '-q'], FIXTURES)).code,
    ).toBe(0);
    const reducedRecord = await written(reduced);
    expect(reducedRecord).toBe(await separateRead(reducedRecord));

    const converted = path.join(tmp, 'converted.safetensors');
    expect((await runCli(['convert', STYLE, '--to', 'peft', '-o', converted], FIXTURES)).code).toBe(0);
    const convertRecord = await written(converted);
    expect(convertRecord).toBe(await separateRead(convertRecord));

    const back = path.join(tmp, 'back.safetensors');
    expect(
      (await runCli(['unfuse', '--fused', fused, `${LCM}:1`, `${STYLE}:0.8`, '-o', back, '-q'], FIXTURES)).code,
    ).toBe(0);
    const unfuseRecord = await written(back);
    expect(unfuseRecord).toBe(await separateRead(unfuseRecord, [{ file: fused, role: 'fused' }]));
  });

  it('a diffusers folder: every fused file carries the final record', async () => {
    const out = path.join(tmp, 'folder-out');
    const lora = 'sdxl/lcm-lora.kohya.safetensors';
    expect((await runCli(['fuse', '--base', 'sdxl/diffusers', lora, '-o', out, '-q'], FIXTURES)).code).toBe(0);
    const files = ['unet/diffusion_pytorch_model.safetensors', 'text_encoder/model.safetensors'];
    const records = await Promise.all(files.map((f) => written(path.join(out, f))));
    const p = readProvenance({ [PROVENANCE_METADATA_KEY]: records[0]! })!;
    expect(p.inputs.find((x) => x.role === 'lora')?.sha256).toBe(await sha256File(path.join(FIXTURES, lora)));
    expect(records[1]).toBe(records[0]);
  });

  it('each LoRA file is read once: the fuse’s reads and the hash together cover it exactly', async () => {
    const loras = [path.join(FIXTURES, LCM), path.join(FIXTURES, STYLE)];
    const { result, bytes } = await countReads(async () => {
      const tap = tapReads(loras);
      try {
        const out = path.join(tmp, 'counted.safetensors');
        await fuseLoras(path.join(FIXTURES, BASE), loras, [1, 0.8], { out });
        return await Promise.all(loras.map((l) => tap.sha256(l)));
      } finally {
        await tap.close();
      }
    });
    for (const [i, l] of loras.entries()) {
      expect(result[i]).toBe(await sha256File(l));
      expect(bytes.get(l)).toBe((await fs.stat(l)).size);
    }
    // Without the tap the same fuse reads less than the file (the hash needed its own pass).
    const plain = await countReads(() =>
      fuseLoras(path.join(FIXTURES, BASE), loras, [1, 0.8], { out: path.join(tmp, 'plain.safetensors') }),
    );
    expect(plain.bytes.get(loras[0]!)).toBeLessThanOrEqual((await fs.stat(loras[0]!)).size);
    // loadLora reads the whole file: the hash then reads nothing more.
    const tap = tapReads([loras[1]!]);
    try {
      await loadLora(loras[1]!);
      expect(await tap.sha256(loras[1]!)).toBe(await sha256File(loras[1]!));
      expect(tap.extraBytes).toBe(0);
    } finally {
      await tap.close();
    }
  });
});
