/**
 * The CLI's exit status: one code per error family, decided in one place (docs/errors.md has the table and every
 * code). The same mistake gives the same status in every command.
 */
import {
  ArchError,
  ArgumentError,
  FormatError,
  FuseError,
  IoError,
  isInputContentError,
  LoraError,
  OptionError,
  SafetensorsError,
  SamplerError,
  UsageError,
} from '../core/errors.js';

/** The CLI's exit codes: one per error family (docs/errors.md lists every code with its family). */
export const EXIT = {
  ok: 0,
  /**
   * The input's content is wrong: not safetensors, not a LoRA/checkpoint lora-mix reads, NaN/Inf values, wrong
   * architecture, factors of a file that do not fit together (a LoraError raised while decoding it).
   */
  input: 1,
  /** The command line or an API call is wrong: unknown flag, bad or repeated option value, bad weight, bad argument. */
  usage: 2,
  /** Reading or writing a file failed, or the output would replace an input / a special file. */
  io: 3,
  /** The LoRA arithmetic cannot give a valid result: factors that do not combine, overflow, an empty result. */
  arithmetic: 4,
  /** Fusing or a compute kernel failed (backend unavailable, worker died, fused values overflow). */
  fuse: 5,
  /** The LCM sampler was configured inconsistently. */
  sampler: 6,
  /** A bug: an error that is not one of lora-mix's typed errors. */
  internal: 70,
} as const;

/** The exit code for an error thrown by a command: decided by its family alone. */
export function exitCodeFor(e: unknown): number {
  if (e instanceof UsageError || e instanceof ArgumentError || e instanceof OptionError) return EXIT.usage;
  if (e instanceof SafetensorsError || e instanceof FormatError || e instanceof ArchError) return EXIT.input;
  // A LoraError raised while a file was decoded and checked says the file is wrong (rank / shape mismatch).
  if (isInputContentError(e)) return EXIT.input;
  if (e instanceof IoError) return EXIT.io;
  if (e instanceof LoraError) return EXIT.arithmetic;
  if (e instanceof FuseError) return EXIT.fuse;
  if (e instanceof SamplerError) return EXIT.sampler;
  const errno = e as NodeJS.ErrnoException | null;
  // A system error that escaped the typed wrappers (EACCES, ENOSPC, EPIPE …) is still an I/O failure.
  if (errno && typeof errno.code === 'string' && typeof errno.syscall === 'string') return EXIT.io;
  return EXIT.internal;
}
