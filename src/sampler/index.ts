/**
 * Reference LCM sampler: diffusers-compatible LCMScheduler, the sampling loop, guidance helpers, a seeded
 * Gaussian source and Gaussian verification models. A leaf: only src/verify/ and the CLI build on it.
 * Core code: no Node imports, runs in a browser.
 */

export {
  LCMScheduler,
  LCM_DEFAULTS,
  computeBetas,
  computeAlphasCumprod,
  thresholdSample,
  type LCMSchedulerConfig,
  type BetaSchedule,
  type PredictionType,
  type SchedulePrecision,
  type SetTimestepsOptions,
  type StepOptions,
  type LCMStepOutput,
  type BoundaryScalings,
} from './lcm.js';
export { guidanceScaleEmbedding, classifierFreeGuidance, type GuidanceEmbeddingOptions } from './guidance.js';
export {
  sample,
  sampleAsync,
  type Denoiser,
  type AsyncDenoiser,
  type DenoiserExtras,
  type NoiseSource,
  type SampleOptions,
  type SampleStep,
  type SampleResult,
} from './sample.js';
export { Rng, allocLatent, type Latent, type LatentDType } from './rng.js';
export {
  gaussianDenoiser,
  gaussianX0Map,
  gaussianMoments,
  verifyGaussian,
  meanVar,
  type GaussianDenoiserKind,
  type GaussianTarget,
  type GaussianDenoiserOptions,
  type MomentStep,
  type GaussianVerifyOptions,
  type GaussianVerifyStep,
  type GaussianVerifyReport,
} from './gaussian.js';
