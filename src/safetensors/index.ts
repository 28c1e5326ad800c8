/** The safetensors layer: a validating lazy reader, a streaming writer and dtype conversions. Core: no `node:`. */
export { parseSafetensors, SafetensorsFile } from './read.js';
export { parseHeader, MAX_HEADER_LENGTH, METADATA_KEY, type TensorInfo, type ParsedHeader } from './header.js';
export { scanKeys, type KeyScan, type DuplicateKey } from './json-keys.js';
export {
  writeSafetensors, writeToSink, serializeSafetensors, planSafetensors,
  type TensorToWrite, type TensorData, type TensorsToWrite, type WriteOptions, type WriteResult, type SafetensorsPlan,
} from './write.js';
export {
  type FloatDType, type TypedArrayFor, type AnyTypedArray, type BulkConvert,
  isFloatDType, LITTLE_ENDIAN,
  f16BitsToF32, f16BitsToF32Bits, bf16BitsToF32, f8e4m3BitsToF32, f8e5m2BitsToF32,
  f32ToF16Bits, f32ToBf16Bits, f32ToF8E4M3Bits, f32ToF8E5M2Bits,
  f16ToF32, f32ToF16, bf16ToF32, f32ToBf16, f8ToF32, f32ToF8,
  decodeToF32, decodeInto, encodeFromF32, bytesAsTyped, typedAsBytes,
  countOverflow, OVERFLOW_THRESHOLD, DTYPE_MAX,
  setBulkConvert, getBulkConvert, WASM_MIN_ELEMENTS,
} from '../core/dtype.js';
