/**
 * What kind of safetensors file is this? A LoRA (with its plan), an adapter type lora-mix refuses, a base
 * checkpoint (arch and naming from the layout detector), or something else. Used by `lora-mix inspect`.
 */
import { FormatError, LoraMixError } from '../core/errors.js';
import { detectCheckpoint, type CheckpointDetection } from '../layout/detect.js';
import { planLora, type DecodeOptions, type LoraFileLike, type LoraPlan } from './decode.js';
import { findUnsupportedAdapter, parseLoraKey } from './keys.js';

export type FileKind =
  | { readonly kind: 'lora'; readonly plan: LoraPlan }
  | {
      readonly kind: 'unsupported-adapter';
      readonly adapter: string;
      readonly example: string;
      readonly error: FormatError;
    }
  | { readonly kind: 'checkpoint'; readonly detection: CheckpointDetection }
  | { readonly kind: 'other'; readonly reason: string };

/**
 * Classify a file by its header. A file with LoRA keys is planned (errors in it — rank mismatches, unknown
 * modules — are thrown, since the user asked about a LoRA); a file without is tried as a base checkpoint.
 */
export async function detectFileKind(file: LoraFileLike, options: DecodeOptions = {}): Promise<FileKind> {
  const keys = file.tensors.map((t) => t.name);
  const adapter = findUnsupportedAdapter(keys);
  if (adapter) {
    const error = new FormatError(
      'FORMAT_UNSUPPORTED_ADAPTER',
      `${file.name}: ${adapter.signature.type} adapter (${adapter.count} key(s) such as '${adapter.example}'): ${adapter.signature.why}`,
      { file: file.name, adapter: adapter.signature.type, key: adapter.example },
    );
    return { kind: 'unsupported-adapter', adapter: adapter.signature.type, example: adapter.example, error };
  }
  if (
    keys.some((k) => {
      const p = parseLoraKey(k);
      return p !== undefined && p.role !== 'alpha' && p.role !== 'bias';
    })
  ) {
    return { kind: 'lora', plan: await planLora(file, options) };
  }
  try {
    return { kind: 'checkpoint', detection: detectCheckpoint(file.tensors, { source: file.name }) };
  } catch (e) {
    if (e instanceof LoraMixError && (e.code === 'FORMAT_NOT_A_CHECKPOINT' || e.code === 'ARCH_UNDETECTED')) {
      return { kind: 'other', reason: e.message };
    }
    throw e;
  }
}
