/**
 * The local merge page: drop LoRA files, see what each one is, choose weights, merge, download.
 * The work happens in a Web Worker (worker.ts); this file only drives the DOM.
 *
 * State rules (state.ts): a result is offered only while the inputs and options are the ones that made it; a merge
 * error is shown only while the request that failed is still the current one; a file added twice is flagged and
 * left out; files for different architectures are named with theirs.
 */
import { LoraMixError } from '../../src/core/errors.js';
import type { Arch } from '../../src/layout/index.js';
import { parseBlockWeights } from '../../src/lora/blocks.js';
import { methodControls } from './methods-ui.js';
import type {
  AnalyzeSummary,
  ErrorInfo,
  FromWorker,
  FuseRequest,
  FuseSummary,
  LoraInfo,
  MergeRequest,
  MergeSummary,
  ResizeSummary,
  ToWorker,
} from './protocol.js';
import { planAnalyze, planFuse, planResize, type ToolKind, type ToolPlan } from './tools.js';
import {
  archConflict,
  archName,
  duplicatesOf,
  fileKey,
  parseRank,
  parseWeightField,
  percent,
  requestKey,
  ARCH_NAMES,
} from './state.js';

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`page is missing #${id}`);
  return el as T;
};

const FORMAT_NAMES: Record<string, string> = {
  kohya: 'kohya',
  peft: 'PEFT / diffusers',
  'diffusers-old': 'old diffusers (attention processors)',
};

interface Entry {
  id: number;
  key: string;
  file: File;
  li: HTMLLIElement;
  /** The worker was asked to read it (never for a duplicate while its original is there). */
  sent: boolean;
  info?: LoraInfo;
  failed?: ErrorInfo;
  weight?: HTMLInputElement;
  weightError?: HTMLElement;
  blocks?: HTMLInputElement;
  blocksError?: HTMLElement;
  note?: HTMLElement;
  readBar?: HTMLProgressElement;
  readText?: HTMLElement;
}

/** What the page has seen, for tests and benchmarks that drive it (window.loraMixPage). */
const observed: {
  loras: LoraInfo[];
  merges: MergeSummary[];
  resizes: ResizeSummary[];
  fuses: FuseSummary[];
  analyses: AnalyzeSummary[];
} = { loras: [], merges: [], resizes: [], fuses: [], analyses: [] };
(window as unknown as { loraMixPage: typeof observed }).loraMixPage = observed;

const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
const post = (m: ToWorker) => worker.postMessage(m);

/** Entries in page order. */
const entries: Entry[] = [];
let nextId = 1;
let job = 0;
/** The job in flight (one at a time), what it is and the request key it was started for. */
let running: { job: number; key: string; kind: 'merge' | ToolKind } | null = null;
/** The result on offer and the request key that made it. */
let result: { key: string; url: string; blob: Blob; name: string } | null = null;
/** The merge error on show and the request key that failed. */
let failure: { key: string } | null = null;

const el = {
  files: $<HTMLInputElement>('files'),
  drop: $<HTMLLabelElement>('drop'),
  list: $<HTMLUListElement>('loras'),
  method: $<HTMLSelectElement>('method'),
  methodHelp: $<HTMLParagraphElement>('method-help'),
  methodError: $<HTMLParagraphElement>('method-error'),
  methodParams: $<HTMLDivElement>('method-params'),
  rank: $<HTMLInputElement>('rank'),
  rankError: $<HTMLParagraphElement>('rank-error'),
  blocks: $<HTMLInputElement>('blocks'),
  blocksError: $<HTMLParagraphElement>('blocks-error'),
  format: $<HTMLSelectElement>('format'),
  dtype: $<HTMLSelectElement>('dtype'),
  merge: $<HTMLButtonElement>('merge'),
  progress: $<HTMLProgressElement>('progress'),
  percent: $<HTMLSpanElement>('percent'),
  status: $<HTMLParagraphElement>('status'),
  result: $<HTMLDivElement>('result'),
  summary: $<HTMLParagraphElement>('summary'),
  download: $<HTMLAnchorElement>('download'),
  save: $<HTMLButtonElement>('save'),
  stale: $<HTMLParagraphElement>('stale'),
  error: $<HTMLDivElement>('error'),
  version: $<HTMLSpanElement>('version'),
  resizeInput: $<HTMLSelectElement>('resize-input'),
  resizeRule: $<HTMLSelectElement>('resize-rule'),
  resizeValue: $<HTMLInputElement>('resize-value'),
  resizeMax: $<HTMLInputElement>('resize-max'),
  resizeError: $<HTMLParagraphElement>('resize-error'),
  resize: $<HTMLButtonElement>('resize'),
  resizeResult: $<HTMLDivElement>('resize-result'),
  resizeSummary: $<HTMLParagraphElement>('resize-summary'),
  resizeDownload: $<HTMLAnchorElement>('resize-download'),
  base: $<HTMLInputElement>('base'),
  fuseDtype: $<HTMLSelectElement>('fuse-dtype'),
  fuse: $<HTMLButtonElement>('fuse'),
  fuseResult: $<HTMLDivElement>('fuse-result'),
  fuseSummary: $<HTMLParagraphElement>('fuse-summary'),
  fuseDownload: $<HTMLAnchorElement>('fuse-download'),
  analyze: $<HTMLButtonElement>('analyze'),
  analysis: $<HTMLDivElement>('analysis'),
  analysisFrame: $<HTMLIFrameElement>('analysis-frame'),
  analysisText: $<HTMLPreElement>('analysis-text'),
  toolsProgress: $<HTMLProgressElement>('tools-progress'),
  toolsPercent: $<HTMLSpanElement>('tools-percent'),
  toolsStatus: $<HTMLParagraphElement>('tools-status'),
  toolsStale: $<HTMLParagraphElement>('tools-stale'),
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
    archName(s.arch, s.size),
    `${plural(s.modules, 'module')} (${groups})`,
    `rank ${ranks}`,
    s.dtype ?? '',
    mib(info.bytes),
    `SHA-256 ${info.sha256.slice(0, 12)}…`,
  ]
    .filter(Boolean)
    .join(' · ');
}

