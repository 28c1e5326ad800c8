/**
 * Checks on paths before a file is opened: what kind of file it is (only regular files are read or written, so a
 * FIFO never blocks a read and a device is never replaced), and whether an output would replace an input.
 */
import { promises as fs, type Stats } from 'node:fs';
import * as path from 'node:path';
import { IoError } from '../core/errors.js';
import type { RefuseList } from '../core/host.js';

export function errnoCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && typeof (e as { code?: unknown }).code === 'string'
    ? (e as { code: string }).code
    : undefined;
}

export function describeError(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** 'a FIFO (named pipe)', 'a character device', … for messages. */
export function fileTypeName(st: Stats): string {
  if (st.isFile()) return 'a regular file';
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * Stat an input before opening it: INPUT_NOT_FOUND when it does not exist, IO_NOT_A_REGULAR_FILE for a directory,
 * FIFO, device or socket (opening a FIFO for reading would block until a writer comes).
 */
export async function checkInputFile(filePath: string): Promise<void> {
  let st: Stats;
  try {
    st = await fs.stat(filePath);
  } catch (e) {
    if (errnoCode(e) === 'ENOENT')
      throw new IoError('INPUT_NOT_FOUND', `${filePath}: no such file`, { file: filePath }, { cause: e });
    throw new IoError(
      'IO_READ_FAILED',
      `${filePath}: cannot open for reading (${describeError(e)})`,
      { file: filePath },
      { cause: e },
    );
  }
  if (!st.isFile()) {
    throw new IoError(
      'IO_NOT_A_REGULAR_FILE',
      `${filePath}: this is ${fileTypeName(st)}, not a regular file; lora-mix reads regular files only`,
      { file: filePath, found: fileTypeName(st) },
    );
  }
}

async function identityOf(p: string): Promise<string | undefined> {
  try {
    const st = await fs.stat(p);
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

async function realOrResolved(p: string): Promise<string> {
  const abs = path.resolve(p);
  try {
    return await fs.realpath(abs);
  } catch {
    return abs;
  }
}

/**
 * Throw OUTPUT_WOULD_OVERWRITE_INPUT when `target` is the same file as any input (same dev:ino, or the same
 * resolved path). Nothing is written.
 */
export async function assertNotOverwriting(target: string, refuse: RefuseList): Promise<void> {
  if (refuse.length === 0) return;
  const targetId = await identityOf(target);
  const targetReal = await realOrResolved(target);
  for (const input of refuse) {
    const label = typeof input === 'string' ? input : input.name;
    let same = false;
    if (typeof input === 'string') {
      const id = await identityOf(input);
      same = (id !== undefined && id === targetId) || (await realOrResolved(input)) === targetReal;
    } else {
      const inputPath = (input as unknown as { path?: unknown }).path;
      same =
        (input.identity !== undefined && input.identity === targetId) ||
        (typeof inputPath === 'string' && (await realOrResolved(inputPath)) === targetReal);
    }
    if (same) {
      throw new IoError(
        'OUTPUT_WOULD_OVERWRITE_INPUT',
        `${target}: the output is the same file as the input '${label}'; choose another output path`,
        { file: target, input: label },
      );
    }
  }
}
