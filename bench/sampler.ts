/**
 * Cost of the reference LCM sampler itself (no UNet): one LCMScheduler.step and a full 4- and 8-step loop with
 * a trivial ε-model, on an SDXL-sized latent [1, 4, 128, 128] (65,536 elements), Float32Array and
 * Float64Array. Baseline in the same run: one fused multiply-add pass y = a·x + b·z over the same arrays.
 *
 *   npx tsx bench/sampler.ts
 */
import os from 'node:os';
import { LCMScheduler, Rng, sample, type Latent } from '../src/sampler/index.js';
import { installNodeHost } from '../src/node/install.js';

// Benchmarks import the layers directly: give them file paths, folders and threads as the Node entry does.
installNodeHost();

const SHAPE = [1, 4, 128, 128];
const N = SHAPE.reduce((a, b) => a * b, 1);
const RUNS = 15;

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function time(fn: () => void, reps: number): number {
  fn(); // warm-up
  const times: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) fn();
    times.push((performance.now() - t0) / reps);
  }
  return median(times);
}

const lines: string[] = [];
const log = (s: string) => {
  lines.push(s);
  console.log(s);
};
log(`machine: ${os.cpus().length} cores, ${os.cpus()[0]?.model ?? 'unknown'}, Node ${process.version}`);
log(`latent [${SHAPE.join(', ')}] = ${N} elements, median of ${RUNS} runs`);

for (const dtype of ['float32', 'float64'] as const) {
  const rng = new Rng(1);
  const x = rng.normalArray(N, dtype);
  const eps = rng.normalArray(N, dtype);
  const z = rng.normalArray(N, dtype);
  const y = dtype === 'float32' ? new Float32Array(N) : new Float64Array(N);
  const baseline = time(() => {
    for (let i = 0; i < N; i++) y[i] = 0.7 * x[i]! + 0.3 * z[i]!;
  }, 20);
  const s = new LCMScheduler();
  s.setTimesteps(4);
  const step = time(() => {
    s.step(eps, 759, x, { noise: z });
  }, 20);
  const model = (v: Latent) => v.map((e) => 0.1 * e) as Latent;
  const modelOnly = time(() => {
    model(x);
  }, 20);
  const loop4 = time(() => {
    sample(model, { steps: 4, shape: SHAPE, seed: 0, dtype, keepTrajectory: false });
  }, 3);
  const loop8 = time(() => {
    sample(model, { steps: 8, shape: SHAPE, seed: 0, dtype, keepTrajectory: false });
  }, 3);
  log(
    `${dtype}: axpy baseline ${baseline.toFixed(3)} ms | step ${step.toFixed(3)} ms (${(step / baseline).toFixed(1)}× baseline) | ` +
      `toy model ${modelOnly.toFixed(3)} ms | 4-step loop ${loop4.toFixed(2)} ms | 8-step loop ${loop8.toFixed(2)} ms ` +
      `(loops include drawing x_T and N−1 noise arrays with Box–Muller)`,
  );
}
