/**
 * The deterministic LCM trajectory (issue 6): latent [2,4,4,4] with x[n] = ((7n mod 23) − 11)/11, model output
 * 0.1·x + 0.05 + 0.00001·t, step-i noise z_i[n] = (((5n + 11i) mod 19) − 9)/9, for 1, 2, 4, 8 steps and every
 * prediction type. Checked three ways: against a straightforward float64 re-implementation written here from
 * the formulas (no code shared with src/), against literals computed by an independent numpy script
 * (test/reference/lcm_trajectory.py), and for internal consistency (noise use, dtypes, the loop vs step()).
 */
import { describe, expect, it } from 'vitest';
import { LCMScheduler, sample, type Latent, type PredictionType } from '../src/sampler/index.js';

const SHAPE = [2, 4, 4, 4] as const;
const N_ELEM = 128;
const STEP_COUNTS = [1, 2, 4, 8] as const;
const PREDICTIONS: readonly PredictionType[] = ['epsilon', 'v_prediction', 'sample'];

function initialLatent(): Float64Array {
  const x = new Float64Array(N_ELEM);
  for (let n = 0; n < N_ELEM; n++) x[n] = (((7 * n) % 23) - 11) / 11;
  return x;
}
function modelOutput(x: ArrayLike<number>, t: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let n = 0; n < x.length; n++) out[n] = 0.1 * x[n]! + 0.05 + 0.00001 * t;
  return out;
}
function stepNoise(i: number): Float64Array {
  const z = new Float64Array(N_ELEM);
  for (let n = 0; n < N_ELEM; n++) z[n] = (((5 * n + 11 * i) % 19) - 9) / 9;
  return z;
}

// ---- independent float64 reference (from the formulas; shares nothing with src/sampler) ----
function refAlphaBar(): number[] {
  const lo = Math.sqrt(0.00085);
  const hi = Math.sqrt(0.012);
  const out: number[] = [];
  let prod = 1;
  for (let i = 0; i < 1000; i++) {
    const r = lo + ((hi - lo) * i) / 999;
    prod *= 1 - r * r;
    out.push(prod);
  }
  return out;
}
const ABAR = refAlphaBar();
function refTimesteps(steps: number): number[] {
  const desc: number[] = [];
  for (let j = 50; j >= 1; j--) desc.push(20 * j - 1);
  const ts: number[] = [];
  for (let j = 0; j < steps; j++) ts.push(desc[Math.floor((j * 50) / steps)]!); // exact for L = 50
  return ts;
}
function refRun(
  steps: number,
  pred: PredictionType,
): { timesteps: number[]; final: number[]; denoised: number[][]; samples: number[][] } {
  const ts = refTimesteps(steps);
  let x = Array.from(initialLatent());
  const denoised: number[][] = [];
  const samples: number[][] = [];
  ts.forEach((t, i) => {
    const eps = Array.from(modelOutput(x, t));
    const a = ABAR[t]!;
    const scaled = 10 * t;
    const cSkip = 0.25 / (scaled * scaled + 0.25);
    const cOut = scaled / Math.sqrt(scaled * scaled + 0.25);
    const d = x.map((xv, n) => {
      const m = eps[n]!;
      const x0 =
        pred === 'epsilon'
          ? (xv - Math.sqrt(1 - a) * m) / Math.sqrt(a)
          : pred === 'v_prediction'
            ? Math.sqrt(a) * xv - Math.sqrt(1 - a) * m
            : m;
      return cOut * x0 + cSkip * xv;
    });
    denoised.push(d);
    if (i < ts.length - 1) {
      const ap = ABAR[ts[i + 1]!]!;
      const z = stepNoise(i);
      x = d.map((v, n) => Math.sqrt(ap) * v + Math.sqrt(1 - ap) * z[n]!);
    } else {
      x = d;
    }
    samples.push(x);
  });
  return { timesteps: ts, final: x, denoised, samples };
}

// ---- literals from test/reference/lcm_trajectory.py (numpy float64) ----
const NUMPY: Record<
  string,
  { timesteps: number[]; sum: number; absSum: number; at: Record<number, number>; denoised0: number[] }
