/**
 * The reference LCM sampler in a few lines: the schedule, one sampling loop with LCM-LoRA-style CFG, and the
 * Gaussian check that separates a consistency model from a plain (posterior-mean) denoiser.
 *
 *   npx tsx examples/sampler.ts
 */
import {
  LCMScheduler,
  classifierFreeGuidance,
  gaussianMoments,
  sample,
  verifyGaussian,
  type Latent,
} from '../src/sampler/index.js';

// 1. The schedule diffusers' LCMScheduler uses (≥ 0.24): evenly spaced picks from [999, 979, …, 19].
const scheduler = new LCMScheduler();
for (const steps of [1, 2, 4, 8]) console.log(`${steps} step(s): ${scheduler.setTimesteps(steps).join(', ')}`);
const { cSkip, cOut } = scheduler.scalings(259);
console.log(`boundary scalings at t = 259: c_skip = ${cSkip.toExponential(3)}, c_out = ${cOut.toFixed(12)}`);

// 2. A sampling loop around any model. Here a toy ε-model with a "prompt": it pulls the latent towards +1
//    when conditioned and towards 0 otherwise; guidance 1.5 mixes the two predictions as CFG does for LCM-LoRA.
const shape = [1, 4, 8, 8];
const toyModel = (x: Latent, t: number, cond: 'prompt' | 'empty' | undefined): Latent => {
  const a = scheduler.alphaCumprodAt(t);
  const target = cond === 'prompt' ? 1 : 0;
  // ε that would take x to `target`: ε = (x − √ᾱ·target)/√(1 − ᾱ)
  return x.map((v) => (v - Math.sqrt(a) * target) / Math.sqrt(1 - a)) as Latent;
};
const result = sample(toyModel, { steps: 4, shape, seed: 42, cond: 'prompt', uncond: 'empty', guidanceScale: 1.5 });
const avg = (a: Latent) => Array.from(a).reduce((s, v) => s + v, 0) / a.length;
console.log(`\nCFG 1.5 toy run: timesteps ${result.timesteps.join(', ')}`);
for (const step of result.trajectory)
  console.log(`  t = ${String(step.t).padStart(3)}: mean of denoised = ${avg(step.denoised).toFixed(4)}`);
console.log(`  final latent mean ${avg(result.latent).toFixed(4)} (the guided target is 0 + 1.5·(1 − 0) = 1.5)`);
console.log(
  `  CFG by hand on two numbers: ${Array.from(classifierFreeGuidance(Float64Array.of(0, 0), Float64Array.of(1, 2), 1.5)).join(', ')}`,
);

// 3. Gaussian data N(0.5, 0.8²): the exact consistency function keeps the full spread at every step count,
//    the posterior mean (Tweedie) does not. n = 4096 elements, seed 0; "exact" is the closed-form law.
console.log('\nsteps  denoiser     mean     std      variance reached (exact)');
for (const kind of ['consistency', 'tweedie'] as const) {
  for (const steps of [1, 2, 4, 8]) {
    const r = verifyGaussian({ steps, mean: 0.5, std: 0.8, n: 4096, seed: 0, kind });
    const pct = (v: number) => `${((100 * v) / 0.64).toFixed(1)}%`;
    console.log(
      `${String(steps).padEnd(6)} ${kind.padEnd(12)} ${r.final.mean.toFixed(4)}   ${r.final.std.toFixed(4)}   ${pct(r.final.variance).padStart(6)} (${pct(r.final.exactVariance)})`,
    );
  }
}

// 4. The closed form also shows what many steps do: Tweedie's spread converges to a fixed point below σ².
const ts50 = scheduler.setTimesteps(50);
const last50 = gaussianMoments(scheduler, ts50, { mean: 0.5, std: 0.8, kind: 'tweedie' }).at(-1)!;
console.log(`\n50 Tweedie steps (exact): variance ${((100 * last50.denoisedVar) / 0.64).toFixed(1)}% of σ²`);
