import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { bufferSource } from '../src/core/memory.js';
import { createSha256, sha256Backend, sha256Hex } from '../src/core/sha256.js';
import { hashingSource } from '../src/core/sha256-source.js';

const nodeHex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('sha256 (isomorphic, incremental)', () => {
  it('matches the FIPS 180-4 examples', () => {
    const text = (s: string) => new TextEncoder().encode(s);
    expect(sha256Hex(new Uint8Array())).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    expect(sha256Hex(text('abc'))).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(sha256Hex(text('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq'))).toBe(
      '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1',
    );
  });

  it('equals node:crypto at every length around the block and padding boundaries', () => {
    const bytes = Uint8Array.from({ length: 300 }, (_, i) => (i * 131 + 7) & 255);
    for (let n = 0; n <= 300; n++)
      expect(sha256Hex(bytes.subarray(0, n)), `length ${n}`).toBe(nodeHex(bytes.subarray(0, n)));
  });

  it('equals node:crypto for random bytes split into random chunks', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 0, maxLength: 1200 }),
        fc.array(fc.nat(200), { maxLength: 12 }),
        (bytes, cuts) => {
          const h = createSha256();
          let p = 0;
          for (const c of cuts) {
            const q = Math.min(bytes.length, p + c);
            h.update(bytes.subarray(p, q));
            p = q;
          }
          h.update(bytes.subarray(p));
          expect(h.byteLength).toBe(bytes.length);
          expect(h.hex()).toBe(nodeHex(bytes));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('runs in WebAssembly here, and the WebAssembly and JavaScript compressions agree around the module’s data chunk', () => {
    expect(sha256Backend()).toBe('wasm');
    // The module compresses 2·65536 − 64 bytes per call: lengths around one and two chunks, in uneven updates.
    const chunk = 2 * 65536 - 64;
    const bytes = Uint8Array.from({ length: 2 * chunk + 200 }, (_, i) => (i * 2654435761) >>> 24);
    for (const n of [chunk - 65, chunk - 1, chunk, chunk + 1, chunk + 64, 2 * chunk, 2 * chunk + 200]) {
      const b = bytes.subarray(0, n);
      const want = nodeHex(b);
      expect(createSha256().update(b).hex(), `wasm, length ${n}`).toBe(want);
      expect(createSha256({ js: true }).update(b).hex(), `js, length ${n}`).toBe(want);
      const h = createSha256();
      for (let at = 0, step = 3; at < n; at += step, step = (step * 5 + 1) % 9001) h.update(b.subarray(at, at + step));
      expect(h.hex(), `wasm in uneven updates, length ${n}`).toBe(want);
    }
  });

  it('refuses updates after the digest and repeats the same digest', () => {
    const h = createSha256().update(new Uint8Array([1, 2, 3]));
    const a = h.hex();
    expect(h.hex()).toBe(a);
    expect(() => h.update(new Uint8Array([4]))).toThrow(/after digest/);
  });
});

describe('hashingSource: the hash of a file from the reads its user makes', () => {
  it('hashes the whole file whatever the order, overlap and concurrency of the reads, reading each byte once when the reads cover it', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: 1, maxLength: 3000 }),
        fc.array(fc.tuple(fc.nat(3000), fc.nat(400)), { maxLength: 20 }),
        fc.boolean(),
        fc.nat(2000),
        async (bytes, ranges, concurrent, keep) => {
          const src = hashingSource(bufferSource(bytes), keep);
          const reads = ranges.map(([a, len]) => {
            const s = Math.min(a, bytes.length);
            return [s, Math.min(bytes.length, s + len)] as const;
          });
          if (concurrent) {
            const got = await Promise.all(reads.map(([s, e]) => src.read(s, e)));
            for (const [i, g] of got.entries()) expect(g).toEqual(bytes.slice(reads[i]![0], reads[i]![1]));
          } else {
            for (const [s, e] of reads) expect(await src.read(s, e)).toEqual(bytes.slice(s, e));
          }
          expect(await src.finish()).toBe(nodeHex(bytes));
          expect(src.extraBytes).toBeLessThanOrEqual(bytes.length);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('reads nothing extra when the user reads every byte, even out of order within the kept bound', async () => {
    const bytes = Uint8Array.from({ length: 10_000 }, (_, i) => (i * 7) & 255);
    const src = hashingSource(bufferSource(bytes));
    const order = [5, 2, 9, 0, 7, 1, 8, 3, 6, 4];
    for (const k of order) await src.read(k * 1000, (k + 1) * 1000);
    expect(await src.finish()).toBe(nodeHex(bytes));
    expect(src.extraBytes).toBe(0);
  });

  it('hashes readInto reads and does not keep the caller’s reused buffer', async () => {
    const bytes = Uint8Array.from({ length: 4096 }, (_, i) => (i * 13 + 1) & 255);
    const src = hashingSource(bufferSource(bytes));
    const buf = new Uint8Array(1024);
    for (const k of [3, 1, 2, 0]) {
      await src.readInto!(k * 1024, buf);
      buf.fill(0); // the caller reuses its buffer: the kept copy must not change
    }
    expect(await src.finish()).toBe(nodeHex(bytes));
    expect(src.extraBytes).toBe(0);
  });

  it('reads the bytes nobody asked for in finish()', async () => {
    const bytes = Uint8Array.from({ length: 9000 }, (_, i) => i & 255);
    const src = hashingSource(bufferSource(bytes));
    await src.read(100, 200);
    expect(await src.finish()).toBe(nodeHex(bytes));
    expect(src.extraBytes).toBe(9000 - 100);
  });
});
