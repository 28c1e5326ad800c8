/** LoRA arithmetic: deltas, scaling, exact weighted sums, optimal rank reduction, block weights. */
export type { F32Array, Lora, LoraModule, StoredTensor } from './types.js';
export { deltaOf, deltaShape, moduleDims, rankOf, scaleOf, contiguousValues, type ModuleDims } from './delta.js';
export { scaleLora, negateLora, scaleModule } from './scale.js';
export { assertLora, assertLoraList, describeValue, isLora } from './validate.js';
export {
  mergeLoras,
  resizeLora,
  planMerge,
  assembleMerge,
  exactModule,
  factorTerms,
  MERGE_METADATA_KEY,
  VERSION_METADATA_KEY,
  type MergeWeight,
  type WeightSpec,
  type MergeBaseOptions,
  methodRequest,
  type MergeOptions,
  type MergeResult,
  type MergeReport,
  type ModuleMergeReport,
  type MergePlan,
  type MergePart,
  type PlannedMergeModule,
} from './merge.js';
export {
  RankReducer,
  chooseRank,
  truncationStats,
  reduceModule,
  NOISE_FLOOR,
  ABSOLUTE_NOISE,
  type FactorTerm,
  type ModuleSpectrum,
  type RankTarget,
  type ReducedFactors,
  type ReduceOutcome,
} from './reduce.js';
export { wasmProduct, type ProductF32 } from './product.js';
export {
  parseBlockWeights,
  compileBlockWeights,
  normalizeBlockId,
  blockVectorForms,
  modulesByBlock,
  SD15_ATTENTION_BLOCKS,
  SDXL_ATTENTION_BLOCKS,
  type BlockWeights,
  type BlockSpec,
  type BlockWeightFn,
} from './blocks.js';
export type {
  Term,
  TermKind,
  LowRankTerm,
  HadamardTerm,
  KroneckerTerm,
  KroneckerSide,
  DenseTerm,
  DoraTerm,
  GloraTerm,
  Factors,
} from './types.js';
export { stackFactors, type StackPart } from './stack.js';
export {
  termKind,
  termLabel,
  kindLabel,
  termShape,
  termDims,
  termRankBound,
  termNeedsBase,
  termDelta,
  termFactors,
  termBias,
  withBase,
  asLowRank,
  lowRankLora,
  modulesNeedingBase,
  requirePlain,
  kindCounts,
  type PlainFactors,
} from './terms/index.js';
export { truncatedSvd, jsProduct, type TruncatedSvd, type TruncatedSvdOptions } from './svd.js';
export {
  componentOf,
  componentFactor,
  parseComponentStrengths,
  describeComponents,
  type ComponentStrengths,
} from './components.js';
export {
  METHODS,
  METHOD_NAMES,
  PARAMS,
  resolveMethod,
  methodsTable,
  weightedSum,
  disjointMerge,
  slerpDeltas,
  type MergeMethod,
  type MethodOptions,
  type MethodOptionsOf,
  type MethodParamValues,
  type MethodSpec,
  type DenseMethod,
  type ResolvedMethod,
} from './methods.js';
export { magnitudePrune, randomPrune } from './sparsify.js';
export { methodDelta, methodModule, type MethodModuleRequest, type MethodMember } from './method-module.js';
export {
  chooseExtractRank,
  describeRule,
  ruleCap,
  validateRule,
  KOHYA_MIN_SV,
  type RankRule,
} from './rank-rule.js';
export {
  analyzeLoras,
  type AnalyzeInput,
  type AnalyzeOptions,
  type AnalyzeReport,
  type ModuleAnalysis,
  type BlockAnalysis,
  type Figures,
} from './analyze.js';
export { formatAnalyzeReport } from './analyze-format.js';
export { analyzeHtml } from './analyze-html.js';
export {
  kohyaResize,
  kohyaRank,
  checkResizeOptions,
  type ResizeRule,
  type ResizeOptions,
  type ResizeReport,
  type ModuleResizeReport,
} from './resize.js';
export { lbwBlocks } from './lbw.js';
export {
  conversionReport,
  formatConversionReport,
  summarizeConversions,
  type ConversionReport,
  type ModuleConversion,
} from './conversion-report.js';
export { conversionRecord, convertLora, type ConvertResult } from './convert.js';
export { convertModule, ConvertScratch, type ModuleConvertOutcome } from './convert-module.js';
