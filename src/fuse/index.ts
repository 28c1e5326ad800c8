/**
 * Fusion: stream τ = Σ wᵢ·τᵢ into a base checkpoint (fuseLoras) and check the result (verifyFusion). Core module:
 * paths and diffusers folders work in Node through ./node.js, loaded on demand; elsewhere pass ByteSources and a
 * ByteSink. The kernels are in ./kernels.
 */
export { fuseLoras, planFusion, openBase, FUSE_METADATA_KEY, type Plan, type FilePlan, type Target, type Term, type OutTensor } from './fuse.js';
export { verifyFusion, describeFailures } from './verify.js';
export { formatFuseReport, formatVerifyReport, fmtBytes } from './report.js';
export { openInputs, type FuseInput, type InputModule } from './inputs.js';
export { locate, type OpenedBase, type BaseWeightFile, type WeightLocation } from './base.js';
export type * from './types.js';
