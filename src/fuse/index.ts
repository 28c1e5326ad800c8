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
export {
  locate,
  findWeight,
  type OpenedBase,
  type BaseWeightFile,
  type WeightLocation,
  type FoundWeight,
} from './base.js';
export type * from './types.js';
export {
  extractLora,
  extractRules,
  EXTRACT_METADATA_KEY,
  DEFAULT_MAX_RANK,
  type ExtractOptions,
  type ExtractReport,
  type ExtractModuleReport,
  type ExtractProgress,
} from './extract.js';
export { formatExtractReport } from './extract-report.js';
export {
  unfuseLoras,
  ulpDistance,
  negateWeight,
  UNFUSE_METADATA_KEY,
  ULP_BUCKETS,
  type UnfuseOptions,
  type UnfuseReport,
  type UlpDistance,
} from './unfuse.js';
export { formatUnfuseReport } from './extract-report.js';
export { needsBase, resolveBaseTerms } from './base-terms.js';
