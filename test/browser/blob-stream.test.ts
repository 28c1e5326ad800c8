/**
 * The page fuse's base reads in Chromium: readAheadSource over streamedBlobSource, chunks given back and refilled
 * (recycle). Node's Blob stream is not Chromium's (a BYOB read there transfers the buffer it fills), so the bytes and
 * the reuse are checked in the browser itself, over a Blob of many chunks, with reads in flight as the fuse makes them.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundle } from '../../scripts/build-browser.js';
import { openSession, tempDir, type BrowserSession } from './harness.js';

describe('streamedBlobSource + readAheadSource in headless Chromium: recycled chunks', () => {
  let s: BrowserSession;
  const tmp = tempDir('blob-stream');
  beforeAll(async () => {
    await bundle({
      contents:
        "export { streamedBlobSource } from './src/core/blob-stream.ts';\n" +
        "export { readAheadSource } from './examples/web/streams.ts';\n",
      outfile: join(tmp.dir, 'streams.js'),
    });
    writeFileSync(join(tmp.dir, 'index.html'), '<!doctype html><title>streams</title>');
    s = await openSession({ root: tmp.dir });
  });
  afterAll(async () => {
    await s?.close();
    tmp.remove();
  });

  it('reads a 6 MB Blob front to back through 256 KiB chunks with the right bytes, refilling the chunks let go', async () => {
    const r = await s.page.evaluate(`(async () => {
      const { streamedBlobSource, readAheadSource } = await import(location.origin + '/streams.js');
      let seed = 7;
      const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
      const bytes = new Uint8Array(6_000_003);
      for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 2654435761) >>> 24;
      const inner = streamedBlobSource(new Blob([bytes]), 'base');
      let given = 0;
      const recycledBuffers = [];
      const src = readAheadSource({
        name: inner.name,
        byteLength: inner.byteLength,
        read: (a, b) => inner.read(a, b),
        recycle: (b) => { given++; recycledBuffers.push(b.buffer); inner.recycle(b); },
        close: () => inner.close(),
      }, 256 << 10, 2);
      // Reads of 1 byte to 700 KB, front to back, three in flight at a time (the fuse's read-ahead segments).
      const ranges = [];
      for (let at = 0; at < bytes.length; ) {
        const n = Math.min(bytes.length - at, 1 + Math.floor(rnd() * 700_000));
        ranges.push([at, n]);
        at += n;
      }
      let wrong = 0;
      for (let i = 0; i < ranges.length; i += 3) {
        const batch = ranges.slice(i, i + 3).map(async ([at, n]) => {
          const t = new Uint8Array(n);
          await src.readInto(at, t);
          for (let j = 0; j < n; j++) if (t[j] !== bytes[at + j]) { wrong++; break; }
        });
        await Promise.all(batch);
      }
      await src.close();
      // A buffer given back and then filled by a BYOB read was transferred: its old ArrayBuffer is detached.
      const refilled = recycledBuffers.filter((b) => b.byteLength === 0).length;
      return { reads: ranges.length, wrong, given, refilled };
    })()`);
    expect(r).toMatchObject({ wrong: 0 });
    const { given, refilled } = r as { given: number; refilled: number };
    expect(given).toBeGreaterThanOrEqual(20); // 23 chunks, all but the last ones given back
    expect(refilled).toBeGreaterThanOrEqual(given - 4); // all but the spares still kept at the end were refilled
    expect(s.errors).toEqual([]);
  });
});
