/**
 * Every failure lora-mix reports is a `LoraMixError` with a stable `code`.
 * Subclasses group the codes by the part of the library that raises them, so callers can
 * `instanceof`-check a family and switch on `code` for the exact case.
 *
 * Messages name the file, the key, what was expected and what was found.
 */

export type SafetensorsErrorCode =
  | 'SAFETENSORS_TRUNCATED'
  | 'SAFETENSORS_NOT_SAFETENSORS'
  | 'SAFETENSORS_HEADER_TOO_LARGE'
  | 'SAFETENSORS_HEADER_INVALID_UTF8'
  | 'SAFETENSORS_HEADER_INVALID_JSON'
  | 'SAFETENSORS_HEADER_NOT_OBJECT'
  | 'SAFETENSORS_DUPLICATE_KEY'
  | 'SAFETENSORS_TENSOR_INVALID'
  | 'SAFETENSORS_UNKNOWN_DTYPE'
  | 'SAFETENSORS_SHAPE_INVALID'
  | 'SAFETENSORS_BYTE_LENGTH_MISMATCH'
  | 'SAFETENSORS_OFFSETS_INVALID'
  | 'SAFETENSORS_METADATA_INVALID'
  | 'SAFETENSORS_TENSOR_NOT_FOUND'
  | 'SAFETENSORS_DTYPE_NOT_FLOAT'
  | 'SAFETENSORS_BUFFER_TOO_SMALL'
  | 'SAFETENSORS_WRITE_INVALID';

export type FormatErrorCode =
  | 'FORMAT_UNKNOWN'
  | 'FORMAT_UNSUPPORTED_ADAPTER'
  | 'FORMAT_NOT_A_LORA'
  | 'FORMAT_NOT_A_CHECKPOINT'
  | 'FORMAT_KEY_UNRESOLVED'
  | 'FORMAT_INCOMPLETE_MODULE'
  | 'FORMAT_MIXED'
  | 'FORMAT_METADATA_INVALID'
  | 'FORMAT_CANNOT_ENCODE'
  | 'FORMAT_NONFINITE'
  | 'FORMAT_STACK_INVALID';

export type LoraErrorCode =
  | 'LORA_RANK_MISMATCH'
  | 'LORA_SHAPE_MISMATCH'
  | 'LORA_UNMATCHED_MODULES'
  | 'LORA_EMPTY'
  | 'LORA_DTYPE_OVERFLOW'
  | 'LORA_NUMERICAL_FAILURE'
  | 'LORA_WORKER_FAILED'
  | 'LORA_ZERO_DELTA'
  | 'LORA_NEEDS_BASE'
  | 'LORA_CANNOT_UNFUSE';

export type ArchErrorCode = 'ARCH_MISMATCH' | 'ARCH_UNDETECTED' | 'ARCH_LAYOUT_INVALID';

export type IoErrorCode =
  | 'OUTPUT_WOULD_OVERWRITE_INPUT'
  | 'OUTPUT_EXISTS'
  | 'IO_READ_FAILED'
  | 'IO_WRITE_FAILED'
  | 'INPUT_NOT_FOUND'
  | 'IO_NOT_A_REGULAR_FILE'
  | 'IO_NO_HOST';

export type FuseErrorCode =
  | 'FUSE_OVERFLOW'
  | 'FUSE_DTYPE_UNSUPPORTED'
  | 'FUSE_VERIFY_FAILED'
  | 'FUSE_BACKEND_UNAVAILABLE'
  | 'KERNEL_INVALID_JOB'
  | 'KERNEL_FAILED'
  | 'KERNEL_DISPOSED';

export type UsageErrorCode = 'USAGE' | 'USAGE_BAD_ARGUMENT';

/** A library function was called with arguments of the wrong type or shape (API misuse, not bad data). */
export type ArgumentErrorCode = 'ARG_INVALID' | 'ARG_MISSING';

/** An option has a value outside what it accepts, or options contradict each other. */
export type OptionErrorCode = 'OPTION_INVALID' | 'OPTION_CONFLICT';

export type SamplerErrorCode =
  | 'SAMPLER_INVALID_CONFIG'
  | 'SAMPLER_INVALID_STEPS'
  | 'SAMPLER_INVALID_TIMESTEPS'
  | 'SAMPLER_TIMESTEPS_NOT_SET'
  | 'SAMPLER_TIMESTEP_NOT_SCHEDULED'
  | 'SAMPLER_SHAPE_MISMATCH'
  | 'SAMPLER_NOISE_MISSING'
  | 'SAMPLER_INVALID_MODEL_OUTPUT';

