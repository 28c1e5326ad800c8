/**
 * The bounded-concurrency loop of the streaming merge and the streamed conversion: items are prepared one at a
 * time in order (reading a module's factors), each prepared item's work starts at once, and at most `depth` works
 * are unfinished at any time.
 */

/**
 * For each item in order: `prepare(item)` (awaited; null skips the item) gives the work to start; the loop waits
 * whenever `depth` works are running. The first failure of a work stops further items from being prepared; once
 * every started work has settled, it is thrown. A failure of `prepare` itself is thrown at once.
 */
export async function forEachBounded<T>(
  items: Iterable<T>,
  depth: number,
  prepare: (item: T) => Promise<(() => Promise<void>) | null>,
): Promise<void> {
  const running = new Set<Promise<void>>();
  let failure: unknown = null;
  for (const item of items) {
    if (failure !== null) break;
    const work = await prepare(item);
    if (!work) continue;
    let started: Promise<void>;
    try {
      started = work();
    } catch (e) {
      started = Promise.reject(e);
    }
    const task: Promise<void> = started
      .catch((e: unknown) => {
        failure ??= e;
      })
      .finally(() => running.delete(task));
    running.add(task);
    if (running.size >= depth) await Promise.race(running);
  }
  await Promise.all(running);
  if (failure !== null) throw failure;
}
