/**
 * Functional checks of written files: verifyFusion (probe vectors through every fused module, against the base and
 * the LoRAs) and the verification network (real layout modules sampled with the LCM sampler, fused vs runtime LoRA).
 */
export { verifyFusion, describeFailures } from './fusion.js';
export { formatVerifyReport, fmtRatio } from './report.js';
export type { VerifyOptions, VerifyReport, ModuleVerifyReport } from './types.js';
export {
  verifyNetSpec,
  verifyNetFromWeights,
  loadVerifyNet,
  withRuntimeLoras,
  withoutRuntimeLoras,
  verifyDenoiser,
  compareVerifyNets,
  checkFusedSampling,
  type VerifyModule,
  type VerifyNetSpec,
  type VerifyNetSpecOptions,
  type RuntimeLoraTerm,
  type VerifyLayer,
  type VerifyNet,
  type VerifyCheckpoint,
  type LoadVerifyNetOptions,
  type VerifyDenoiserOptions,
  type CompareVerifyOptions,
  type VerifyNetComparison,
  type FusedSamplingOptions,
  type LoraEffect,
  type FusedSamplingCheck,
} from '../verify/network.js';
