/**
 * The merge page against the CLI on the same full-size inputs, same machine, same run, rounds interleaved:
 *
 *   npx tsx bench/browser-vs-cli.ts merge|fuse [--runs N] [--record]
 *
 * merge: /work/benchdata (bench/out) sd15-lcm.f16 ×1.0 + sd15-style.f16 ×0.8, exact, kohya F16.
 * fuse:  the same two LoRAs fused into sd15-base.f16 (2.1 GB), stored dtypes; the page runs on a Chromium profile on disk
 *        (bench/out/browser-profile-*, removed after each round), whose storage quota is a share of the disk.
 * CLI:   `node dist/cli/lora-mix.js merge|fuse … -q` under /usr/bin/time -v: wall time and peak RSS (it writes the
 *        file to disk, with fsync; the output is deleted after each run).
 * Page:  a fresh headless Chromium per round, served cross-origin isolated (COOP/COEP: the fuse kernel runs on
 *        every core); wall time from choosing the files (setInputFiles) until the page offers the result. merge: a
 *        Blob made of the written parts (the download itself is not timed); fuse: the save dialog is answered with
 *        a file of the origin-private file system, which the worker streams the checkpoint into (the
 *        showSaveFilePicker path), so the time includes writing it to disk. Also the longest task on the page's
 *        main thread (Long Tasks API; 0 when none reached 50 ms). Memory: every
 *        150 ms the PSS (/proc/PID/smaps_rollup) and RSS of Chromium's renderer and GPU processes (the page, its Web
 *        Worker and the GPU process run there), summed, and separately of all Chromium processes (browser process,
 *        where Blob data lives, and utilities included); the peak of each sum over the run. PSS is the figure to
 *        compare: summed RSS counts Chromium's shared code once per process (idle: 3 renderers + GPU ≈ 470 MB RSS,
 *        ≈ 200 MB PSS, ≈ 140 MB anonymous memory).
 * Needs `npm run build` (dist/) first. Run under `flock /work/bench.lock` (each invocation ≤ 5 min).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { buildBrowser, REPO_ROOT } from '../scripts/build-browser.js';
import { CHROMIUM_ARGS, openSession, tempDir } from '../test/browser/harness.js';

const args = process.argv.slice(2);
const MODE = args.find((a) => a === 'merge' || a === 'fuse') ?? 'merge';
const RUNS = args.includes('--runs') ? Math.max(1, Number(args[args.indexOf('--runs') + 1])) : 3;
const RECORD = args.includes('--record');
/** fuse: no save dialog (a browser without showSaveFilePicker): the page offers the checkpoint as a download. */
const NO_DIALOG = args.includes('--no-dialog');
/** Print the CPU seconds each Chromium thread spent during the fuse (diagnostics). */
const CPU = args.includes('--cpu');
/** Extra Chromium flags for the page's browser (diagnostics), e.g. `--chromium-arg --js-flags=--no-liftoff`. */
const EXTRA_ARGS = args.flatMap((a, i) => (a === '--chromium-arg' && args[i + 1] ? [args[i + 1] as string] : []));
const DATA = '/work/benchdata';
const LCM = join(DATA, 'sd15-lcm.f16.safetensors');
const STYLE = join(DATA, 'sd15-style.f16.safetensors');
const BASE = join(DATA, 'sd15-base.f16.safetensors');
const OUT = join(DATA, `browser-vs-cli.${MODE}.out.safetensors`);
const CLI = join(REPO_ROOT, 'dist/cli/lora-mix.js');
/** Bytes per page of /proc/PID/statm (x86-64 Linux). */
const PAGE = 4096;

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] ?? 0) : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
};
const mb = (bytes: number) => `${(bytes / 1e6).toFixed(0)} MB`;

interface Run {
  seconds: number;
  /** Peak RSS: the CLI's process; the page's renderer + GPU processes. */
  peak: number;
  /** The page only: peak of all Chromium processes together. */
  peakAll?: number;
  /** The page only: renderer + GPU right before the files were chosen. */
  idle?: number;
  /** The page only: PSS (proportional set size: each shared page divided among the processes mapping it). */
  peakPss?: number;
  peakPssAll?: number;
  idlePss?: number;
  /** The page only: the longest task on the page's main thread (Long Tasks API), ms; 0 when none ≥ 50 ms. */
  longestTask?: number;
}

