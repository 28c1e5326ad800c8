/**
 * The local merge page: drop LoRA files, see what each one is, choose weights, merge, download.
 * The work happens in a Web Worker (worker.ts); this file only drives the DOM.
 */
import type { FromWorker, LoraInfo, MergeRequest, MergeSummary, ToWorker } from './protocol.js';

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`page is missing #${id}`);
  return el as T;
};

const ARCH_NAMES: Record<string, string> = { sd15: 'SD 1.5', sdxl: 'SDXL', ssd1b: 'SSD-1B' };
const FORMAT_NAMES: Record<string, string> = {
  kohya: 'kohya',
  peft: 'PEFT / diffusers',
  'diffusers-old': 'old diffusers (attention processors)',
};

interface Entry {
  id: number;
  li: HTMLLIElement;
  info?: LoraInfo;
  weight?: HTMLInputElement;
  failed?: boolean;
}

/** What the page has seen, for tests and benchmarks that drive it (window.loraMixPage). */
const observed: { loras: LoraInfo[]; merges: MergeSummary[] } = { loras: [], merges: [] };
(window as unknown as { loraMixPage: typeof observed }).loraMixPage = observed;

const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
const post = (m: ToWorker) => worker.postMessage(m);

const entries = new Map<number, Entry>();
let nextId = 1;
let job = 0;
let merging = false;
let downloadUrl: string | null = null;
/** File name offered for the merge in progress. */
let pendingName = 'merged.safetensors';

const el = {
  files: $<HTMLInputElement>('files'),
  drop: $<HTMLLabelElement>('drop'),
  list: $<HTMLUListElement>('loras'),
  rank: $<HTMLInputElement>('rank'),
  blocks: $<HTMLInputElement>('blocks'),
  format: $<HTMLSelectElement>('format'),
  dtype: $<HTMLSelectElement>('dtype'),
  merge: $<HTMLButtonElement>('merge'),
  progress: $<HTMLProgressElement>('progress'),
  status: $<HTMLSpanElement>('status'),
  result: $<HTMLDivElement>('result'),
  summary: $<HTMLParagraphElement>('summary'),
  download: $<HTMLAnchorElement>('download'),
  error: $<HTMLParagraphElement>('error'),
  version: $<HTMLSpanElement>('version'),
};

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
const mib = (bytes: number) =>
  bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;

function describe(info: LoraInfo): string {
  const s = info.summary;
  const ranks = s.ranks
    .map((r) => (s.ranks.length > 1 ? `${r.value}×${r.count}` : String(r.value)))
    .slice(0, 4)
    .join(', ');
  const groups = Object.entries(s.byGroup)
    .map(([g, n]) => `${n} ${g.replace('_', ' ')}`)
    .join(', ');
  return [
    `${FORMAT_NAMES[s.format ?? ''] ?? s.format ?? 'LoRA'}`,
    `${ARCH_NAMES[s.arch] ?? s.arch}${s.size === 'tiny' ? ' (tiny test layout)' : ''}`,
    `${plural(s.modules, 'module')} (${groups})`,
    `rank ${ranks}`,
    s.dtype ?? '',
    mib(info.bytes),
  ]
    .filter(Boolean)
    .join(' · ');
}

function addFiles(files: ArrayLike<File>): void {
  for (const file of Array.from(files)) {
    const id = nextId++;
    const li = h(
      'li',
      { className: 'lora loading' },
      h('span', { className: 'name' }, file.name),
      h('span', { className: 'facts' }, 'reading…'),
    );
    li.dataset.id = String(id);
    el.list.append(li);
    entries.set(id, { id, li });
    post({ type: 'add', id, file });
  }
  refresh();
}

function removeEntry(id: number): void {
  const e = entries.get(id);
  if (!e) return;
  e.li.remove();
  entries.delete(id);
  post({ type: 'remove', id });
  refresh();
}

function removeButton(id: number): HTMLButtonElement {
  const b = h('button', { className: 'remove', type: 'button', textContent: 'Remove', title: 'Remove this file' });
  b.addEventListener('click', () => removeEntry(id));
  return b;
}

function showLoaded(info: LoraInfo): void {
  const e = entries.get(info.id);
  if (!e) return;
  e.info = info;
  const weight = h('input', { type: 'number', step: '0.05', value: String(info.defaultWeight), className: 'weight' });
  weight.setAttribute('aria-label', `weight of ${info.fileName}`);
  weight.addEventListener('input', refresh);
  e.weight = weight;
  const name = h('span', { className: 'name' }, info.fileName);
  if (info.lcm) name.append(h('span', { className: 'badge', title: `detected by ${info.lcm}` }, 'LCM-LoRA'));
  const facts = h('span', { className: 'facts' }, describe(info));
  if (info.summary.notes.length > 0) facts.title = info.summary.notes.join('\n');
  const controls = h(
    'span',
    { className: 'controls' },
    h('label', { className: 'inline' }, 'weight λ', weight),
    removeButton(info.id),
  );
  e.li.className = 'lora';
  e.li.replaceChildren(name, controls, facts);
  refresh();
}

function showFailed(id: number, fileName: string, code: string, message: string): void {
  const e = entries.get(id);
  if (!e) return;
  e.failed = true;
  e.li.className = 'lora bad';
  e.li.replaceChildren(
    h('span', { className: 'name' }, fileName),
    h('span', { className: 'controls' }, removeButton(id)),
    h('span', { className: 'facts' }, h('span', { className: 'code' }, code), ` — ${message}`),
  );
  refresh();
}

function loaded(): Entry[] {
  return [...entries.values()].filter((e) => e.info !== undefined);
}