> = {
  '1/epsilon': {
    timesteps: [999],
    sum: -125.40908716752602,
    absSum: 886.4151043727584,
    at: { 0: -14.064081733824946, 1: -5.672132110822463, 37: -6.870982056965674, 127: 3.9186674583232333 },
    denoised0: [-14.064081733824946],
  },
  '1/v_prediction': {
    timesteps: [999],
    sum: -7.629305495262617,
    absSum: 7.629305495262617,
    at: { 0: -0.02834825082096475, 1: -0.04839485478034478, 37: -0.045531054214719056, 127: -0.07130525930535052 },
    denoised0: [-0.02834825082096475],
  },
  '1/sample': {
    timesteps: [999],
    sum: 7.578719988002619,
    absSum: 8.83746192029366,
    at: { 0: -0.04001000245489484, 1: 0.023626362695859708, 37: 0.014535453388609064, 127: 0.0963536371538649 },
    denoised0: [-0.04001000245489484],
  },
  '2/epsilon': {
    timesteps: [999, 499],
    sum: -128.23494186053074,
    absSum: 815.9930122734397,
    at: { 0: -14.433274733071016, 1: -5.934664311667879, 37: -5.555817012220313, 127: 3.3329486723870025 },
    denoised0: [-14.064081733824946, -14.433274733071016],
  },
  '2/v_prediction': {
    timesteps: [999, 499],
    sum: -8.301515217378622,
    absSum: 26.05510860164455,
    at: { 0: -0.42895440312936867, 1: -0.22494710742756913, 37: 0.15133634539956015, 127: -0.10507708428169406 },
    denoised0: [-0.02834825082096475, -0.42895440312936867],
  },
  '2/sample': {
    timesteps: [999, 499],
    sum: 7.315312495035775,
    absSum: 8.082116898885316,
    at: { 0: -0.032108330384640865, 1: 0.018461630298095093, 37: 0.10297261860646688, 127: 0.05062395784730293 },
    denoised0: [-0.04001000245489484, -0.032108330384640865],
  },
  '4/epsilon': {
    timesteps: [999, 759, 499, 259],
    sum: -144.3501000438333,
    absSum: 717.6464386580435,
    at: { 0: -14.726550440491756, 1: -5.211028762399009, 37: -3.6966029916373158, 127: 1.1075367874467328 },
    denoised0: [-14.064081733824946, -16.786020640405756, -15.120111930493916, -14.726550440491756],
  },
  '4/v_prediction': {
    timesteps: [999, 759, 499, 259],
    sum: -8.906270195927462,
    absSum: 26.160360289258037,
    at: { 0: -0.32783704456249935, 1: 0.05421711608704412, 37: 0.25712512368117024, 127: -0.2015525493209782 },
    denoised0: [-0.02834825082096475, -0.18459334088523302, -0.006254639343269859, -0.32783704456249935],
  },
  '4/sample': {
    timesteps: [999, 759, 499, 259],
    sum: 7.282311346181244,
    absSum: 7.303785334505035,
    at: { 0: 0.019481556619208605, 1: 0.05599501411902746, 37: 0.10714203987227716, 127: 0.06334135212460135 },
    denoised0: [-0.04001000245489484, -0.04067859510669884, 0.0717331395332592, 0.019481556619208605],
  },
  '8/epsilon': {
    timesteps: [999, 879, 759, 639, 499, 379, 259, 139],
    sum: -171.73836792369588,
    absSum: 558.413914206935,
    at: { 0: -12.588194335995238, 1: -5.1936858389581895, 37: -2.3646859375715605, 127: -1.434374700634291 },
    denoised0: [
      -14.064081733824946, -19.85359688731135, -17.311511949316255, -17.433894722854195, -15.220987526999716,
      -14.494977492741649, -13.084235800765414, -12.588194335995238,
    ],
  },
  '8/v_prediction': {
    timesteps: [999, 879, 759, 639, 499, 379, 259, 139],
    sum: -9.71786254785108,
    absSum: 25.23951815335233,
    at: { 0: 0.20019571654532659, 1: -0.14800394745301884, 37: -0.3365886303509728, 127: 0.18743212700381057 },
    denoised0: [
      -0.02834825082096475, -0.09140128549110187, -0.030432658976798654, -0.21843578841627095, 0.11106947824677901,
      -0.14223202754411113, 0.2733716637399363, 0.20019571654532659,
    ],
  },
  '8/sample': {
    timesteps: [999, 879, 759, 639, 499, 379, 259, 139],
    sum: 7.245728820291175,
    absSum: 7.245728820291175,
    at: { 0: 0.061254974975393985, 1: 0.07515629613680597, 37: 0.03594813809977451, 127: 0.09034335669778366 },
    denoised0: [
      -0.04001000245489484, -0.040859216937420194, 0.0782906629872134, -0.0031604494810764166, 0.10204014408523818,
      0.03617079001672889, 0.10743497753402563, 0.061254974975393985,
    ],
  },
};

function expectClose(actual: number, expected: number, rel: number): void {
  expect(Math.abs(actual - expected)).toBeLessThanOrEqual(rel * Math.max(1, Math.abs(expected)));
}

