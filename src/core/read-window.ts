/**
 * Small reads served from large aligned windows of a ByteSource, the next window read ahead while the current one is
 * used. Sources whose every read has a fixed cost (a Blob slice in a browser is a round trip to the browser process:
 * milliseconds, whatever its size) would otherwise spend seconds on the hundreds of small tensor reads of one LoRA.
 * Reads of a window or more go straight to the source; memory stays bounded by `keep` windows.
 */
import type { ByteSource } from './bytes.js';

export interface ReadWindowOptions {
  /** Window size in bytes (default 8 MiB). */
  readonly window?: number;
  /** Windows kept at most, the one read ahead included (default 3). */
  readonly keep?: number;
}

/** `source` with its small reads served from cached windows; reads return fresh copies, like the source's own. */
export function windowedSource(source: ByteSource, options: ReadWindowOptions = {}): ByteSource {
  const size = source.byteLength;
  const window = Math.max(1, Math.floor(options.window ?? 8 << 20));
  const keep = Math.max(2, Math.floor(options.keep ?? 3));
  /**
   * Window index → its bytes and the reads using it now, least recently used first. A window in use is never
   * dropped (callers that read many ranges at once would otherwise fetch the same window again and again); beyond
   * those, `keep` windows stay.
   */
  const cache = new Map<number, { bytes: Promise<Uint8Array>; users: number }>();

  const trim = (): void => {
    for (const [k, entry] of cache) {
      if (cache.size <= keep) break;
      if (entry.users === 0) cache.delete(k);
    }
  };
  const acquire = (k: number, use: boolean): Promise<Uint8Array> => {
    let entry = cache.get(k);
    if (entry) cache.delete(k);
    else {
      const bytes = source.read(k * window, Math.min(size, (k + 1) * window));
      const made = { bytes, users: 0 };
      entry = made;
      // A failed window is forgotten, so a later read tries again (and reports its own error).
      bytes.catch(() => {
        if (cache.get(k) === made) cache.delete(k);
      });
    }
    if (use) entry.users++;
    cache.set(k, entry);
    trim();
    return entry.bytes;
  };
  const release = (k: number): void => {
    const entry = cache.get(k);
    if (entry) entry.users--;
  };

  const windowed: ByteSource = {
    name: source.name,
    byteLength: size,
    async read(start, end) {
      // Large reads, and ranges the source must refuse (it names the error), go straight to it.
      const valid =
        Number.isSafeInteger(start) && Number.isSafeInteger(end) && start >= 0 && start < end && end <= size;
      if (!valid || end - start >= window) return source.read(start, end);
      const first = Math.floor(start / window);
      const last = Math.floor((end - 1) / window);
      const parts = [acquire(first, true), ...(last > first ? [acquire(last, true)] : [])];
      // Read the following window ahead while the caller works on this one.
      if ((last + 1) * window < size && !cache.has(last + 1)) void acquire(last + 1, false).catch(() => undefined);
      try {
        const out = new Uint8Array(end - start);
        let at = 0;
        for (const [i, part] of parts.entries()) {
          const base = (first + i) * window;
          const bytes = await part;
          const from = Math.max(start, base) - base;
          const to = Math.min(end, base + bytes.byteLength) - base;
          out.set(bytes.subarray(from, to), at);
          at += to - from;
        }
        return out;
      } finally {
        release(first);
        if (last > first) release(last);
        trim();
      }
    },
    ...(source.close ? { close: () => source.close?.() ?? Promise.resolve() } : {}),
    ...(source.identity !== undefined ? { identity: source.identity } : {}),
  };
  return windowed;
}
