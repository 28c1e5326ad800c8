/**
 * SHA-256 (FIPS 180-4) over bytes that arrive in chunks, in plain JavaScript so that it runs the same in Node, a
 * browser page and a Web Worker (WebCrypto's digest takes only one whole buffer). Used for provenance: a file is
 * hashed while it is being read, never read a second time for its hash.
 */

/** The first 32 bits of the fractional parts of the cube roots of the first 64 primes (as int32: no boxed doubles). */
const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
  0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
  0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
  0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
  0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
  0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
  0xc67178f2,
]);

/** The first 32 bits of the fractional parts of the square roots of the first 8 primes. */
const H0 = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/** An incremental SHA-256: `update` with the bytes in order, then `hex()` (or `digest()`) once. */
export interface Sha256 {
  update(bytes: Uint8Array): Sha256;
  /** The 32-byte digest; the hash is finished and takes no more updates. */
  digest(): Uint8Array;
  /** The digest as 64 lowercase hex digits. */
  hex(): string;
  /** Bytes hashed so far. */
  readonly byteLength: number;
}

/** Process whole 64-byte blocks of `bytes` from `offset`; returns the offset after the last whole block. */
function compress(h: Int32Array, w: Int32Array, bytes: Uint8Array, offset: number, end: number): number {
  let h0 = h[0] ?? 0;
  let h1 = h[1] ?? 0;
  let h2 = h[2] ?? 0;
  let h3 = h[3] ?? 0;
  let h4 = h[4] ?? 0;
  let h5 = h[5] ?? 0;
  let h6 = h[6] ?? 0;
  let h7 = h[7] ?? 0;
  let p = offset;
  while (end - p >= 64) {
    for (let i = 0; i < 16; i++, p += 4) {
      w[i] = ((bytes[p] ?? 0) << 24) | ((bytes[p + 1] ?? 0) << 16) | ((bytes[p + 2] ?? 0) << 8) | (bytes[p + 3] ?? 0);
    }
    for (let i = 16; i < 64; i++) {
      const x = w[i - 15] ?? 0;
      const y = w[i - 2] ?? 0;
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[i] = ((w[i - 16] ?? 0) + s0 + (w[i - 7] ?? 0) + s1) | 0;
    }
    let a = h0;
    let b = h1;
    let c = h2;
    let d = h3;
    let e = h4;
    let f = h5;
    let g = h6;
    let hh = h7;
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (hh + S1 + ch + (K[i] ?? 0) + (w[i] ?? 0)) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      hh = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0;
    h5 = (h5 + f) | 0;
    h6 = (h6 + g) | 0;
    h7 = (h7 + hh) | 0;
  }
  h[0] = h0;
  h[1] = h1;
  h[2] = h2;
  h[3] = h3;
  h[4] = h4;
  h[5] = h5;
  h[6] = h6;
  h[7] = h7;
  return p;
}

/** A new incremental SHA-256. */
export function createSha256(): Sha256 {
  const h = Int32Array.from(H0, (x) => x | 0);
  const w = new Int32Array(64);
  const block = new Uint8Array(64);
  let buffered = 0;
  let total = 0;
  let done: Uint8Array | null = null;
  const self: Sha256 = {
    get byteLength() {
      return total;
    },
    update(bytes) {
      if (done) throw new Error('sha256: update after digest');
      total += bytes.byteLength;
      let p = 0;
      if (buffered > 0) {
        const take = Math.min(64 - buffered, bytes.byteLength);
        block.set(bytes.subarray(0, take), buffered);
        buffered += take;
        p = take;
        if (buffered < 64) return self;
        compress(h, w, block, 0, 64);
        buffered = 0;
      }
      p = compress(h, w, bytes, p, bytes.byteLength);
      if (p < bytes.byteLength) {
        block.set(bytes.subarray(p), 0);
        buffered = bytes.byteLength - p;
      }
      return self;
    },
    digest() {
      if (done) return done.slice();
      // Padding: 0x80, zeros to 56 mod 64, then the message length in bits as a 64-bit big-endian number.
      const bits = total * 8;
      const tail = new Uint8Array(buffered < 56 ? 64 : 128);
      tail.set(block.subarray(0, buffered));
      tail[buffered] = 0x80;
      const view = new DataView(tail.buffer);
      view.setUint32(tail.length - 8, Math.floor(bits / 2 ** 32));
      view.setUint32(tail.length - 4, bits >>> 0);
      compress(h, w, tail, 0, tail.length);
      const out = new Uint8Array(32);
      const ov = new DataView(out.buffer);
      for (let i = 0; i < 8; i++) ov.setInt32(i * 4, h[i] ?? 0);
      done = out;
      return out.slice();
    },
    hex() {
      let s = '';
      for (const b of self.digest()) s += b.toString(16).padStart(2, '0');
      return s;
    },
  };
  return self;
}

/** Hex SHA-256 of bytes held in memory. */
export function sha256Hex(bytes: Uint8Array): string {
  return createSha256().update(bytes).hex();
}
