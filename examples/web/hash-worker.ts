/**
 * The page's hashing thread: the SHA-256 of each added file (recorded in provenance, used to flag duplicates by
 * content), computed here while the page's worker decodes the same file, so the hash (plain JavaScript — WebCrypto
 * only digests one whole buffer) runs on another core instead of after the decode. The file is read in 8 MiB
 * slices, the next one requested while the current one is hashed; memory stays at two slices per file.
 */
import { createSha256 } from '../../src/core/sha256.js';

/** A request: hash `file`, answer with `id`. */
export interface HashRequest {
  id: number;
  file: Blob;
}
export type HashAnswer = { id: number; sha256: string } | { id: number; error: string };

const SLICE = 8 << 20;

interface Scope {
  postMessage(message: HashAnswer): void;
  onmessage: ((event: MessageEvent<HashRequest>) => void) | null;
}
const scope = self as unknown as Scope;

async function hashFile(file: Blob): Promise<string> {
  const hash = createSha256();
  const read = (at: number) => file.slice(at, Math.min(file.size, at + SLICE)).arrayBuffer();
  let next = file.size > 0 ? read(0) : null;
  for (let at = 0; next; ) {
    const bytes = new Uint8Array(await next);
    at += bytes.byteLength;
    next = at < file.size ? read(at) : null;
    hash.update(bytes);
  }
  return hash.hex();
}

/** Files are hashed one after another, in the order they were added. */
let queue: Promise<void> = Promise.resolve();
scope.onmessage = (event) => {
  const { id, file } = event.data;
  queue = queue.then(async () => {
    try {
      scope.postMessage({ id, sha256: await hashFile(file) });
    } catch (e) {
      scope.postMessage({ id, error: e instanceof Error ? e.message : String(e) });
    }
  });
};
