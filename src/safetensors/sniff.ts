/**
 * What a file is when it is not safetensors: named from its first bytes, so the error says "this is a PyTorch
 * pickle, convert it first" instead of "the header length is 9 EB". Consulted only once the safetensors header
 * has already failed validation, so a valid file is never second-guessed.
 */

/** A recognised non-safetensors file kind. */
export interface SniffedKind {
  /** Stable identifier ('pickle', 'torch-zip', 'gguf', 'onnx', 'json', 'html', 'git-lfs-pointer', …). */
  readonly kind: string;
  /** What the file is, for the message. */
  readonly what: string;
  /** What to do about it. */
  readonly fix: string;
}

/** Bytes the sniffer looks at. */
export const SNIFF_BYTES = 64;

const CONVERT =
  'convert it to safetensors first (e.g. load it with torch and save it with safetensors.torch.save_file)';

const startsWith = (b: Uint8Array, sig: readonly number[], at = 0): boolean =>
  b.length >= at + sig.length && sig.every((x, i) => b[at + i] === x);

const ascii = (s: string): number[] => [...s].map((c) => c.charCodeAt(0));

/** The first bytes as text (latin-1), leading whitespace and a UTF-8 byte order mark removed, lower-cased. */
function textStart(b: Uint8Array): string {
  let i = startsWith(b, [0xef, 0xbb, 0xbf]) ? 3 : 0;
  while (i < b.length && (b[i] === 0x20 || b[i] === 0x09 || b[i] === 0x0a || b[i] === 0x0d)) i++;
  let s = '';
  for (let j = i; j < b.length; j++) s += String.fromCharCode(b[j] ?? 0);
  return s.toLowerCase();
}

/** Printable ASCII with line breaks (the start of any config, page or pointer file). */
function looksLikeText(b: Uint8Array): boolean {
  if (b.length === 0) return false;
  for (const x of b) {
    if (x === 0 || x >= 0x7f) return false;
    if (x < 0x20 && x !== 0x09 && x !== 0x0a && x !== 0x0d) return false;
  }
  return true;
}

/** ONNX ModelProto: field 1 (ir_version, varint) first, then another ModelProto field tag. */
function looksLikeOnnx(b: Uint8Array): boolean {
  if (b[0] !== 0x08) return false;
  const version = b[1] ?? 0;
  if (version < 1 || version > 0x20) return false;
  return [0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42].includes(b[2] ?? 0);
}

const KINDS: readonly { test: (b: Uint8Array, size: number) => boolean; kind: SniffedKind }[] = [
  {
    test: (_b, size) => size === 0,
    kind: {
      kind: 'empty',
      what: 'an empty file (0 bytes)',
      fix: 'the download or copy did not complete; fetch it again',
    },
  },
  {
    test: (b) => startsWith(b, ascii('PK\x03\x04')),
    kind: {
      kind: 'torch-zip',
      what: 'a ZIP archive — a PyTorch checkpoint written by torch.save (.ckpt / .pt / .pth / .bin)',
      fix: CONVERT,
    },
  },
  {
    test: (b) => b[0] === 0x80 && (b[1] ?? 0) >= 2 && (b[1] ?? 0) <= 5,
    kind: {
      kind: 'pickle',
      what: 'a Python pickle — a legacy PyTorch checkpoint (.ckpt / .pt / .bin)',
      fix: `${CONVERT}; pickles can run code when loaded, so only convert files you trust`,
    },
  },
  {
    test: (b) => startsWith(b, ascii('GGUF')) || startsWith(b, ascii('GGML')) || startsWith(b, ascii('GGJT')),
    kind: {
      kind: 'gguf',
      what: 'a GGUF/GGML file (llama.cpp / stable-diffusion.cpp, usually quantized)',
      fix: 'use the original safetensors release of the model; quantized GGUF weights cannot be merged exactly',
    },
  },
  {
    test: (b) => startsWith(b, [0x93, ...ascii('NUMPY')]),
    kind: { kind: 'npy', what: 'a NumPy .npy array', fix: CONVERT },
  },
  {
    test: (b) => startsWith(b, [0x89, ...ascii('HDF'), 0x0d, 0x0a, 0x1a, 0x0a]),
    kind: { kind: 'hdf5', what: 'an HDF5 file (Keras .h5)', fix: CONVERT },
  },
  {
    test: (b) => startsWith(b, [0x1f, 0x8b]),
    kind: { kind: 'gzip', what: 'a gzip-compressed file', fix: 'decompress it first (gunzip)' },
  },
  {
    test: (b) => startsWith(b, ascii('7z\xbc\xaf\x27\x1c')) || startsWith(b, ascii('Rar!')),
    kind: { kind: 'archive', what: 'a 7-Zip / RAR archive', fix: 'extract the .safetensors file from it first' },
  },
  {
    test: (b) => textStart(b).startsWith('version https://git-lfs'),
    kind: {
      kind: 'git-lfs-pointer',
      what: 'a Git LFS pointer (a small text file standing in for the weights)',
      fix: "fetch the real file ('git lfs pull', or download it from the model page)",
    },
  },
  {
    test: (b) => /^(<!doctype html|<html|<head|<body|<\?xml)/.test(textStart(b)),
    kind: {
      kind: 'html',
      what: 'an HTML/XML page — most likely an error or login page saved in place of the download',
      fix: 'download the file again (check the URL, and whether the site needs a login or token)',
    },
  },
  {
    test: (b) => /^[{[]/.test(textStart(b)),
    kind: {
      kind: 'json',
      what: 'a JSON text file (a config such as config.json or model_index.json, not weights)',
      fix: 'pass the .safetensors weights file instead',
    },
  },
  {
    test: (b) => looksLikeOnnx(b),
    kind: { kind: 'onnx', what: 'an ONNX model', fix: 'use the PyTorch/diffusers release of the model in safetensors' },
  },
  {
    test: (b) => looksLikeText(b),
    kind: { kind: 'text', what: 'a text file, not binary weights', fix: 'pass the .safetensors weights file instead' },
  },
];

/**
 * Name the kind of a file from its first bytes (at least SNIFF_BYTES when the file is that long) and its size,
 * or undefined when the bytes say nothing recognisable.
 */
export function sniffFileKind(firstBytes: Uint8Array, size: number): SniffedKind | undefined {
  return KINDS.find((k) => k.test(firstBytes, size))?.kind;
}
