/**
 * Temporary output files: how lora-mix names them, a registry of the ones alive in this process, signal handlers
 * that remove them before the process dies (SIGINT, SIGTERM, SIGHUP; the signal is then raised again so the exit
 * status still says what killed it), and removal of stale ones a killed run left beside a target.
 *
 * Name: `.<target name>.lora-mix-<pid>-<random>.tmp`. The pid lets a later run tell a temp of a live run (left
 * alone) from one of a dead run (removed). Versions before the pid was added named temps `.<target name>.<12 hex>.tmp`
 * (and, briefly, `.<target name>.lora-mix-<hex>.tmp`); those carry no owner, so a rerun removes them when they are
 * older than the run itself (a run that started later cannot own them).
 */
import { randomBytes } from 'node:crypto';
import { rmSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { isMainThread } from 'node:worker_threads';

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
const live = new Set<string>();
let installed = false;

/** The temp path for `target` (absolute), unique to this process and call. */
export function tempPathFor(target: string): string {
  const abs = path.resolve(target);
  return path.join(
    path.dirname(abs),
    `.${path.basename(abs)}.lora-mix-${process.pid}-${randomBytes(6).toString('hex')}.tmp`,
  );
}

/** `.<name>.lora-mix-<pid>-<hex>.tmp` for this target name: the pid, or undefined when `entry` is not one. */
export function tempOwnerPid(targetName: string, entry: string): number | undefined {
  const prefix = `.${targetName}.lora-mix-`;
  if (!entry.startsWith(prefix) || !entry.endsWith('.tmp')) return undefined;
  const m = /^(\d+)-[0-9a-f]+$/.exec(entry.slice(prefix.length, -'.tmp'.length));
  return m ? Number(m[1]) : undefined;
}

/**
 * A temp of the naming used before the pid was recorded (`.<name>.<12 hex>.tmp`, `.<name>.lora-mix-<hex>.tmp`):
 * no owner can be told from it.
 */
export function isLegacyTemp(targetName: string, entry: string): boolean {
  const prefix = `.${targetName}.`;
  if (!entry.startsWith(prefix) || !entry.endsWith('.tmp')) return false;
  return /^(?:lora-mix-)?[0-9a-f]{12}$/.test(entry.slice(prefix.length, -'.tmp'.length));
}

function removeLiveTemps(): void {
  for (const p of live) {
    try {
      rmSync(p, { force: true, recursive: true });
    } catch {
      // Nothing more can be done while the process is going down.
    }
  }
  live.clear();
}

function onSignal(signal: NodeJS.Signals): void {
  removeLiveTemps();
  for (const s of SIGNALS) process.removeListener(s, onSignal);
  // Die of the same signal (exit status 128 + n) unless someone else still handles it.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

/** Install the signal handlers once (main thread only: workers share the process and never own temps). */
function installSignalCleanup(): void {
  if (installed || !isMainThread) return;
  installed = true;
  for (const s of SIGNALS) process.on(s, onSignal);
}

/** Record a temp file that exists now; a signal removes it. */
export function registerTemp(p: string): void {
  installSignalCleanup();
  live.add(p);
}

/** The temp file was renamed into place or removed. */
export function releaseTemp(p: string): void {
  live.delete(p);
}

/** Temps alive in this process (tests). */
export function liveTemps(): readonly string[] {
  return [...live];
}

function pidAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
}

/** When this process started (ms since the epoch). */
const RUN_START = Date.now() - process.uptime() * 1000;

/**
 * Remove temps of lora-mix's own naming beside `target` that a killed run left: regular files (and, with `folders`,
 * the temporary folders a diffusers-folder fuse builds, removed with their contents), owned by this user, older than
 * this run, whose pid is not a live process, or of the pre-pid naming (no owner recorded: age alone decides).
 * Symbolic links and anything else are left alone. Returns the names removed. Never throws (best effort).
 */
export async function removeStaleTemps(target: string, options: { folders?: boolean } = {}): Promise<string[]> {
  const abs = path.resolve(target);
  const dir = path.dirname(abs);
  const name = path.basename(abs);
  const removed: string[] = [];
  let entries: string[];
  try {
    entries = await fs.readdir(dir);
  } catch {
    return removed;
  }
  for (const entry of entries) {
    const pid = tempOwnerPid(name, entry);
    if (pid === undefined ? !isLegacyTemp(name, entry) : pidAlive(pid)) continue;
    const p = path.join(dir, entry);
    try {
      const st = await fs.lstat(p);
      const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
      const kind = st.isFile() || (options.folders === true && st.isDirectory());
      if (!kind || st.mtimeMs >= RUN_START || (uid !== undefined && st.uid !== uid)) continue;
      await fs.rm(p, { force: true, recursive: st.isDirectory() });
      removed.push(entry);
    } catch {
      // Gone already, or not ours to remove.
    }
  }
  return removed;
}
