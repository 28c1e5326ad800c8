/**
 * A ByteSource that computes the SHA-256 of the whole underlying file from the reads its user makes anyway, so a
 * file is hashed while it is decoded instead of being read a second time. Reads may come in any order: bytes are
 * fed to the hash in file order; a read that lands ahead of the hashed prefix is kept (up to `keepBytes`) until the
 * bytes before it arrive, and `finish()` reads only what nobody read (gaps, padding, tensors no one asked for).
 */
import type { ByteSource } from './bytes.js';
import { createSha256, type Sha256 } from './sha256.js';

export interface HashingSource extends ByteSource {
  /** Read whatever the user did not, and return the file's hex SHA-256. Call once, after the user's last read. */
  finish(): Promise<string>;
  /** Bytes read only for the hash (0 when the user's reads covered the file). */
  readonly extraBytes: number;
}

/** Chunk size for the reads `finish` makes itself. */
const CHUNK = 4 << 20;

/**
 * Wrap `source`. `keepBytes` bounds the bytes held for reads that came ahead of the hashed prefix (default 64 MiB);
 * past it, the gap is read at once so memory stays bounded. `newHash` makes the hash (default: the plain
 * JavaScript one; Node passes its native one).
 */
export function hashingSource(
  source: ByteSource,
  keepBytes = 64 << 20,
  newHash: () => Sha256 = createSha256,
): HashingSource {
  const hash = newHash();
  const size = source.byteLength;
  /** Bytes [0, cursor) are hashed. */
  let cursor = 0;
  /** Reads beyond the cursor, sorted by start. */
  const ahead: { start: number; bytes: Uint8Array }[] = [];
  let held = 0;
  let extra = 0;
  let finished: string | null = null;

  const drain = (): void => {
    while (ahead.length > 0) {
      const first = ahead[0];
      if (!first || first.start > cursor) break;
      ahead.shift();
      held -= first.bytes.byteLength;
      const end = first.start + first.bytes.byteLength;
      if (end > cursor) {
        hash.update(first.bytes.subarray(cursor - first.start));
        cursor = end;
      }
    }
  };
  /** Hash bytes [start, start + bytes.length); `owned`: the caller will not reuse the buffer. */
  const feed = (start: number, bytes: Uint8Array, owned: boolean): void => {
    const end = start + bytes.byteLength;
    if (end <= cursor || bytes.byteLength === 0) return;
    if (start <= cursor) {
      hash.update(bytes.subarray(cursor - start));
      cursor = end;
      drain();
      return;
    }
    const kept = owned ? bytes : bytes.slice();
    let i = ahead.length;
    while (i > 0 && (ahead[i - 1]?.start ?? 0) > start) i--;
    ahead.splice(i, 0, { start, bytes: kept });
    held += kept.byteLength;
  };
  /** Read the gap before the first kept read (or up to `limit`) ourselves. */
  const fillGap = async (limit: number): Promise<void> => {
    const from = cursor;
    const to = Math.min(ahead[0]?.start ?? limit, limit, from + CHUNK);
    if (to <= from) return;
    const bytes = await source.read(from, to);
    extra += bytes.byteLength;
    // Other reads may have moved the cursor meanwhile: feed handles any overlap.
    feed(from, bytes, true);
  };
  /** One gap filler at a time. */
  let busy: Promise<void> = Promise.resolve();
  const serial = (work: () => Promise<void>): Promise<void> => {
    const next = busy.then(work);
    busy = next.catch(() => undefined);
    return next;
  };
  const bound = (): Promise<void> =>
    held > keepBytes
      ? serial(async () => {
          while (held > keepBytes && ahead.length > 0) await fillGap(size);
        })
      : Promise.resolve();

  const wrapped: HashingSource = {
    name: source.name,
    byteLength: size,
    ...(source.identity !== undefined ? { identity: source.identity } : {}),
    get extraBytes() {
      return extra;
    },
    async read(start, end) {
      const bytes = await source.read(start, end);
      if (finished === null) {
        feed(start, bytes, false);
        await bound();
      }
      return bytes;
    },
    async finish() {
      await serial(async () => {
        while (cursor < size) await fillGap(size);
      });
      if (finished === null) {
        finished = hash.hex();
        ahead.length = 0;
        held = 0;
      }
      return finished;
    },
  };
  const readInto = source.readInto?.bind(source);
  if (readInto) {
    wrapped.readInto = async (start, target) => {
      await readInto(start, target);
      if (finished === null) {
        feed(start, target, false);
        await bound();
      }
    };
  }
  const close = source.close?.bind(source);
  if (close) wrapped.close = close;
  return wrapped;
}
