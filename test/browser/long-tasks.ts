/**
 * Long tasks, told apart from a starved thread.
 *
 * The Long Tasks API reports a task's wall time. On a 2-core machine shared with other test files, a page thread that
 * does 40 ms of work but waits 130 ms for a core in the middle reports a 170 ms task although the page did nothing
 * wrong. A Chromium trace records, for every task, both its wall time (`dur`) and the CPU time the thread spent in it
 * (`tdur`, from the thread's CPU clock). `traceLongTasks` matches each Long Tasks API entry of the page with the
 * page main thread's tasks in the trace, so the test can require that no task *worked* for 100 ms or more while
 * still reading the wall times from the API the issue names. A real freeze (work on the page's thread) has a CPU
 * time as long as its wall time and fails either way.
 */
import type { Browser, Page } from 'playwright-core';

/** One entry of the Long Tasks API, in the page's clock (ms since its time origin). */
export interface LongTaskEntry {
  start: number;
  duration: number;
}

/** A Long Tasks API entry with the CPU time the page's main thread spent in the tasks the trace shows in it. */
export interface MeasuredLongTask extends LongTaskEntry {
  /** Milliseconds of the main thread's CPU time; NaN when the trace has no task there (counted as a failure). */
  cpu: number;
}

interface TraceEvent {
  ph: string;
  name: string;
  pid: number;
  tid: number;
  ts: number;
  dur?: number;
  tdur?: number;
  args?: { data?: { startTime?: number } };
}

const MARK = 'lora-mix-long-tasks';

/**
 * Trace categories: top-level tasks (`ThreadControllerImpl::RunTask`, with thread time) and user timing marks (to
 * align the two clocks) — about 10k events for the full-size merge; devtools' timeline category would add as many again.
 */
const CATEGORIES = ['toplevel', 'blink.user_timing'];

/**
 * Start a trace of the browser and a Long Tasks API observer on `page`; `stop()` ends both and returns each long
 * task the API saw (≥ 50 ms) with the CPU time its thread spent in it.
 */
export async function traceLongTasks(browser: Browser, page: Page): Promise<{ stop(): Promise<MeasuredLongTask[]> }> {
  await browser.startTracing(undefined, { categories: CATEGORIES });
  const markAt = await page.evaluate((name) => {
    const w = window as unknown as {
      loraMixLongTasks: { start: number; duration: number }[];
      loraMixLongTaskObserver?: PerformanceObserver;
    };
    const seen: { start: number; duration: number }[] = [];
    w.loraMixLongTasks = seen;
    const t0 = performance.mark(name).startTime;
    w.loraMixLongTaskObserver = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) if (e.startTime >= t0) seen.push({ start: e.startTime, duration: e.duration });
    });
    w.loraMixLongTaskObserver.observe({ type: 'longtask', buffered: true });
    return t0;
  }, MARK);
  return {
    async stop() {
      // Let the observer deliver entries of the last task before reading them.
      await page.evaluate(() => new Promise((r) => setTimeout(r, 50)));
      const entries = await page.evaluate(() => {
        const w = window as unknown as {
          loraMixLongTasks: LongTaskEntry[];
          loraMixLongTaskObserver: PerformanceObserver;
        };
        w.loraMixLongTaskObserver.disconnect();
        return w.loraMixLongTasks;
      });
      const json = JSON.parse((await browser.stopTracing()).toString('utf8')) as
        | { traceEvents: TraceEvent[] }
        | TraceEvent[];
      const events = Array.isArray(json) ? json : json.traceEvents;
      return matchLongTasks(events, markAt, entries);
    },
  };
}

/**
 * The CPU time of each long task: the mark made on the page's main thread gives its process and thread and the
 * offset between the trace clock (µs) and the page clock (ms); the tasks of that thread that overlap the entry's
 * interval give the CPU time (the longest of them: top-level tasks do not nest).
 */
export function matchLongTasks(events: TraceEvent[], markAt: number, entries: LongTaskEntry[]): MeasuredLongTask[] {
  const mark = events.find((e) => e.name === MARK && e.ph.toUpperCase() === 'I');
  if (!mark) throw new Error(`the trace has no "${MARK}" mark: cannot align it with the Long Tasks API`);
  const offset = mark.ts / 1000 - markAt;
  const tasks = events.filter(
    (e) =>
      e.ph === 'X' &&
      e.pid === mark.pid &&
      e.tid === mark.tid &&
      (e.name === 'RunTask' || e.name === 'ThreadControllerImpl::RunTask') &&
      typeof e.dur === 'number',
  );
  return entries.map((entry) => {
    const from = entry.start + offset;
    const to = from + entry.duration;
    let cpu = Number.NaN;
    for (const t of tasks) {
      const tFrom = t.ts / 1000;
      const tTo = tFrom + (t.dur ?? 0) / 1000;
      // Overlap of at least half the entry: the same task, seen by two clocks a fraction of a ms apart.
      if (Math.min(to, tTo) - Math.max(from, tFrom) < entry.duration / 2) continue;
      const c = typeof t.tdur === 'number' ? t.tdur / 1000 : Number.NaN;
      cpu = Number.isNaN(cpu) ? c : Math.max(cpu, c);
    }
    return { ...entry, cpu };
  });
}

/**
 * The long tasks that break the 100 ms: ≥ 100 ms of wall time and — unless `strict` — also ≥ 100 ms of the
 * thread's CPU time (or no CPU time found for it).
 */
export function failingLongTasks(tasks: MeasuredLongTask[], strict: boolean, limitMs = 100): MeasuredLongTask[] {
  return tasks.filter((t) => t.duration >= limitMs && (strict || !(t.cpu < limitMs)));
}

/** "start+wall/cpu" for messages. */
export function describeLongTasks(tasks: MeasuredLongTask[]): string {
  return tasks.map((t) => `${t.start.toFixed(0)}+${t.duration.toFixed(0)}/${t.cpu.toFixed(0)}`).join(', ') || 'none';
}
