/**
 * For tests of code that must never wait forever: every wait is bounded, so a hang fails the assertion with the
 * value 'hung' instead of running into vitest's timeout.
 */
import { Worker } from 'node:worker_threads';
import { vi } from 'vitest';

/** How `p` settles within `ms`: its value, its error, or 'hung'. */
export async function settleWithin<T>(p: Promise<T>, ms: number): Promise<{ value: T } | { error: unknown } | 'hung'> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hung = new Promise<'hung'>((resolve) => {
    timer = setTimeout(() => resolve('hung'), ms);
  });
  try {
    return await Promise.race([
      p.then(
        (value) => ({ value }),
        (error: unknown) => ({ error }),
      ),
      hung,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * How a worker pool's request ends within `ms` (a warm worker replies in milliseconds): `{ ok }` (whether a value
 * came back), `{ code }` (its error's code), or 'hung'.
 */
export async function requestOutcome(p: Promise<unknown>, ms = 4000): Promise<unknown> {
  const r = await settleWithin(p, ms);
  if (r === 'hung') return r;
  return 'error' in r ? { code: (r.error as { code?: unknown } | null)?.code } : { ok: r.value !== undefined };
}

/**
 * Make the n-th postMessage calls of any worker_threads Worker (1-based, counted from now) throw what V8 throws when
 * a clone cannot be allocated. Undo with vi.restoreAllMocks().
 */
export function failWorkerPosts(...nth: number[]): void {
  const post = Worker.prototype.postMessage;
  let calls = 0;
  vi.spyOn(Worker.prototype, 'postMessage').mockImplementation(function (this: Worker, ...args) {
    if (nth.includes(++calls)) throw new RangeError('Array buffer allocation failed');
    return post.apply(this, args);
  });
}