function cliRun(): Run {
  const argv =
    MODE === 'merge'
      ? ['merge', `${LCM}:1`, `${STYLE}:0.8`, '-o', OUT, '--dtype', 'fp16']
      : ['fuse', '--base', BASE, `${LCM}:1`, `${STYLE}:0.8`, '-o', OUT, '-q'];
  const t0 = performance.now();
  const r = spawnSync('/usr/bin/time', ['-v', process.execPath, CLI, ...argv], { encoding: 'utf8', cwd: REPO_ROOT });
  const seconds = (performance.now() - t0) / 1000;
  rmSync(OUT, { force: true });
  if (r.status !== 0) throw new Error(`CLI failed: ${r.stderr}`);
  const user = Number(/User time \(seconds\): ([\d.]+)/.exec(r.stderr)?.[1] ?? 0);
  const sys = Number(/System time \(seconds\): ([\d.]+)/.exec(r.stderr)?.[1] ?? 0);
  const faults = /Minor \(reclaiming a frame\) page faults: (\d+)/.exec(r.stderr)?.[1];
  if (CPU) console.log(`  CLI CPU: ${user.toFixed(2)} s user + ${sys.toFixed(2)} s system, ${faults} minor faults`);
  const kb = /Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr)?.[1];
  // merge prints its phases: "(load 1.23 s, merge 0.45 s, write 0.67 s)"
  const p = /\(load ([\d.]+) s, merge ([\d.]+) s, write ([\d.]+) s\)/.exec(r.stdout + r.stderr);
  if (p) console.log(`  CLI phases: load (read + decode + hash) ${p[1]} s, merge ${p[2]} s, write ${p[3]} s`);
  return { seconds, peak: Number(kb) * 1024 };
}

/** Chromium processes descending from this process: type, RSS and PSS (shared pages divided among their users). */
function chromiumTree(): { type: string; rss: number; pss: number }[] {
  const parent = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parent.set(Number(d), ppid);
    } catch {
      // the process ended
    }
  }
  const mine = (pid: number): boolean => {
    for (let p = parent.get(pid), n = 0; p !== undefined && n < 20; p = parent.get(p), n++)
      if (p === process.pid) return true;
    return false;
  };
  const out: { type: string; rss: number; pss: number }[] = [];
  for (const pid of parent.keys()) {
    if (!mine(pid)) continue;
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes('chrom')) continue;
      const type = /--type=([a-z-]+)/.exec(cmd)?.[1] ?? 'browser';
      const rss = Number(readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')[1]) * PAGE;
      const pss = Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0) * 1024;
      out.push({ type, rss, pss });
    } catch {
      // the process ended
    }
  }
  return out;
}

const TICK = 100; // clock ticks per second (getconf CLK_TCK on Linux)

/** CPU seconds (user + system) of every thread of every Chromium process below this one, by "type/thread name". */
interface ThreadCpu {
  cpu: number;
  sys: number;
  faults: number;
}
function chromiumCpu(): Map<string, ThreadCpu> {
  const out = new Map<string, ThreadCpu>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8');
      if (!cmd.includes('chrom')) continue;
      const type = /--type=([a-z-]+)/.exec(cmd)?.[1] ?? 'browser';
      const utility = /--utility-sub-type=([\w.]+)/.exec(cmd)?.[1];
      for (const t of readdirSync(`/proc/${d}/task`)) {
        const stat = readFileSync(`/proc/${d}/task/${t}/stat`, 'utf8');
        const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')).replace(/\d+$/, '#');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        const cpu = (Number(f[11]) + Number(f[12])) / TICK;
        const sys = Number(f[12]) / TICK;
        const faults = Number(f[7]);
        const key = `${type}${utility ? `(${utility.split('.').at(-1)})` : ''} ${d} / ${name}${name === 'DedicatedWorker' ? ` ${t}` : ''}`;
        const o = out.get(key) ?? { cpu: 0, sys: 0, faults: 0 };
        out.set(key, { cpu: o.cpu + cpu, sys: o.sys + sys, faults: o.faults + faults });
      }
    } catch {
      // the process or thread ended
    }
  }
  return out;
}

/** The CPU seconds spent between two chromiumCpu() snapshots, largest first (≥ 0.05 s). */
function cpuSpent(before: Map<string, ThreadCpu>, after: Map<string, ThreadCpu>): string {
  const zero = { cpu: 0, sys: 0, faults: 0 };
  const rows = [...after]
    .map(([k, v]) => {
      const b = before.get(k) ?? zero;
      return [k, { cpu: v.cpu - b.cpu, sys: v.sys - b.sys, faults: v.faults - b.faults }] as const;
    })
    .filter(([, v]) => v.cpu >= 0.05);
  rows.sort((a, b) => b[1].cpu - a[1].cpu);
  const total = rows.reduce((a, [, v]) => a + v.cpu, 0);
  const faults = rows.reduce((a, [, v]) => a + v.faults, 0);
  return [
    `    CPU s by thread (total ${total.toFixed(2)}, minor faults ${faults}):`,
    ...rows.map(([k, v]) => `      ${v.cpu.toFixed(2)} (system ${v.sys.toFixed(2)}, ${v.faults} faults)  ${k}`),
  ].join('\n');
}

