/**
 * Fusion: stream τ = Σ wᵢ·τᵢ into a base checkpoint (fuseLoras). Isomorphic: paths and diffusers folders work
 * through the fuse host that the Node entry installs (./host.ts); elsewhere pass ByteSources and a ByteSink.
 * The kernels are in src/kernels/, the checks of a written file in src/verify/.
 */
export {
  fuseLoras,
  planFusion,
  openBase,
  FUSE_METADATA_KEY,
  type Plan,
  type FilePlan,
  type Target,
  type FuseTerm,
  type OutTensor,
} from './fuse.js';
export { formatFuseReport, fmtBytes } from './report.js';
export { installFuseHost, currentFuseHost, type FuseHost } from './host.js';
export { openInputs, type FuseInput, type InputModule } from './inputs.js';
export { locate, type OpenedBase, type BaseWeightFile, type WeightLocation } from './base.js';
export type * from './types.js';
