/**
 * Where the worker's time goes, per phase (the page reports it with each result; bench/browser-vs-cli.ts prints it
 * next to the CLI's phases): seconds spent waiting for File.slice reads (they overlap with the decode, so the sum
 * can exceed the wall time), seconds computing the SHA-256 (on the worker's own thread, never overlapped).
 */
import type { ByteSink, ByteSource } from '../../src/core/bytes.js';
import type { Sha256 } from '../../src/core/sha256.js';

export interface PhaseClock {
  /** Seconds from each read's start to its bytes, summed. */
  read: number;
  /** Seconds inside the hash's `update`, summed. */
  hash: number;
}

export const newClock = (): PhaseClock => ({ read: 0, hash: 0 });

/** `source` with the time of each read (and readInto) added to `clock.read`. */
export function timedSource(source: ByteSource, clock: PhaseClock): ByteSource {
  const time = async <T>(work: () => Promise<T>): Promise<T> => {
    const t = performance.now();
    try {
      return await work();
    } finally {
      clock.read += (performance.now() - t) / 1000;
    }
  };
  const timed: ByteSource = {
    ...source,
    name: source.name,
    byteLength: source.byteLength,
    read: (start, end) => time(() => source.read(start, end)),
  };
  const readInto = source.readInto?.bind(source);
  if (readInto) timed.readInto = (start, target) => time(() => readInto(start, target));
  return timed;
}

/** `hash` with the time of each update added to `clock.hash`. */
export function timedHash(hash: Sha256, clock: PhaseClock): Sha256 {
  const timed: Sha256 = {
    get byteLength() {
      return hash.byteLength;
    },
    update(bytes) {
      const t = performance.now();
      hash.update(bytes);
      clock.hash += (performance.now() - t) / 1000;
      return timed;
    },
    digest: () => hash.digest(),
    hex: () => hash.hex(),
  };
  return timed;
}

/** `sink` with the time of each write and of the commit added to `clock.write`. */
export function timedSink<S extends ByteSink>(sink: S, clock: { write: number }): S {
  const timed = Object.create(sink) as S;
  const time = async <T>(work: () => Promise<T>): Promise<T> => {
    const t = performance.now();
    try {
      return await work();
    } finally {
      clock.write += (performance.now() - t) / 1000;
    }
  };
  timed.write = (chunk) => time(() => sink.write(chunk));
  timed.commit = () => time(() => sink.commit());
  return timed;
}