const pageProcesses = <T extends { type: string }>(tree: T[]): T[] =>
  tree.filter((p) => p.type === 'renderer' || p.type === 'gpu-process');

function sampler(): {
  /** The page's peak PSS since the previous mark (or the start), and start a new stretch. */
  mark(): number;
  stop(): { peak: number; peakAll: number; peakPss: number; peakPssAll: number };
} {
  let peak = 0;
  let peakAll = 0;
  let peakPss = 0;
  let peakPssAll = 0;
  let stretch = 0;
  const sample = () => {
    const tree = chromiumTree();
    const page = pageProcesses(tree);
    peak = Math.max(
      peak,
      page.reduce((a, p) => a + p.rss, 0),
    );
    const pss = page.reduce((a, p) => a + p.pss, 0);
    peakPss = Math.max(peakPss, pss);
    stretch = Math.max(stretch, pss);
    peakAll = Math.max(
      peakAll,
      tree.reduce((a, p) => a + p.rss, 0),
    );
    peakPssAll = Math.max(
      peakPssAll,
      tree.reduce((a, p) => a + p.pss, 0),
    );
  };
  sample();
  const timer = setInterval(sample, 150);
  return {
    mark() {
      sample();
      const m = stretch;
      stretch = 0;
      return m;
    },
    stop() {
      clearInterval(timer);
      sample();
      return { peak, peakAll, peakPss, peakPssAll };
    },
  };
}

