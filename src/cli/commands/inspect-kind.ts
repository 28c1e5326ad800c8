/**
 * The LoRA-aware part of `lora-mix inspect`: what kind of file it is (LoRA, base checkpoint, a refused adapter
 * type, or other safetensors), with the LoRA summary or the checkpoint's detected architecture and naming.
 */
import { LoraMixError } from '../../core/errors.js';
import { describeLora, detectFileKind, formatLoraSummary, type LoraSummary } from '../../formats/index.js';
import { ARCH_LABEL } from '../../layout/index.js';
import type { SafetensorsFile } from '../../safetensors/index.js';

export type KindReport =
  | { kind: 'lora'; lora: LoraSummary }
  | { kind: 'lora'; error: { code: string; message: string; details: Readonly<Record<string, unknown>> } }
  | { kind: 'unsupported-adapter'; adapter: string; example: string; message: string }
  | {
      kind: 'checkpoint';
      checkpoint: {
        arch: string;
        size: string;
        naming: string;
        /** Single files: the prefix of the UNet keys ('model.diffusion_model.', 'diffusion_model.' or ''). */
        unetPrefix: string;
        components: string[];
        hasVae: boolean;
        extraKeys: number;
      };
    }
  | { kind: 'other'; reason: string };

/** Classify a file; a LoRA that cannot be decoded is reported with its error instead of throwing. */
export async function inspectKind(file: SafetensorsFile): Promise<KindReport> {
  try {
    const k = await detectFileKind(file);
    switch (k.kind) {
      case 'lora':
        return { kind: 'lora', lora: describeLora(k.plan) };
      case 'unsupported-adapter':
        return { kind: k.kind, adapter: k.adapter, example: k.example, message: k.error.message };
      case 'checkpoint': {
        const d = k.detection;
        return {
          kind: 'checkpoint',
          checkpoint: {
            arch: d.arch,
            size: d.size,
            naming: d.naming,
            unetPrefix: d.unetPrefix,
            components: [...d.components],
            hasVae: d.hasVae,
            extraKeys: d.extraKeys.length,
          },
        };
      }
      case 'other':
        return { kind: 'other', reason: k.reason };
    }
  } catch (e) {
    if (e instanceof LoraMixError)
      return { kind: 'lora', error: { code: e.code, message: e.message, details: e.details } };
    throw e;
  }
}

/** Text lines for the kind report (printed above the header listing). */
export function formatKind(r: KindReport): string {
  switch (r.kind) {
    case 'lora':
      return 'lora' in r
        ? formatLoraSummary(r.lora)
        : `kind:        LoRA — cannot be used: error ${r.error.code}: ${r.error.message}`;
    case 'unsupported-adapter':
      return `kind:        ${r.adapter} adapter — not a LoRA; lora-mix refuses it (e.g. '${r.example}')`;
    case 'checkpoint': {
      const c = r.checkpoint;
      return [
        `kind:        base checkpoint`,
        `arch:        ${ARCH_LABEL[c.arch as keyof typeof ARCH_LABEL] ?? c.arch}${c.size === 'tiny' ? ' (tiny test layout)' : ''}`,
        `naming:      ${c.naming}${c.naming === 'single-file' ? ` (UNet keys ${c.unetPrefix === '' ? 'without a prefix' : `under '${c.unetPrefix}'`})` : ''}`,
        `components:  ${c.components.join(', ')}${c.hasVae ? ', vae' : ''}`,
        ...(c.extraKeys > 0 ? [`extra keys:  ${c.extraKeys} (tensors the layout does not list)`] : []),
      ].join('\n');
    }
    case 'other':
      return `kind:        other safetensors (neither a LoRA nor a base checkpoint): ${r.reason}`;
  }
}
