import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { inspectCommand, inspectRaw, type InspectRaw } from '../src/cli/commands/inspect.js';
import { COMMANDS } from '../src/cli/commands/index.js';
import { type CliRun, runCli } from './cli-helpers.js';
import { parseSafetensors, writeSafetensors } from '../src/safetensors/index.js';
import { bufferSource } from '../src/core/memory.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-inspect-'));
  await writeSafetensors(
    path.join(dir, 'model.safetensors'),
    [
      { name: 'layer.down', dtype: 'F16', shape: [4, 320], data: new Uint16Array(4 * 320) },
      { name: 'layer.up', dtype: 'F16', shape: [320, 4], data: new Uint16Array(320 * 4) },
      { name: 'layer.scale', dtype: 'F32', shape: [], data: new Float32Array([4]) },
    ],
    { metadata: { ss_network_dim: '4', long: 'x'.repeat(500) } },
  );
  await fs.writeFile(path.join(dir, 'broken.safetensors'), new Uint8Array([200, 0, 0, 0, 0, 0, 0, 0, 123]));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

function run(argv: string[]): Promise<CliRun> {
  return runCli(['inspect', ...argv], dir, { commands: [inspectCommand] });
}

describe('lora-mix inspect', () => {
  it('is registered', () => {
    expect(COMMANDS.map((c) => c.name)).toContain('inspect');
  });

  it('--json prints tensors, totals per dtype and metadata', async () => {
    const r = await run(['model.safetensors', '--json']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out) as InspectRaw;
    expect(j.file).toBe('model.safetensors');
    expect(j.tensors.map((t) => [t.name, t.dtype, t.shape])).toEqual([
      ['layer.down', 'F16', [4, 320]],
      ['layer.up', 'F16', [320, 4]],
      ['layer.scale', 'F32', []],
    ]);
    expect(j.totals).toEqual({
      tensors: 3,
      parameters: 2561,
      bytes: 5124,
      byDtype: { F16: { tensors: 2, parameters: 2560, bytes: 5120 }, F32: { tensors: 1, parameters: 1, bytes: 4 } },
    });
    expect(j.metadata.ss_network_dim).toBe('4');
    expect(j.metadata.long).toHaveLength(500);
    expect(j.byteLength).toBe((await fs.stat(path.join(dir, 'model.safetensors'))).size);
    expect(j.dataOffset).toBe(8 + j.headerLength);
  });

  it('prints a table with totals, clipped metadata and one row per tensor; --summary drops the rows', async () => {
    const r = await run(['model.safetensors']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^tensors\s+3, 2,561 parameters, 5,124 bytes$/m);
    expect(r.out).toMatch(/^\s+F32\s+1 tensor, 1 parameter, 4 bytes$/m);
    expect(r.out).toMatch(/^\s+long: x+… \(500 chars\)$/m);
    expect(r.out).toMatch(/^layer\.up\s+F16\s+\[320, 4\]$/m);
    expect(r.out).toMatch(/^layer\.scale\s+F32\s+\[\]$/m);
    const s = await run(['model.safetensors', '--summary']);
    expect(s.out).not.toMatch(/^layer\.up/m);
    expect(s.out).toContain('2,561 parameters');
  });

  it('reports a corrupt file with its error code and exit status 1, and usage errors with 2', async () => {
    const r = await run(['broken.safetensors']);
    expect(r.code).toBe(1);
    expect(r.err).toContain('SAFETENSORS_HEADER_TOO_LARGE');
    expect(r.err).toContain('broken.safetensors');
    expect((await run(['missing.safetensors'])).err).toContain('INPUT_NOT_FOUND');
    expect((await run([])).code).toBe(2);
    expect((await run(['a', 'b'])).code).toBe(2);
  });

  it('inspectRaw works on any SafetensorsFile (memory too)', async () => {
    const bytes = new Uint8Array(await fs.readFile(path.join(dir, 'model.safetensors')));
    const raw = inspectRaw(await parseSafetensors(bufferSource(bytes, 'mem')));
    expect(raw.file).toBe('mem');
    expect(raw.totals.parameters).toBe(2561);
  });
});