function refresh(): void {
  const ok = loaded();
  const pending = [...entries.values()].some((e) => !e.info && !e.failed);
  const archs = new Set(ok.map((e) => `${e.info!.summary.arch}/${e.info!.summary.size}`));
  const weightsOk = ok.every(
    (e) => e.weight && e.weight.value.trim() !== '' && Number.isFinite(Number(e.weight.value)),
  );
  el.merge.disabled = merging || pending || ok.length === 0 || archs.size > 1 || !weightsOk;
  if (!merging) {
    if (archs.size > 1)
      el.status.textContent = `The files are for different architectures (${[...archs].join(', ')}); remove some.`;
    else if (pending) el.status.textContent = 'Reading files…';
    else if (ok.length === 0) el.status.textContent = 'Add at least one LoRA file.';
    else if (!weightsOk) el.status.textContent = 'Every weight must be a number.';
    else el.status.textContent = `${plural(ok.length, 'LoRA')} ready.`;
  }
}

function showError(text: string | null): void {
  el.error.hidden = text === null;
  el.error.textContent = text ?? '';
}

function startMerge(): void {
  const ok = loaded();
  const rankText = el.rank.value.trim();
  const rank = rankText === '' ? undefined : Number(rankText);
  if (rank !== undefined && !(Number.isInteger(rank) && rank >= 1)) {
    showError(`USAGE_BAD_ARGUMENT — target rank must be a whole number ≥ 1, found "${rankText}"`);
    return;
  }
  const names = ok.map((e) => e.info!.fileName.replace(/\.safetensors$/i, ''));
  const request: MergeRequest = {
    inputs: ok.map((e) => ({ id: e.id, weight: Number(e.weight!.value) })),
    ...(rank !== undefined ? { rank } : {}),
    ...(el.blocks.value.trim() ? { blocks: el.blocks.value.trim() } : {}),
    format: el.format.value === 'peft' ? 'peft' : 'kohya',
    dtype: el.dtype.value as MergeRequest['dtype'],
    fileName: `${names.join('+').slice(0, 80)}.merged.safetensors`,
  };
  job++;
  merging = true;
  showError(null);
  el.result.hidden = true;
  el.progress.hidden = false;
  el.progress.removeAttribute('value');
  el.status.textContent = 'Merging…';
  el.merge.disabled = true;
  pendingName = request.fileName;
  post({ type: 'merge', job, request });
}

function finishMerge(): void {
  merging = false;
  el.progress.hidden = true;
  refresh();
}

worker.onmessage = (event: MessageEvent<FromWorker>) => {
  const m = event.data;
  switch (m.type) {
    case 'ready':
      el.version.textContent = m.version;
      document.body.dataset.ready = 'true';
      break;
    case 'added':
      observed.loras.push(m.info);
      showLoaded(m.info);
      break;
    case 'add-failed':
      showFailed(m.id, m.fileName, m.error.code, m.error.message);
      break;
    case 'progress':
      if (m.job !== job) break;
      if (m.phase === 'merge') {
        el.progress.max = m.total;
        el.progress.value = m.done;
        el.status.textContent = `Merging: module ${m.done} of ${m.total}`;
      } else {
        el.progress.removeAttribute('value');
        el.status.textContent = 'Writing the file…';
      }
      break;
    case 'merged': {
      if (m.job !== job) break;
      finishMerge();
      if (downloadUrl) URL.revokeObjectURL(downloadUrl);
      downloadUrl = URL.createObjectURL(
        new Blob([m.bytes as Uint8Array<ArrayBuffer>], { type: 'application/octet-stream' }),
      );
      el.download.href = downloadUrl;
      el.download.download = pendingName;
      const s = m.summary;
      observed.merges.push(s);
      const rank = (r: { min: number; max: number }) => (r.min === r.max ? String(r.min) : `${r.min}–${r.max}`);
      el.summary.textContent =
        `${ARCH_NAMES[s.arch] ?? s.arch} LoRA, ${plural(s.modules, 'module')}` +
        (s.dropped > 0 ? ` (${s.dropped} dropped: zero weight)` : '') +
        `, rank ${rank(s.rankBefore)} → ${rank(s.rankAfter)}, ` +
        (s.exact
          ? 'exact weighted sum'
          : `norm kept: mean ${(100 * s.meanNormKept).toFixed(2)} %, min ${(100 * s.minNormKept).toFixed(2)} %`) +
        ` · ${s.format} ${s.dtype}, ${mib(s.bytes)} · ${s.seconds.toFixed(2)} s`;
      el.result.hidden = false;
      el.status.textContent = 'Done.';
      document.body.dataset.merged = String(m.job);
      break;
    }
    case 'merge-failed':
      if (m.job !== job) break;
      finishMerge();
      showError(`${m.error.code} — ${m.error.message}`);
      el.status.textContent = 'The merge failed.';
      break;
  }
};

worker.onerror = (event) => {
  merging = false;
  el.progress.hidden = true;
  showError(`INTERNAL — the worker stopped: ${event.message}`);
};

el.files.addEventListener('change', () => {
  if (el.files.files) addFiles(el.files.files);
  el.files.value = '';
});
el.drop.addEventListener('dragover', (e) => {
  e.preventDefault();
  el.drop.classList.add('over');
});
el.drop.addEventListener('dragleave', () => el.drop.classList.remove('over'));
el.drop.addEventListener('drop', (e) => {
  e.preventDefault();
  el.drop.classList.remove('over');
  if (e.dataTransfer?.files) addFiles(e.dataTransfer.files);
});
el.merge.addEventListener('click', startMerge);
refresh();