export type ErrorCode =
  | SafetensorsErrorCode
  | FormatErrorCode
  | LoraErrorCode
  | ArchErrorCode
  | IoErrorCode
  | FuseErrorCode
  | UsageErrorCode
  | ArgumentErrorCode
  | OptionErrorCode
  | SamplerErrorCode;

export class LoraMixError extends Error {
  readonly code: ErrorCode;
  /** Structured details for programs (file, key, expected, found, lists of modules…). */
  readonly details: Readonly<Record<string, unknown>>;
  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }
}

/** The file is not a valid safetensors file, or a write request is malformed. */
export class SafetensorsError extends LoraMixError {
  declare readonly code: SafetensorsErrorCode;
  constructor(code: SafetensorsErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(code, message, details);
  }
}

/** The keys of a file do not form a LoRA / checkpoint format lora-mix understands. */
export class FormatError extends LoraMixError {
  declare readonly code: FormatErrorCode;
  constructor(code: FormatErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(code, message, details);
  }
}

/** LoRA factors are inconsistent, or an arithmetic request is invalid. */
export class LoraError extends LoraMixError {
  declare readonly code: LoraErrorCode;
  constructor(code: LoraErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(code, message, details);
  }
}

/**
 * A LoraError raised while a file is decoded and checked (factors whose ranks or shapes do not fit together or fit
 * no layout) says the input file is wrong, not that arithmetic on valid inputs failed: it is re-raised with the same
 * code and message and `details.input: true`, which the CLI maps to the input-content exit code (docs/errors.md).
 * Other errors are returned unchanged.
 */
export function asInputContentError(e: unknown): unknown {
  if (!(e instanceof LoraError) || e.details.input === true) return e;
  const marked = new LoraError(e.code, e.message, { ...e.details, input: true });
  marked.stack = e.stack;
  return marked;
}

/** True for a LoraError that describes an input file's content (see asInputContentError). */
export function isInputContentError(e: unknown): boolean {
  return e instanceof LoraError && e.details.input === true;
}

/** Architectures disagree or cannot be determined. */
export class ArchError extends LoraMixError {
  declare readonly code: ArchErrorCode;
  constructor(code: ArchErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(code, message, details);
  }
}

/** Reading or writing files failed, or a write would lose data. */
export class IoError extends LoraMixError {
  declare readonly code: IoErrorCode;
  constructor(
    code: IoErrorCode,
    message: string,
    details: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(code, message, details, options);
  }
}

/** Fusing into a base checkpoint failed. */
export class FuseError extends LoraMixError {
  declare readonly code: FuseErrorCode;
  constructor(code: FuseErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(code, message, details);
  }
}

/** The LCM sampler was configured or called inconsistently (bad step count, timesteps, shapes, noise). */
export class SamplerError extends LoraMixError {
  declare readonly code: SamplerErrorCode;
  constructor(code: SamplerErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(code, message, details);
  }
}

/** The command line is wrong. */
export class UsageError extends LoraMixError {
  declare readonly code: UsageErrorCode;
  constructor(message: string, code: UsageErrorCode = 'USAGE', details: Record<string, unknown> = {}) {
    super(code, message, details);
  }
}

/** A function of the library was called with an argument of the wrong type or shape (API misuse). */
export class ArgumentError extends LoraMixError {
  declare readonly code: ArgumentErrorCode;
  constructor(code: ArgumentErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(code, message, details);
  }
}

/** An option value is out of range, unknown, or contradicts another option. */
export class OptionError extends LoraMixError {
  declare readonly code: OptionErrorCode;
  constructor(code: OptionErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(code, message, details);
  }
}

/**
 * Rebuild a typed error from its code (errors crossing a worker-thread boundary arrive as plain data): the code's
 * prefix names the family. Unknown codes come back undefined.
 */
export function errorFromCode(
  code: string,
  message: string,
  details: Record<string, unknown> = {},
): LoraMixError | undefined {
  const c = code as never;
  if (code.startsWith('SAFETENSORS_')) return new SafetensorsError(c, message, details);
  if (code.startsWith('FORMAT_')) return new FormatError(c, message, details);
  if (code.startsWith('LORA_')) return new LoraError(c, message, details);
  if (code.startsWith('ARCH_')) return new ArchError(c, message, details);
  if (code.startsWith('FUSE_') || code.startsWith('KERNEL_')) return new FuseError(c, message, details);
  if (code.startsWith('ARG_')) return new ArgumentError(c, message, details);
  if (code.startsWith('OPTION_')) return new OptionError(c, message, details);
  if (code.startsWith('SAMPLER_')) return new SamplerError(c, message, details);
  if (code.startsWith('IO_') || code.startsWith('INPUT_') || code.startsWith('OUTPUT_'))
    return new IoError(c, message, details);
  if (code.startsWith('USAGE')) return new UsageError(message, c, details);
  return undefined;
}
