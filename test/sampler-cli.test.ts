/** `lora-mix sample`: the Gaussian verification sampler on the command line. */
import { describe, expect, it } from 'vitest';
import { type CliRun, runCli } from './cli-helpers.js';
import type { GaussianVerifyReport } from '../src/sampler/index.js';

function run(argv: string[]): Promise<CliRun> {
  return runCli(argv, process.cwd());
}

describe('lora-mix sample', () => {
  it('is listed and has help', async () => {
    expect((await run(['--help'])).out).toMatch(/\bsample\b/);
    const help = await run(['sample', '--help']);
    expect(help.code).toBe(0);
    expect(help.out).toContain('--denoiser');
    expect(help.out).toContain('tweedie');
  });

  it('prints the 4-step timesteps, a per-step table and the result against the target', async () => {
    const r = await run(['sample']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('timesteps: 999, 759, 499, 259');
    expect(r.out).toMatch(/^4\s+259\s/m);
    expect(r.out).toContain('target 0.5000');
    const m = /variance reached: ([\d.]+)% of the target \(exact ([\d.]+)%\)/.exec(r.out);
    expect(m).not.toBeNull();
    expect(Number(m![2])).toBeCloseTo(100, 1);
    expect(Math.abs(Number(m![1]) - 100)).toBeLessThan(12); // 5 standard errors of the variance at n = 4096 ≈ 11%
  });

  it('--json gives the full report; tweedie under-disperses', async () => {
    const r = await run([
      'sample',
      '--steps',
      '2',
      '--denoiser',
      'tweedie',
      '--mean',
      '-1',
      '--std',
      '0.3',
      '--n',
      '10000',
      '--seed',
      '5',
      '--json',
    ]);
    expect(r.code).toBe(0);
    const rep = JSON.parse(r.out) as GaussianVerifyReport;
    expect(rep.timesteps).toEqual([999, 499]);
    expect(rep.kind).toBe('tweedie');
    expect(rep.n).toBe(10000);
    expect(rep.target).toEqual({ mean: -1, std: 0.3 });
    expect(rep.steps).toHaveLength(2);
    expect(rep.final.variance).toBeLessThan(0.5 * 0.09);
    expect(Math.abs(rep.final.mean + 1)).toBeLessThan(0.05);
  });

  it('the prediction type does not change the result', async () => {
    const a = JSON.parse((await run(['sample', '--json', '--n', '256'])).out) as GaussianVerifyReport;
    const b = JSON.parse(
      (await run(['sample', '--json', '--n', '256', '--prediction-type', 'v_prediction'])).out,
    ) as GaussianVerifyReport;
    expect(b.final.mean).toBeCloseTo(a.final.mean, 9);
    expect(b.final.variance).toBeCloseTo(a.final.variance, 9);
  });

  it('rejects bad options with exit code 2 and a message naming the option', async () => {
    for (const [argv, needle] of [
      [['sample', '--steps', '0'], '--steps'],
      [['sample', '--steps', '51'], '--steps'],
      [['sample', '--std', '0'], '--std'],
      [['sample', '--n', '1'], '--n'],
      [['sample', '--denoiser', 'ddim'], '--denoiser'],
      [['sample', '--prediction-type', 'flow'], '--prediction-type'],
      [['sample', 'extra'], 'extra'],
      [['sample', '--bogus'], 'bogus'],
    ] as const) {
      const r = await run([...argv]);
      expect(r.code).toBe(2);
      expect(r.err).toContain(needle);
    }
  });
});