function runLibrary(
  steps: number,
  pred: PredictionType,
  dtype: 'float32' | 'float64' = 'float64',
  noiseCalls?: number[],
) {
  return sample((x, t) => modelOutput(x, t), {
    steps,
    shape: SHAPE,
    predictionType: pred,
    dtype,
    initialLatent: initialLatent(),
    noise: (i) => {
      noiseCalls?.push(i);
      return stepNoise(i);
    },
  });
}

describe('deterministic LCM trajectory', () => {
  for (const steps of STEP_COUNTS) {
    for (const pred of PREDICTIONS) {
      const key = `${steps}/${pred}`;
      it(`${key}: matches the float64 re-implementation at every step`, () => {
        const ref = refRun(steps, pred);
        const res = runLibrary(steps, pred);
        expect(res.timesteps).toEqual(ref.timesteps);
        expect(res.trajectory).toHaveLength(steps);
        res.trajectory.forEach((st, i) => {
          expect(st.t).toBe(ref.timesteps[i]);
          for (let n = 0; n < N_ELEM; n++) {
            expectClose(st.denoised[n]!, ref.denoised[i]![n]!, 1e-12);
            expectClose(st.sample[n]!, ref.samples[i]![n]!, 1e-12);
          }
        });
        for (let n = 0; n < N_ELEM; n++) expectClose(res.latent[n]!, ref.final[n]!, 1e-12);
      });

      it(`${key}: matches the numpy reference literals`, () => {
        const lit = NUMPY[key]!;
        const res = runLibrary(steps, pred);
        expect(res.timesteps).toEqual(lit.timesteps);
        let sum = 0;
        let absSum = 0;
        for (const v of res.latent) {
          sum += v;
          absSum += Math.abs(v);
        }
        expectClose(sum, lit.sum, 1e-10);
        expectClose(absSum, lit.absSum, 1e-10);
        for (const [j, v] of Object.entries(lit.at)) expectClose(res.latent[Number(j)]!, v, 1e-10);
        res.trajectory.forEach((st, i) => {
          expectClose(st.denoised[0]!, lit.denoised0[i]!, 1e-10);
        });
      });
    }
  }

  it('consumes exactly N − 1 noise arrays, z_0 … z_{N−2}, and returns the last denoised', () => {
    for (const steps of STEP_COUNTS) {
      const calls: number[] = [];
      const res = runLibrary(steps, 'epsilon', 'float64', calls);
      expect(calls).toEqual(Array.from({ length: steps - 1 }, (_, i) => i));
      const last = res.trajectory[steps - 1]!;
      expect(last.noise).toBeUndefined();
      expect(Array.from(last.sample)).toEqual(Array.from(last.denoised));
      expect(Array.from(res.latent)).toEqual(Array.from(last.denoised));
      res.trajectory.slice(0, -1).forEach((st, i) => {
        expect(Array.from(st.noise!)).toEqual(Array.from(stepNoise(i)));
      });
    }
  });

  it('the loop equals calling LCMScheduler.step by hand', () => {
    const scheduler = new LCMScheduler();
    const ts = scheduler.setTimesteps(4);
    let x: Latent = initialLatent();
    ts.forEach((t, i) => {
      const out = scheduler.step(modelOutput(x, t), t, x, i < ts.length - 1 ? { noise: stepNoise(i) } : {});
      x = out.prevSample;
    });
    const res = runLibrary(4, 'epsilon');
    expect(Array.from(res.latent)).toEqual(Array.from(x));
  });

  it('float32 latents stay Float32Array and agree with float64 to float32 precision', () => {
    for (const pred of PREDICTIONS) {
      const r64 = runLibrary(8, pred, 'float64');
      const r32 = runLibrary(8, pred, 'float32');
      expect(r32.latent).toBeInstanceOf(Float32Array);
      r32.trajectory.forEach((st) => {
        expect(st.denoised).toBeInstanceOf(Float32Array);
        expect(st.sample).toBeInstanceOf(Float32Array);
      });
      let scale = 0;
      for (const v of r64.latent) scale = Math.max(scale, Math.abs(v));
      for (let n = 0; n < N_ELEM; n++)
        expect(Math.abs(r32.latent[n]! - r64.latent[n]!)).toBeLessThan(1e-5 * Math.max(1, scale));
    }
  });

  it('the three prediction types give different trajectories (the test would notice a mix-up)', () => {
    const finals = PREDICTIONS.map((p) => runLibrary(4, p).latent[0]!);
    expect(new Set(finals).size).toBe(3);
  });
});
