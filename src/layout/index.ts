/** Layout tables: every module and state-dict key of SD1.5, SDXL and SSD-1B, generated from configs. */
export * from './types.js';
export {
  generateUNet,
  kohyaFlatten,
  inBlockId,
  outBlockId,
  UNET_SINGLE_FILE_PREFIX,
  type UNetConfig,
  type UNetTables,
  type DownBlockType,
  type UpBlockType,
  type MidBlockType,
  type TransformerDepth,
} from './unet.js';
export { generateTextEncoder, type TextEncoderConfig, type TextEncoderTables } from './text-encoders.js';
export {
  getLayout,
  buildLayout,
  moduleAliases,
  archConfig,
  blockIds,
  blockIdOf,
  familyOf,
  parseArch,
  loraParamCount,
  ARCH_LABEL,
  CANDIDATES,
  type ArchConfig,
  type Family,
} from './archs.js';
export {
  detectCheckpoint,
  detectDiffusersFolder,
  detectLoraArch,
  loraFactorMismatch,
  describeUnmatched,
  type TensorInfo,
  type CheckpointNaming,
  type CheckpointCandidate,
  type CheckpointDetection,
  type DetectOptions,
  type LoraFactorShapes,
  type UnmatchedModule,
  type LoraArchCandidate,
} from './detect.js';
export { singleFileTensors, diffusersTensors, type SingleFileTensor } from './state-dict.js';