async function pageRun(webDir: string): Promise<Run> {
  // fuse: a profile on disk, whose storage quota is a share of the disk (a fresh in-memory profile's is below the
  // 2.1 GB the page streams into its origin-private file system); removed after the round.
  const profile = MODE === 'fuse' ? mkdtempSync(join(DATA, 'browser-profile-')) : undefined;
  const session = await openSession({
    root: webDir,
    ...(profile ? { userDataDir: profile } : {}),
    ...(EXTRA_ARGS.length ? { args: [...CHROMIUM_ARGS, ...EXTRA_ARGS] } : {}),
  });
  const { page } = session;
  try {
    await page.waitForSelector('body[data-ready="true"]');
    const idleTree = pageProcesses(chromiumTree());
    const idle = idleTree.reduce((a, p) => a + p.rss, 0);
    const idlePss = idleTree.reduce((a, p) => a + p.pss, 0);
    await page.evaluate(() => {
      const w = window as unknown as { longTasks: number[] };
      w.longTasks = [];
      new PerformanceObserver((list) => {
        for (const e of list.getEntries()) w.longTasks.push(e.duration);
      }).observe({ type: 'longtask' });
    });
    const mem = sampler();
    /** fuse: the page's peak PSS while the LoRAs and the base were added, before Fuse was clicked. */
    let addPss = 0;
    let cpu0: Map<string, ThreadCpu> | undefined;
    const t0 = performance.now();
    await page.setInputFiles('#files', [LCM, STYLE]);
    await page.waitForFunction(() => document.querySelectorAll('#loras input.weight').length === 2, undefined, {
      timeout: 300_000,
    });
    const read = (performance.now() - t0) / 1000;
    await page.locator('#loras input.weight').nth(0).fill('1');
    await page.locator('#loras input.weight').nth(1).fill('0.8');
    if (MODE === 'merge') {
      await page.selectOption('#dtype', 'F16');
      await page.click('#merge');
    } else {
      await page.setInputFiles('#base', BASE);
      await page.waitForFunction(() => document.getElementById('fuse')?.getAttribute('aria-disabled') === 'false');
      if (NO_DIALOG) {
        // A browser without the File System Access API: the page offers the checkpoint as a download.
        await page.evaluate(() => {
          (window as unknown as { showSaveFilePicker: unknown }).showSaveFilePicker = undefined;
        });
      } else {
        // The save dialog answered with a file of the origin-private file system (headless Chromium shows no
        // dialog): the worker streams the checkpoint into it, the path a user with showSaveFilePicker takes.
        await page.evaluate(() => {
          (window as unknown as { showSaveFilePicker: unknown }).showSaveFilePicker = async (o: {
            suggestedName: string;
          }) => (await navigator.storage.getDirectory()).getFileHandle(o.suggestedName, { create: true });
        });
      }
      addPss = mem.mark();
      cpu0 = chromiumCpu();
      await page.click('#fuse');
    }
    const done = MODE === 'merge' ? 'merged' : 'fuse';
    await page.waitForFunction(
      (d) => document.body.dataset[d] !== undefined || !document.getElementById('error')?.hidden,
      done,
      { timeout: 300_000 },
    );
    const seconds = (performance.now() - t0) / 1000;
    if (CPU && cpu0) console.log(cpuSpent(cpu0, chromiumCpu()));
    const jobPss = mem.mark();
    const { peak, peakAll, peakPss, peakPssAll } = mem.stop();
    if (!(await page.locator('#error').isHidden())) throw new Error(`page failed: ${await page.textContent('#error')}`);
    const tasks = await page.evaluate(() => (window as unknown as { longTasks: number[] }).longTasks);
    console.log(
      `  page phases: read (read + hash + decode) ${read.toFixed(2)} s, ${MODE === 'merge' ? 'merge + write' : 'fuse + write'} ${(seconds - read).toFixed(2)} s`,
    );
    const seen = await page.evaluate(() => {
      const o = (
        window as unknown as {
          loraMixPage: {
            loras: { fileName: string; seconds: number; phases?: { read: number; hash: number; decode: number } }[];
            merges: { seconds: number; phases?: { merge: number; write: number } }[];
          };
        }
      ).loraMixPage;
      return { loras: o.loras, merge: o.merges[0] };
    });
    for (const l of seen.loras) {
      const ph = l.phases;
      console.log(
        `    worker: ${l.fileName} ${l.seconds.toFixed(2)} s` +
          (ph
            ? ` (read ${ph.read.toFixed(2)} s, SHA-256 ${ph.hash.toFixed(2)} s, decode ${ph.decode.toFixed(2)} s)`
            : ''),
      );
    }
    const mp = seen.merge?.phases;
    if (mp) console.log(`    worker: merge ${mp.merge.toFixed(2)} s, encode + write ${mp.write.toFixed(2)} s`);
    if (MODE === 'fuse') {
      const fused = await page.evaluate(
        () =>
          (
            window as unknown as {
              loraMixPage: {
                fuses: {
                  kernel: string;
                  savedTo?: string;
                  keptIn?: string;
                  seconds: number;
                  phases?: { read: number; write: number; kernel: number };
                }[];
              };
            }
          ).loraMixPage.fuses[0],
      );
      console.log(
        `  page fuse: ${fused?.kernel}, written to ${fused?.savedTo ?? 'a Blob'}, worker ${fused?.seconds.toFixed(2)} s` +
          (fused?.phases
            ? ` (base read waits ${fused.phases.read.toFixed(2)} s, output write waits ${fused.phases.write.toFixed(2)} s, kernel ${fused.phases.kernel.toFixed(2)} s)`
            : ''),
      );
      const bytes = await page.evaluate(async () => {
        const dir = await navigator.storage.getDirectory();
        let total = 0;
        for await (const [, h] of (
          dir as unknown as { entries(): AsyncIterable<[string, FileSystemHandle]> }
        ).entries())
          if (h.kind === 'file') total += (await (h as FileSystemFileHandle).getFile()).size;
        return total;
      });
      console.log(
        `  page PSS peak: adding the files ${mb(addPss)}, the fuse ${mb(jobPss)}; result kept in ${fused?.keptIn ?? '(the chosen file)'}`,
      );
      console.log(`  page fuse: origin-private file system holds ${(bytes / 1e9).toFixed(3)} GB after the round`);
      const offered = await page.evaluate(() => {
        const a = document.getElementById('fuse-download') as HTMLAnchorElement | null;
        return a && !a.hidden ? a.href : '';
      });
      if (NO_DIALOG) console.log(`  page fuse: offered as a download: ${offered || 'no'}`);
    }
    return { seconds, peak, peakAll, idle, peakPss, peakPssAll, idlePss, longestTask: Math.max(0, ...tasks) };
  } finally {
    await session.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
  for (const f of MODE === 'merge' ? [LCM, STYLE] : [LCM, STYLE, BASE])
    if (!existsSync(f))
      throw new Error(`${f} is missing: generate it with npx tsx bench/fuse.ts --arch sd15 --gen-only`);
  const tmp = tempDir('bench-vs-cli');
  const built = await buildBrowser({ outDir: tmp.dir });
  const load0 = os.loadavg()[0] ?? 0;
  const cli: Run[] = [];
  const page: Run[] = [];
  try {
    for (let r = 0; r < RUNS; r++) {
      cli.push(cliRun());
      console.log(`  CLI  run ${r + 1}: ${cli.at(-1)?.seconds.toFixed(2)} s, peak RSS ${mb(cli.at(-1)?.peak ?? 0)}`);
      page.push(await pageRun(built.webDir));
      const p = page.at(-1);
      console.log(
        `  page run ${r + 1}: ${p?.seconds.toFixed(2)} s, renderer+GPU peak RSS ${mb(p?.peak ?? 0)} (idle ${mb(p?.idle ?? 0)}), PSS ${mb(p?.peakPss ?? 0)} (idle ${mb(p?.idlePss ?? 0)}), all Chromium RSS ${mb(p?.peakAll ?? 0)} PSS ${mb(p?.peakPssAll ?? 0)}, longest main-thread task ${(p?.longestTask ?? 0).toFixed(0)} ms`,
      );
    }
  } finally {
    tmp.remove();
    rmSync(OUT, { force: true });
  }
  const [ct, pt] = [median(cli.map((x) => x.seconds)), median(page.map((x) => x.seconds))];
  const [cm, pm] = [median(cli.map((x) => x.peak)), median(page.map((x) => x.peak))];
  const pa = median(page.map((x) => x.peakAll ?? 0));
  const pi = median(page.map((x) => x.idle ?? 0));
  const pp = median(page.map((x) => x.peakPss ?? 0));
  const ppi = median(page.map((x) => x.idlePss ?? 0));
  const ppa = median(page.map((x) => x.peakPssAll ?? 0));
  const chromium = spawnSync('/usr/bin/chromium', ['--version'], { encoding: 'utf8' }).stdout.trim();
  const lines = [
    `### page vs CLI: ${MODE === 'merge' ? 'merge sd15-lcm.f16 ×1 + sd15-style.f16 ×0.8 (exact, kohya F16)' : 'fuse sd15-lcm.f16 ×1 + sd15-style.f16 ×0.8 into sd15-base.f16'}`,
    '',
    `- Command: \`flock /work/bench.lock npx tsx bench/browser-vs-cli.ts ${MODE}${RUNS !== 3 ? ` --runs ${RUNS}` : ''}\`; ` +
      `${new Date().toISOString()}; ${os.cpus().length} vCPU (${os.cpus()[0]?.model ?? '?'}), Node ${process.version}, ${chromium} headless; ` +
      `load average ${load0.toFixed(1)} at the start, ${(os.loadavg()[0] ?? 0).toFixed(1)} at the end; medians of ${RUNS} interleaved rounds.`,
    '- CLI: `node dist/cli/lora-mix.js` under /usr/bin/time -v (wall, peak RSS; writes the file with fsync). Page: fresh ' +
      'Chromium per round (cross-origin isolated), wall from choosing the files to the result offered (merge: a Blob, the download not timed; fuse: streamed into an origin-private file by the worker, the showSaveFilePicker path); ' +
      'memory = peak of the summed PSS (shared pages divided among the processes that map them; summed RSS counts ' +
      "Chromium's shared code once per process) of the renderer + GPU processes (the page and its Web Worker), sampled every 150 ms " +
      'from /proc; summed RSS as before, and all Chromium processes together, in the last columns; the CLI is one process: its peak RSS.',
    '',
    '| where | time | ratio | peak PSS | vs CLI | peak RSS (summed) | all Chromium PSS / RSS | longest main-thread task |',
    '|---|---|---|---|---|---|---|---|',
    `| CLI | ${ct.toFixed(2)} s | 1.00× | (RSS) ${mb(cm)} | | ${mb(cm)} | | |`,
    `| page (Web Worker) | ${pt.toFixed(2)} s | ${(pt / ct).toFixed(2)}× | ${mb(pp)} (idle page ${mb(ppi)}) | ${pp - cm >= 0 ? '+' : '−'}${mb(Math.abs(pp - cm))} | ${mb(pm)} (idle ${mb(pi)}) | ${mb(ppa)} / ${mb(pa)} | ${Math.max(...page.map((x) => x.longestTask ?? 0)).toFixed(0)} ms (max of rounds) |`,
    '',
    `Rounds (s): CLI ${cli.map((x) => x.seconds.toFixed(2)).join(', ')}; page ${page.map((x) => x.seconds.toFixed(2)).join(', ')}.`,
    '',
  ];
  console.log(lines.join('\n'));
  if (RECORD) {
    const file = join(REPO_ROOT, 'bench/RESULTS.md');
    writeFileSync(file, `${readFileSync(file, 'utf8').trimEnd()}\n\n${lines.join('\n')}`);
    console.log(`appended to ${file}`);
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
