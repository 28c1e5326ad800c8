/**
 * The worker's results as files of the origin-private file system (OPFS), written through synchronous access handles
 * (syncFileSink) and handed to the page as Files: a download or "Save to disk…" then reads them from disk, and
 * neither the worker nor the browser process holds a multi-GB result in memory (Blob parts do: the browser process
 * keeps them). Where the browser has no OPFS or no synchronous access handles, `scratchSink` returns null and the
 * caller collects Blob parts instead.
 *
 * Each worker writes into a folder of its own under `lora-mix-results/`, named by a Web Lock it holds for its whole
 * life; folders whose lock nobody holds (a closed tab's) are removed when a worker starts. Of each kind of result
 * (merge, resize, fuse) only the newest file is kept: the page offers only the newest, and the previous one is
 * removed once its successor is complete.
 */
import type { ByteSink } from '../../src/core/bytes.js';
import { syncFileSink, type SyncTarget } from './streams.js';

const ROOT = 'lora-mix-results';

interface Dir {
  getFileHandle(name: string, options?: { create?: boolean }): Promise<FileHandle>;
  getDirectoryHandle(name: string, options?: { create?: boolean }): Promise<Dir>;
  removeEntry(name: string, options?: { recursive?: boolean }): Promise<void>;
  keys(): AsyncIterable<string>;
}
interface FileHandle {
  getFile(): Promise<File>;
  createSyncAccessHandle?(): Promise<SyncTarget>;
}
interface Locks {
  request(name: string, callback: () => Promise<void>): Promise<void>;
  query(): Promise<{ held?: { name?: string }[] }>;
}

let folder: Promise<Dir | null> | null = null;

/** This worker's folder, made (and stale folders removed) on first use; null without OPFS. */
function ownFolder(): Promise<Dir | null> {
  folder ??= (async () => {
    try {
      const storage = (globalThis.navigator as unknown as { storage?: { getDirectory?(): Promise<Dir> } } | undefined)
        ?.storage;
      if (typeof storage?.getDirectory !== 'function') return null;
      const parent = await (await storage.getDirectory()).getDirectoryHandle(ROOT, { create: true });
      const id = `w${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
      const locks = (globalThis.navigator as unknown as { locks?: Locks }).locks;
      if (locks) {
        // Held until the worker ends: the lock never resolves. A request refused outright (it never calls back)
        // must end this wait too, or every later result would wait for the folder forever.
        await new Promise<void>((held, refused) => {
          locks
            .request(`${ROOT}/${id}`, () => {
              held();
              return new Promise<void>(() => undefined);
            })
            .catch(refused);
        });
        const live = new Set(((await locks.query()).held ?? []).map((l) => l.name));
        const stale: string[] = [];
        for await (const name of parent.keys()) if (!live.has(`${ROOT}/${name}`)) stale.push(name);
        for (const name of stale) await parent.removeEntry(name, { recursive: true }).catch(() => undefined);
      }
      return await parent.getDirectoryHandle(id, { create: true });
    } catch {
      return null;
    }
  })();
  return folder;
}

/** The newest complete file of each kind. */
const newest = new Map<string, string>();
let serial = 0;

/**
 * A sink writing `fileName` into a new file of this worker's OPFS folder, and `file()` to read it back after commit
 * (which also removes the previous file of this `kind`); null where OPFS or synchronous access handles are missing.
 */
export async function scratchSink(
  kind: string,
  fileName: string,
): Promise<{
  sink: ByteSink & { readonly byteLength: number; readBack(at: number, into: Uint8Array): void };
  file(): Promise<File>;
} | null> {
  const dir = await ownFolder();
  if (!dir) return null;
  const name = `${kind}-${++serial}.safetensors`;
  let access: SyncTarget;
  let handle: FileHandle;
  try {
    handle = await dir.getFileHandle(name, { create: true });
    if (typeof handle.createSyncAccessHandle !== 'function') {
      await dir.removeEntry(name).catch(() => undefined);
      return null;
    }
    access = await handle.createSyncAccessHandle();
  } catch {
    await dir.removeEntry(name).catch(() => undefined);
    return null;
  }
  const sink = syncFileSink(fileName, access, () => dir.removeEntry(name));
  return {
    sink,
    async file() {
      const file = await handle.getFile();
      const previous = newest.get(kind);
      newest.set(kind, name);
      if (previous !== undefined) await dir.removeEntry(previous).catch(() => undefined);
      return file;
    },
  };
}
