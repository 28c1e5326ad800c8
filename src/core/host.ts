/**
 * What the platform provides to the isomorphic layers: opening a file path as a ByteSource, a path as an atomic
 * ByteSink, and loading gpu.js. The core never imports `node:`; the Node entry (src/node.ts) installs a host built
 * from src/node/, a browser installs none and passes ByteSources, ByteSinks and gpu.js's GPU class itself.
 * This is dependency inversion instead of the string-built dynamic imports the core once used.
 */
import type { ByteSink, ByteSource } from './bytes.js';
import { IoError } from './errors.js';

/** Inputs a sink must never replace: sources (by identity or name) or paths. */
export type RefuseList = readonly (ByteSource | string)[];

export interface SinkOptions {
  /** Inputs the target must not be (checked before anything is created). */
  readonly refuse?: RefuseList;
  /** Bypass the page cache where the platform can (O_DIRECT on Linux); the bytes are the same either way. */
  readonly direct?: boolean;
  /**
   * Make the output durable before it appears at its name (default true: fsync the temp file, rename, fsync the
   * folder). false still writes a temp file and renames it (a failed run leaves nothing, a reader never sees a
   * partial file) but leaves the writeback to the OS: a power loss or crash within seconds of the end can leave
   * an empty or partial file at the name.
   */
  readonly fsync?: boolean;
}

export interface Host {
  /** Open a path for positional reads (INPUT_NOT_FOUND when it does not exist). */
  openSource(path: string): Promise<ByteSource>;
  /** A sink that writes beside `path` and moves into place on commit; nothing is left on abort. */
  openSink(path: string, options: SinkOptions): Promise<ByteSink>;
  /** gpu.js's module (its `GPU` class), loaded on first use. */
  loadGpuJs(): Promise<unknown>;
}

let installed: Host | null = null;

/** Install the platform host (the Node entry does this once when it is loaded). */
export function installHost(host: Host): void {
  installed = host;
}

/** The installed host, or null (browsers). */
export function currentHost(): Host | null {
  return installed;
}

/** The installed host, or a clear IoError saying that `what` needs one. */
export function requireHost(what: string, fix: string): Host {
  if (installed) return installed;
  throw new IoError('IO_NO_HOST', `${what} needs file access, which only the Node entry of lora-mix provides; ${fix}`, {
    file: what,
  });
}
