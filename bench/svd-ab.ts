/**
 * Same-process A/B of two builds' truncatedSvd on real TIES results (bench/ties.ts's inputs and merge): the dense
 * results of every S-th module are formed once, then each build's truncatedSvd (METHOD_SVD_OPTIONS, one workspace
 * each) runs over all of them, builds alternated for R rounds; prints CPU and wall seconds per round and build, and
 * whether the factors are byte-identical module by module.
 *
 *   flock /work/bench.lock npx tsx bench/svd-ab.ts --base /tmp/base-checkout [--stride 40] [--rounds 3]
 */
import { createHash } from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { installNodeHost } from '../src/node/install.js';
import { openStreamingInputs, withFactors } from '../src/node/merge-stream.js';
import { methodRequest, planMerge } from '../src/lora/merge.js';
import { DenseScratch, METHOD_SVD_OPTIONS, methodDelta } from '../src/lora/method-module.js';
import * as mine from '../src/lora/svd.js';
import { arg } from './args.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'bench', 'out');
installNodeHost();
const baseDir = arg('base', '');
if (!baseDir) throw new Error('--base DIR (a checkout of the base build) is required');
const other = (await import(path.join(path.resolve(baseDir), 'src/lora/svd.ts'))) as typeof mine;
const stride = Number(arg('stride', '40'));
const rounds = Number(arg('rounds', '3'));
const inputs = await openStreamingInputs([
  path.join(OUT, 'sdxl-lcm.f16.safetensors'),
  path.join(OUT, 'methods-sdxl-b64.f16.safetensors'),
]);
if (!inputs) throw new Error('inputs need the in-memory path');
const plan = planMerge(inputs.loras, [1, 0.8], { method: 'ties', density: 0.2, rank: 64 });
const work = plan.modules.filter((pm) => pm.action === 'method').filter((_, i) => i % stride === 0);
const scratch = new DenseScratch();
const mats: { d: Float32Array; m: number; n: number }[] = [];
for (const pm of work) {
  const req = methodRequest(plan, await withFactors(inputs, pm));
  mats.push({ d: Float32Array.from(methodDelta(req, scratch)), m: req.out, n: req.fanIn });
}
await inputs.close();
const hash = (s: mine.TruncatedSvd): string =>
  createHash('sha256')
    .update(new Uint8Array(s.up.buffer, s.up.byteOffset, s.up.byteLength))
    .update(new Uint8Array(s.down.buffer, s.down.byteOffset, s.down.byteLength))
    .digest('hex');
const builds = [
  ['base', other.truncatedSvd, new other.SvdWorkspace()],
  ['this', mine.truncatedSvd, new mine.SvdWorkspace()],
] as const;
const hashes: Record<string, string[]> = { base: [], this: [] };
const elements = mats.reduce((s, x) => s + x.m * x.n, 0);
console.log(JSON.stringify({ modules: mats.length, elementsM: +(elements / 1e6).toFixed(1) }));
for (let r = 0; r < rounds; r++) {
  for (const [name, svd, ws] of builds) {
    const load = os.loadavg()[0]?.toFixed(2);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    let its = 0;
    const hs: string[] = [];
    for (const { d, m, n } of mats) {
      const s = svd(d, m, n, 64, { ...METHOD_SVD_OPTIONS, workspace: ws as never });
      its += s.iterations;
      if (r === 0) hs.push(hash(s));
    }
    const c = process.cpuUsage(c0);
    if (r === 0) hashes[name] = hs;
    console.log(
      JSON.stringify({
        round: r + 1,
        build: name,
        cpuS: +((c.user + c.system) / 1e6).toFixed(2),
        wallS: +((performance.now() - t0) / 1000).toFixed(2),
        meanIterations: +(its / mats.length).toFixed(2),
        load,
      }),
    );
  }
}
const same = hashes.base?.filter((h, i) => h === hashes.this?.[i]).length;
console.log(JSON.stringify({ identicalModules: same, of: mats.length }));
