/**
 * Fuse τ = 1.0·τ_LCM + 0.8·τ_style into a base checkpoint, then check the result module by module.
 * Uses the bundled tiny SD1.5 base (single file, F16) and its diffusers-folder twin; writes only to the system temp
 * folder.
 *
 *   npx tsx examples/fuse.ts
 *
 * In your own project import from 'lora-mix' instead of '../src/index.js'.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  FUSE_METADATA_KEY,
  formatFuseReport,
  formatVerifyReport,
  fuseLoras,
  openSafetensors,
  verifyFusion,
} from '../src/node.js';

const BASE = 'fixtures/sd15/base.safetensors';
const LORAS = ['fixtures/sd15/lcm-lora.kohya.safetensors', 'fixtures/sd15/style-lora.kohya.safetensors'];
const WEIGHTS = [1.0, 0.8];

const dir = await mkdtemp(join(tmpdir(), 'lora-mix-example-'));
try {
  // 1. Fuse. The base streams through tensor by tensor: untouched tensors are copied byte for byte, each targeted
  //    weight gets W + Σ λᵢ·(alphaᵢ/rᵢ)·upᵢ·downᵢ in f32 with one rounding back to its dtype. The output is written to
  //    a temp file and renamed into place; it can never replace an input.
  const out = join(dir, 'sd15-lcm-style.safetensors');
  let lastProgress = 0;
  const report = await fuseLoras(BASE, LORAS, WEIGHTS, {
    out,
    threads: 1,
    onProgress: (p) => {
      lastProgress = p.tensorsDone / p.tensorsTotal;
    },
  });
  console.log(formatFuseReport(report).trimEnd());
  console.log(`progress reached ${(100 * lastProgress).toFixed(0)}%`);

  // 2. The output records what went into it.
  const fused = await openSafetensors(out);
  const record = JSON.parse(fused.metadata[FUSE_METADATA_KEY] ?? '{}') as {
    loras?: { source: string; weight: string }[];
  };
  console.log(`metadata '${FUSE_METADATA_KEY}': ${record.loras?.map((l) => `${l.weight} × ${l.source}`).join(', ')}`);
  await fused.close();

  // 3. Verify: for every fused module, W′x is compared with Wx + Σ λᵢ·sᵢ·upᵢ(downᵢ x) on random probe vectors,
  //    against the error one rounding of W′ to its dtype can cause. No dense delta is formed.
  const check = await verifyFusion(out, BASE, LORAS, WEIGHTS, { probes: 4 });
  console.log(`\n${formatVerifyReport(check).trimEnd()}`);

  // 4. A diffusers folder works the same way: the output is a folder with the same files.
  const folderOut = join(dir, 'sd15-lcm-style-diffusers');
  const folder = await fuseLoras('fixtures/sd15/diffusers', LORAS, WEIGHTS, { out: folderOut, threads: 1 });
  const files = (await readdir(folderOut, { recursive: true }))
    .filter((f) => f.endsWith('.safetensors') || f.endsWith('.json'))
    .sort();
  console.log(`\ndiffusers folder: fused ${folder.modulesFused} modules (${folder.naming}) → ${files.join(', ')}`);
  const folderCheck = await verifyFusion(folderOut, 'fixtures/sd15/diffusers', LORAS, WEIGHTS);
  console.log(`diffusers folder verified: ${folderCheck.ok ? 'OK' : 'FAILED'} (${folderCheck.checked} modules)`);

  if (!check.ok || !folderCheck.ok) process.exitCode = 1;
} finally {
  await rm(dir, { recursive: true, force: true });
}
console.log('done: fuse');