const byId = (id: number) => entries.find((e) => e.id === id);
/** Duplicates by name/size/mtime, and by content once the worker has hashed both files. */
const findDuplicates = () => duplicatesOf(entries.map((e) => ({ id: e.id, key: e.key, sha256: e.info?.sha256 })));
const nameLine = (fileName: string) => h('span', { className: 'name' }, fileName);

// ---------------------------------------------------------------------------------------------------------------
// Cards

function removeButton(e: Entry): HTMLButtonElement {
  const b = h('button', { className: 'remove', type: 'button', textContent: 'Remove' });
  b.setAttribute('aria-label', `Remove ${e.file.name}`);
  b.addEventListener('click', () => removeEntry(e.id));
  return b;
}

function showReading(e: Entry): void {
  const bar = h('progress', { max: 100, value: 0 });
  bar.setAttribute('aria-label', `Reading ${e.file.name}`);
  const text = h('span', { className: 'facts' }, 'reading… 0 %');
  e.readBar = bar;
  e.readText = text;
  e.li.className = 'lora loading';
  delete e.li.dataset.dupOf;
  e.li.replaceChildren(nameLine(e.file.name), h('span', { className: 'controls' }, removeButton(e)), text, bar);
}

function showDuplicate(e: Entry, original: Entry): void {
  const position = entries.indexOf(original) + 1;
  const sameName = e.key === original.key;
  e.li.className = 'lora dup';
  e.li.dataset.dupOf = String(original.id);
  e.li.replaceChildren(
    nameLine(e.file.name),
    h('span', { className: 'controls' }, removeButton(e)),
    h(
      'span',
      { className: 'facts' },
      h('span', { className: 'code' }, 'DUPLICATE'),
      sameName
        ? ` — the same file is already file ${position} in the list; it is left out of the merge. `
        : ` — the same content (SHA-256 ${e.info?.sha256.slice(0, 16) ?? ''}…) as file ${position}, ` +
            `${original.file.name}, under another name; it is left out of the merge. `,
      'Remove one copy (to count it twice, give it twice the weight).',
    ),
  );
}

function showLoaded(e: Entry, info: LoraInfo): void {
  e.info = info;
  const weight = h('input', {
    type: 'text',
    inputMode: 'decimal',
    value: String(info.defaultWeight),
    className: 'weight',
  });
  weight.setAttribute('aria-label', `Weight of ${info.fileName}`);
  weight.title = 'a number, or per-component strengths such as unet=0.8,te=0.5';
  weight.addEventListener('input', refresh);
  const weightError = h('span', { className: 'field-error', hidden: true });
  weightError.id = `weight-error-${e.id}`;
  weight.setAttribute('aria-describedby', weightError.id);
  e.weightError = weightError;
  const blocks = h('input', { type: 'text', className: 'blocks', spellcheck: false, placeholder: 'as in Options' });
  blocks.setAttribute('aria-label', `Block weights of ${info.fileName}`);
  blocks.addEventListener('input', refresh);
  const blocksError = h('span', { className: 'field-error', hidden: true });
  blocksError.id = `blocks-error-${e.id}`;
  blocks.setAttribute('aria-describedby', blocksError.id);
  e.weight = weight;
  e.blocks = blocks;
  e.blocksError = blocksError;
  const name = nameLine(info.fileName);
  if (info.lcm) name.append(h('span', { className: 'badge', title: `detected by ${info.lcm}` }, 'LCM-LoRA'));
  const facts = h('span', { className: 'facts' }, describe(info));
  if (info.summary.notes.length > 0) facts.title = info.summary.notes.join('\n');
  const note = h('span', { className: 'note', hidden: true });
  e.note = note;
  const controls = h(
    'span',
    { className: 'controls' },
    h('label', { className: 'inline' }, 'weight λ', weight),
    h('label', { className: 'inline blocks-label' }, 'blocks', blocks),
    removeButton(e),
  );
  e.li.className = 'lora';
  delete e.li.dataset.dupOf;
  e.li.replaceChildren(name, controls, facts, note, weightError, blocksError);
}

function showFailed(e: Entry, error: ErrorInfo): void {
  e.failed = error;
  e.li.className = 'lora bad';
  delete e.li.dataset.dupOf;
  e.li.replaceChildren(
    nameLine(e.file.name),
    h('span', { className: 'controls' }, removeButton(e)),
    h('span', { className: 'facts' }, h('span', { className: 'code' }, error.code), ` — ${error.message}`),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Adding and removing

function addFiles(files: ArrayLike<File>): void {
  for (const file of Array.from(files)) {
    const id = nextId++;
    const li = h('li', { className: 'lora' });
    li.dataset.id = String(id);
    el.list.append(li);
    entries.push({ id, key: fileKey(file), file, li, sent: false });
  }
  refresh();
}

function removeEntry(id: number): void {
  const at = entries.findIndex((e) => e.id === id);
  const e = entries[at];
  if (!e) return;
  const hadFocus = e.li.contains(document.activeElement);
  entries.splice(at, 1);
  e.li.remove();
  if (e.sent) post({ type: 'remove', id });
  refresh();
  if (hadFocus) {
    // Focus stays in the list: the next card's Remove button, else the previous card's, else the file picker.
    const next = entries[at] ?? entries[at - 1];
    const target = next?.li.querySelector<HTMLButtonElement>('button.remove') ?? el.files;
    target.focus();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Validation and the current request

const active = (dups: Map<number, number>) => entries.filter((e) => !dups.has(e.id));

/** Check a block-weight string against the architecture; the error text, or null. */
function blocksProblem(text: string, arch: string | undefined, source: string): string | null {
  if (text.trim() === '' || arch === undefined || !(arch in ARCH_NAMES)) return null;
  try {
    parseBlockWeights(text, arch as Arch, source);
    return null;
  } catch (e) {
    return e instanceof LoraMixError ? `${e.code} — ${e.message}` : String(e);
  }
}

function setFieldError(input: HTMLInputElement, out: HTMLElement, text: string | null): void {
  out.hidden = text === null;
  out.textContent = text ?? '';
  if (text === null) input.removeAttribute('aria-invalid');
  else input.setAttribute('aria-invalid', 'true');
}

interface Readiness {
  request: MergeRequest | null;
  /** Why Merge cannot run, for the status line. */
  blocker: string | null;
}

function evaluate(): Readiness {
  const dups = findDuplicates();
  const files = active(dups);
  const loaded = files.filter((e) => e.info !== undefined);
  const pending = files.some((e) => !e.info && !e.failed);
  const conflict = archConflict(
    loaded.map((e) => ({ id: e.id, fileName: e.file.name, arch: e.info!.summary.arch, size: e.info!.summary.size })),
  );
  for (const e of loaded) {
    const odd = conflict?.odd.includes(e.id) ?? false;
    e.li.classList.toggle('conflict', odd);
    if (e.note) {
      e.note.hidden = !odd;
      e.note.textContent = odd
        ? `${archName(e.info!.summary.arch, e.info!.summary.size)}: not the architecture of the other files.`
        : '';
    }
  }
  const arch = conflict ? undefined : loaded[0]?.info?.summary.arch;

  const method = methods.read(loaded.length);
  methods.show(method);
  const rank = parseRank(el.rank.value);
  setFieldError(el.rank, el.rankError, rank.error ?? null);
  const globalBlocks = blocksProblem(el.blocks.value, arch, 'block weights (all inputs)');
  setFieldError(el.blocks, el.blocksError, globalBlocks);
  let blocksOk = globalBlocks === null;
  for (const e of loaded) {
    if (!e.blocks || !e.blocksError) continue;
    const problem = blocksProblem(e.blocks.value, arch, `block weights of ${e.file.name}`);
    setFieldError(e.blocks, e.blocksError, problem);
    if (problem) blocksOk = false;
  }
  const weights = loaded.map((e) => {
    const w = parseWeightField(e.weight?.value ?? '');
    if (e.weight && e.weightError) setFieldError(e.weight, e.weightError, 'error' in w ? w.error : null);
    return 'error' in w ? undefined : w;
  });

  let blocker: string | null = null;
  if (dups.size > 0) blocker = `Remove the duplicate file${dups.size === 1 ? '' : 's'} (flagged in the list) to merge.`;
  else if (files.some((e) => e.failed))
    blocker = 'Remove the files that could not be read (their cards say why) to merge the others.';
  else if (pending) blocker = 'Reading files…';
  else if (conflict) blocker = conflict.message;
  else if (loaded.length === 0) blocker = 'Add at least one LoRA file.';
  else if (weights.some((w) => w === undefined))
    blocker = 'Every weight must be a number or component strengths (the field says what is wrong).';
  else if (rank.error) blocker = `Fix the target rank: ${rank.error}.`;
  else if (method.errors.size > 0) blocker = `Fix the ${method.method} settings (the fields say what is wrong).`;
  else if (method.needsRank && rank.rank === undefined)
    blocker = `The ${method.method} method works on each module's full update and writes it back at a target rank: set a target rank.`;
  else if (!blocksOk) blocker = 'Fix the block weights (the field says what is wrong).';

  const names = loaded.map((e) => e.file.name.replace(/\.safetensors$/i, ''));
  const request: MergeRequest = {
    inputs: loaded.map((e, i) => ({
      id: e.id,
      weight: weights[i]?.weight ?? Number.NaN,
      ...(weights[i]?.components ? { components: weights[i]?.components } : {}),
      ...(e.blocks && e.blocks.value.trim() !== '' ? { blocks: e.blocks.value.trim() } : {}),
    })),
    ...(rank.rank !== undefined ? { rank: rank.rank } : {}),
    ...(method.method !== 'concat' ? { method: method.method, params: method.params } : {}),
    ...(el.blocks.value.trim() ? { blocks: el.blocks.value.trim() } : {}),
    format: el.format.value === 'peft' ? 'peft' : 'kohya',
    dtype: el.dtype.value as MergeRequest['dtype'],
    fileName: `${names.join('+').slice(0, 80)}.merged.safetensors`,
  };
  return { request: blocker === null ? request : null, blocker: blocker ?? null };
}

/** Send each file the worker has not read yet (a duplicate waits until its original is gone). */
function syncCards(): void {
  const dups = findDuplicates();
  for (const e of entries) {
    const original = dups.get(e.id);
    const orig = original !== undefined ? byId(original) : undefined;
    if (orig) {
      if (e.li.dataset.dupOf !== String(orig.id) && (!e.sent || e.info)) showDuplicate(e, orig);
      continue;
    }
    if (e.li.dataset.dupOf !== undefined && e.info) {
      // Its original was removed: this copy (already read) becomes a normal card.
      delete e.li.dataset.dupOf;
      showLoaded(e, e.info);
      continue;
    }
    if (!e.sent) {
      e.sent = true;
      showReading(e);
      post({ type: 'add', id: e.id, file: e.file });
    }
  }
}

let current: Readiness = { request: null, blocker: null };
const methods = methodControls(el.method, el.methodHelp, el.methodError, el.methodParams, () => refresh());

function refresh(): void {
  syncCards();
  current = evaluate();
  const key = current.request ? requestKey(current.request) : null;
  if (result && result.key !== key) invalidateResult();
  if (failure && failure.key !== key) showError(null);
  el.merge.setAttribute('aria-disabled', String(running !== null || current.request === null));
  refreshTools();
  if (running) return;
  if (current.blocker) el.status.textContent = current.blocker;
  else if (result) el.status.textContent = 'Done. The file below is for the current inputs and options.';
  else if (!failure) el.status.textContent = `${plural(current.request!.inputs.length, 'LoRA')} ready to merge.`;
}

// ---------------------------------------------------------------------------------------------------------------
// Results and errors

function invalidateResult(): void {
  if (!result) return;
  URL.revokeObjectURL(result.url);
  result = null;
  el.result.hidden = true;
  el.download.removeAttribute('href');
  el.stale.hidden = false;
  delete document.body.dataset.merged;
}

function showError(error: ErrorInfo | null, key?: string): void {
  failure = error && key !== undefined ? { key } : null;
  el.error.hidden = error === null;
  el.error.replaceChildren(...(error ? [h('span', { className: 'code' }, error.code), ` — ${error.message}`] : []));
}

function setProgress(label: string, done: number, total: number): void {
  const p = percent(done, total);
  el.progress.hidden = false;
  el.progress.max = 100;
  el.progress.value = p;
  el.progress.setAttribute('aria-valuetext', `${label} ${p} %`);
  el.percent.textContent = `${p} %`;
}

function startMerge(): void {
  refresh();
  if (running || !current.request) return;
  const request = current.request;
  job++;
  running = { job, key: requestKey(request), kind: 'merge' };
  showError(null);
  invalidateResult();
  el.stale.hidden = true;
  el.merge.setAttribute('aria-disabled', 'true');
  setProgress('Merging', 0, 1);
  el.status.textContent = 'Merging…';
  post({ type: 'merge', job, request });
}

function finishMerge(): void {
  running = null;
  el.progress.hidden = true;
  el.percent.textContent = '';
}

function summaryText(s: MergeSummary): string {
  const rank = (r: { min: number; max: number }) => (r.min === r.max ? String(r.min) : `${r.min}–${r.max}`);
  return (
    `${ARCH_NAMES[s.arch] ?? s.arch} LoRA, ${plural(s.modules, 'module')}` +
    (s.dropped > 0 ? ` (${s.dropped} dropped: zero weight or zero update)` : '') +
    `, rank ${rank(s.rankBefore)} → ${rank(s.rankAfter)}, ` +
    (s.exact
      ? 'exact weighted sum'
      : `norm kept: mean ${(100 * s.meanNormKept).toFixed(2)} %, min ${(100 * s.minNormKept).toFixed(2)} %`) +
    ` · ${s.format} ${s.dtype}, ${mib(s.bytes)} · ${s.seconds.toFixed(2)} s` +
    (s.flushedToZero > 0 ? ` · warning: ${s.flushedToZero} small value(s) became 0 in ${s.dtype}` : '')
  );
}

function showResult(jobKey: string, blob: Blob, s: MergeSummary, name: string): void {
  observed.merges.push(s);
  if (jobKey !== (current.request ? requestKey(current.request) : null)) {
    // The inputs changed while the merge ran: its file would not match what the page shows.
    el.stale.hidden = false;
    refresh();
    return;
  }
  const url = URL.createObjectURL(blob);
  result = { key: jobKey, url, blob, name };
  el.download.href = url;
  el.download.download = name;
  el.summary.textContent = summaryText(s);
  el.stale.hidden = true;
  el.result.hidden = false;
  el.save.hidden = savePicker() === undefined;
  document.body.dataset.merged = String(job);
  refresh();
}

interface SaveHandle {
  createWritable(): Promise<WritableStream<Uint8Array>>;
}
type SavePicker = (options: {
  suggestedName: string;
  types: { description: string; accept: Record<string, string[]> }[];
}) => Promise<SaveHandle>;

/** The File System Access API's save dialog, where the browser has it. */
const savePicker = (): SavePicker | undefined => {
  const picker = (window as unknown as { showSaveFilePicker?: unknown }).showSaveFilePicker;
  return typeof picker === 'function' ? (picker.bind(window) as SavePicker) : undefined;
};

/** Save a Blob with the File System Access API: it streams to disk, never copied into one buffer. */
async function saveBlob(blob: Blob, name: string, key: string, description: string): Promise<void> {
  const picker = savePicker();
  if (!picker) return;
  try {
    const handle = await picker({
      suggestedName: name,
      types: [{ description, accept: { 'application/octet-stream': ['.safetensors'] } }],
    });
    await blob.stream().pipeTo(await handle.createWritable());
    el.status.textContent = `Saved ${name} (${mib(blob.size)}).`;
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') return; // the user closed the dialog
    showError({ code: 'IO_WRITE_FAILED', name: 'IoError', message: `saving failed: ${String(e)}` }, key);
  }
}

async function saveToDisk(): Promise<void> {
  const r = result;
  if (r) await saveBlob(r.blob, r.name, r.key, 'safetensors LoRA');
}

worker.onmessage = (event: MessageEvent<FromWorker>) => {
  const m = event.data;
  if (onToolMessage(m)) return;
  switch (m.type) {
    case 'ready':
      el.version.textContent = m.version;
      document.body.dataset.ready = 'true';
      break;
    case 'reading': {
      const e = byId(m.id);
      if (e?.readBar && e.readText && !e.info) {
        const p = percent(m.done, m.total);
        e.readBar.value = p;
        e.readBar.setAttribute('aria-valuetext', `${p} %`);
        e.readText.textContent = `reading… ${p} %`;
      }
      break;
    }
    case 'added': {
      const e = byId(m.info.id);
      if (!e) break;
      observed.loras.push(m.info);
      showLoaded(e, m.info);
      refresh();
      break;
    }
    case 'add-failed': {
      const e = byId(m.id);
      if (!e) break;
      showFailed(e, m.error);
      refresh();
      break;
    }
    case 'progress':
      if (m.job !== running?.job) break;
      if (m.phase === 'merge') {
        setProgress('Merging', m.done, m.total);
        el.status.textContent = `Merging: module ${m.done} of ${m.total}`;
      } else {
        setProgress('Writing', m.done, m.total);
        el.status.textContent = `Writing the file: tensor ${m.done} of ${m.total}`;
      }
      break;
    case 'merged': {
      if (m.job !== running?.job) break;
      const { key } = running;
      finishMerge();
      showResult(key, m.blob, m.summary, `${current.request?.fileName ?? 'merged.safetensors'}`);
      break;
    }
    case 'merge-failed': {
      if (m.job !== running?.job) break;
      const { key } = running;
      finishMerge();
      showError(m.error, key);
      el.status.textContent = 'The merge failed; the error below says why.';
      refresh();
      break;
    }
  }
};

worker.onerror = (event) => {
  finishMerge();
  finishTool();
  showError({ code: 'INTERNAL', name: 'Error', message: `the worker stopped: ${event.message}` }, '');
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
for (const control of [el.rank, el.blocks, el.format, el.dtype]) {
  control.addEventListener('input', refresh);
  control.addEventListener('change', refresh);
}
el.merge.addEventListener('click', startMerge);
el.save.addEventListener('click', () => void saveToDisk());

// ---------------------------------------------------------------------------------------------------------------
// Resize, fuse, analyze (section 4): each result belongs to the request that made it, like the merge's.

interface ToolResult {
  key: string;
  url?: string;
  blob?: Blob;
  name?: string;
}
const toolResults: Partial<Record<ToolKind, ToolResult>> = {};
const toolPanels: Record<ToolKind, { button: HTMLButtonElement; result: HTMLElement }> = {
  resize: { button: el.resize, result: el.resizeResult },
  fuse: { button: el.fuse, result: el.fuseResult },
  analyze: { button: el.analyze, result: el.analysis },
};

function currentPlans(): {
  resize: ReturnType<typeof planResize>;
  fuse: ReturnType<typeof planFuse>;
  analyze: ReturnType<typeof planAnalyze>;
} {
  const dups = findDuplicates();
  const loaded = active(dups).filter((e) => e.info !== undefined);
  // The resize list follows the loaded files, keeping the selection while its file is there.
  const wanted = loaded.map((e) => String(e.id));
  const have = Array.from(el.resizeInput.options, (o) => o.value);
  if (wanted.join() !== have.join()) {
    const keep = el.resizeInput.value;
    el.resizeInput.replaceChildren(...loaded.map((e) => h('option', { value: String(e.id) }, e.file.name)));
    if (wanted.includes(keep)) el.resizeInput.value = keep;
  }
  const chosen = loaded.find((e) => String(e.id) === el.resizeInput.value);
  const base = el.base.files?.[0];
  return {
    resize: planResize({
      id: chosen?.id,
      fileName: chosen?.file.name,
      rule: el.resizeRule.value,
      value: el.resizeValue.value,
      maxRank: el.resizeMax.value,
      format: el.format.value === 'peft' ? 'peft' : 'kohya',
      dtype: el.dtype.value as MergeRequest['dtype'],
    }),
    fuse: planFuse(current.request, current.blocker, base, el.fuseDtype.value as MergeRequest['dtype']),
    analyze: planAnalyze(current.request, current.blocker),
  };
}

const keyOf = (plan: ToolPlan<unknown>) => ('key' in plan ? plan.key : null);

function refreshTools(): void {
  const plans = currentPlans();
  const resizeField =
    el.resizeValue.value.trim() !== '' && 'blocker' in plans.resize && /resize|rank/i.test(plans.resize.blocker);
  el.resizeError.hidden = !resizeField;
  el.resizeError.textContent = resizeField && 'blocker' in plans.resize ? plans.resize.blocker : '';
  for (const kind of ['resize', 'fuse', 'analyze'] as const) {
    const plan = plans[kind];
    const r = toolResults[kind];
    if (r && r.key !== keyOf(plan)) withdrawTool(kind);
    toolPanels[kind].button.setAttribute('aria-disabled', String(running !== null || !('key' in plan)));
  }
  if (running && running.kind !== 'merge') return;
  const blockers = (['resize', 'fuse', 'analyze'] as const)
    .map((k) => plans[k])
    .filter((p): p is { blocker: string } => 'blocker' in p);
  if (running) return;
  const ready = (['resize', 'fuse', 'analyze'] as const).filter((k) => 'key' in plans[k]);
  if (ready.length === 0) el.toolsStatus.textContent = blockers[0]?.blocker ?? '';
  else if (!/^(Resized|Fused|Analyzed)\.$/.test(el.toolsStatus.textContent ?? ''))
    el.toolsStatus.textContent = `Ready: ${ready.join(', ')}.${blockers.length > 0 ? ` (${blockers.map((b) => b.blocker).join(' ')})` : ''}`;
}

function withdrawTool(kind: ToolKind): void {
  const r = toolResults[kind];
  if (!r) return;
  if (r.url) URL.revokeObjectURL(r.url);
  delete toolResults[kind];
  toolPanels[kind].result.hidden = true;
  if (kind === 'resize') el.resizeDownload.removeAttribute('href');
  if (kind === 'fuse') el.fuseDownload.removeAttribute('href');
  if (kind === 'analyze') el.analysisFrame.srcdoc = '';
  el.toolsStale.hidden = false;
}

function setToolProgress(label: string, done: number, total: number): void {
  const p = percent(done, total);
  el.toolsProgress.hidden = false;
  el.toolsProgress.value = p;
  el.toolsProgress.setAttribute('aria-valuetext', `${label} ${p} %`);
  el.toolsPercent.textContent = `${p} %`;
  el.toolsStatus.textContent = `${label}: ${p} %`;
}

function startTool(kind: ToolKind): void {
  refresh();
  if (running) return;
  const plans = currentPlans();
  const plan = plans[kind];
  if (!('key' in plan)) {
    el.toolsStatus.textContent = plan.blocker;
    return;
  }
  job++;
  running = { job, key: plan.key, kind };
  showError(null);
  withdrawTool(kind);
  el.toolsStale.hidden = true;
  refresh();
  const label = { resize: 'Resizing', fuse: 'Fusing', analyze: 'Analyzing' }[kind];
  setToolProgress(label, 0, 1);
  if (kind === 'resize' && 'key' in plans.resize) post({ type: 'resize', job, request: plans.resize.request });
  if (kind === 'analyze' && 'key' in plans.analyze) post({ type: 'analyze', job, request: plans.analyze.request });
  if (kind === 'fuse' && 'key' in plans.fuse) void startFuse(job, plans.fuse.request);
}

/** The page's URL may ask for one kernel thread (?threads=1), e.g. to compare with the threaded kernel. */
const kernelThreads = ((): number | undefined => {
  const n = Number(new URLSearchParams(location.search).get('threads'));
  return Number.isInteger(n) && n >= 1 ? n : undefined;
})();

/**
 * Fuse: where the browser can save files (showSaveFilePicker), ask for the destination first and let the worker
 * write the checkpoint straight into it as it goes (a checkpoint is GBs: it is never held whole); otherwise the
 * worker collects it for a download link.
 */
async function startFuse(id: number, request: FuseRequest): Promise<void> {
  const base = el.base.files?.[0];
  if (!base) return;
  const picker = savePicker();
  let target: FileSystemFileHandle | undefined;
  if (picker) {
    try {
      target = (await picker({
        suggestedName: request.fileName,
        types: [{ description: 'safetensors checkpoint', accept: { 'application/octet-stream': ['.safetensors'] } }],
      })) as FileSystemFileHandle;
    } catch (e) {
      if (running?.job !== id) return;
      const { key } = running;
      finishTool();
      refresh();
      if (e instanceof DOMException && e.name === 'AbortError')
        el.toolsStatus.textContent = 'Fuse cancelled: no file chosen.';
      else
        showError({ code: 'IO_WRITE_FAILED', name: 'IoError', message: `choosing the file failed: ${String(e)}` }, key);
      return;
    }
  }
  if (running?.job !== id) return;
  try {
    post({
      type: 'fuse',
      job: id,
      request,
      base,
      ...(target ? { target } : {}),
      ...(kernelThreads !== undefined ? { threads: kernelThreads } : {}),
    });
  } catch (e) {
    // A handle the worker cannot receive (not a real file handle).
    const { key } = running;
    finishTool();
    refresh();
    showError(
      { code: 'IO_WRITE_FAILED', name: 'IoError', message: `the chosen file cannot be written: ${String(e)}` },
      key,
    );
  }
}

function finishTool(): void {
  running = null;
  el.toolsProgress.hidden = true;
  el.toolsPercent.textContent = '';
}

/** Offer a tool's result if its request is still the current one; otherwise say it went stale. */
function offerTool(kind: ToolKind, key: string, show: () => ToolResult): boolean {
  if (keyOf(currentPlans()[kind]) !== key) {
    el.toolsStale.hidden = false;
    refresh();
    return false;
  }
  toolResults[kind] = show();
  toolPanels[kind].result.hidden = false;
  el.toolsStale.hidden = true;
  document.body.dataset[kind] = String(job);
  refresh();
  return true;
}

const pct = (x: number) => `${(100 * x).toFixed(2)} %`;
const KIND_OF = { resized: 'resize', fused: 'fuse', analyzed: 'analyze' } as const;

function onToolMessage(m: FromWorker): boolean {
  if (m.type === 'progress' && m.job === running?.job && running.kind !== 'merge') {
    const label =
      m.phase === 'write' ? 'Writing' : { resize: 'Resizing', fuse: 'Fusing', analyze: 'Analyzing' }[running.kind];
    setToolProgress(label, m.done, m.total);
    return true;
  }
  if ((m.type === 'resized' || m.type === 'fused' || m.type === 'analyzed') && m.job === running?.job) {
    const { key } = running;
    finishTool();
    if (m.type === 'resized') {
      observed.resizes.push(m.summary);
      offerFile('resize', key, m.blob, resizeText(m.summary));
    } else if (m.type === 'fused') {
      observed.fuses.push(m.summary);
      offerFile('fuse', key, m.blob, fuseText(m.summary));
    } else {
      observed.analyses.push(m.summary);
      offerTool(KIND_OF[m.type], key, () => {
        // The picture is a self-contained document (inline SVG, no scripts, no network), shown sandboxed.
        el.analysisFrame.srcdoc = m.summary.html;
        el.analysisText.textContent = m.summary.text;
        return { key };
      });
      el.toolsStatus.textContent = 'Analyzed.';
    }
    return true;
  }
  if (m.type === 'merge-failed' && m.job === running?.job && running.kind !== 'merge') {
    const { key } = running;
    finishTool();
    // refresh first: it clears errors whose request is not the merge's current one, which a tool's never is.
    refresh();
    showError(m.error, key);
    el.toolsStatus.textContent = 'It failed; the error below says why.';
    return true;
  }
  return false;
}

/** Where each file-writing tool shows its result. */
const FILE_TOOLS = {
  resize: {
    download: el.resizeDownload,
    summary: el.resizeSummary,
    fallbackName: 'resized.safetensors',
    done: 'Resized.',
  },
  fuse: { download: el.fuseDownload, summary: el.fuseSummary, fallbackName: 'fused.safetensors', done: 'Fused.' },
} as const;

/**
 * Offer a resize's or fuse's file (if its request is still current): a download link for its Blob, or — when the
 * worker wrote it straight into a chosen file (blob null) — just the summary, which names that file.
 */
function offerFile(kind: 'resize' | 'fuse', key: string, blob: Blob | null, text: string): void {
  const tool = FILE_TOOLS[kind];
  offerTool(kind, key, () => {
    const plan = currentPlans()[kind];
    const name = 'key' in plan ? plan.request.fileName : tool.fallbackName;
    tool.summary.textContent = text;
    tool.download.hidden = blob === null;
    if (!blob) return { key, name };
    const url = URL.createObjectURL(blob);
    tool.download.href = url;
    tool.download.download = name;
    return { key, url, blob, name };
  });
  el.toolsStatus.textContent = tool.done;
}

function resizeText(s: ResizeSummary): string {
  return (
    `${plural(s.modules, 'module')}, rank ${s.rankBefore.min}–${s.rankBefore.max} → ` +
    `${s.rankAfter.min}–${s.rankAfter.max} (mean ${s.rankAfter.mean.toFixed(1)}); Frobenius norm kept: mean ` +
    `${pct(s.meanFroRetained)}, std ${pct(s.stdFroRetained)}, min ${pct(s.minFroRetained)}, max ` +
    `${pct(s.maxFroRetained)}; lowest: ${s.worst} · ${s.format} ${s.dtype}, ${mib(s.bytes)} · ${s.seconds.toFixed(2)} s`
  );
}

function fuseText(s: FuseSummary): string {
  return (
    `${ARCH_NAMES[s.arch] ?? s.arch}: ${plural(s.modulesFused, 'module')} fused into ${s.tensors.fused} ` +
    `tensors (${s.tensors.copied} copied, ${s.tensors.converted} converted)` +
    (s.overflow > 0 ? `, ${s.overflow} values overflowed` : '') +
    ` · ${s.kernel} · ${mib(s.bytes)} · ${s.seconds.toFixed(2)} s` +
    (s.savedTo !== undefined ? ` · written to ${s.savedTo}` : '')
  );
}

el.resize.addEventListener('click', () => startTool('resize'));
el.fuse.addEventListener('click', () => startTool('fuse'));
el.analyze.addEventListener('click', () => startTool('analyze'));
for (const control of [el.resizeInput, el.resizeRule, el.resizeValue, el.resizeMax, el.base, el.fuseDtype]) {
  control.addEventListener('input', refresh);
  control.addEventListener('change', refresh);
}
refresh();
