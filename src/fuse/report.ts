/** Human-readable summaries of fusion and verification reports (the CLI prints these). */
import type { FuseReport } from './types.js';

const MB = 1024 * 1024;

export function fmtBytes(n: number): string {
  return n >= 1024 * MB
    ? `${(n / 1024 / MB).toFixed(2)} GiB`
    : n >= MB
      ? `${(n / MB).toFixed(1)} MiB`
      : `${(n / 1024).toFixed(1)} KiB`;
}

export function formatFuseReport(r: FuseReport): string {
  const lines: string[] = [];
  const arch = `${r.arch}${r.size === 'tiny' ? ' (tiny)' : ''}`;
  lines.push(`fused ${r.modulesFused} module(s) into ${r.base} (${arch}, ${r.naming}) → ${r.out}`);
  for (const i of r.inputs) lines.push(`  ${i.weight.padStart(6)} × ${i.source} (${i.format}, ${i.modules} modules)`);
  if (r.method) {
    const params = Object.entries(r.method.params).map(([k, v]) => `${k} ${v}`);
    lines.push(`method: ${r.method.name}${params.length > 0 ? ` (${params.join(', ')})` : ''}`);
  }
  const groups = Object.entries(r.byGroup).sort(([a], [b]) => a.localeCompare(b));
  if (groups.length > 0) lines.push(`modules by group: ${groups.map(([g, n]) => `${g} ${n}`).join(', ')}`);
  if (r.unmatched.length > 0) {
    lines.push(`skipped ${r.unmatched.length} unmatched module(s):`);
    for (const u of r.unmatched.slice(0, 10)) lines.push(`  ${u.key}: ${u.reason}`);
    if (r.unmatched.length > 10) lines.push(`  … (+${r.unmatched.length - 10} more)`);
  }
  for (const n of r.notes) lines.push(`note: ${n}`);
  if (r.embeddingsSkipped.length > 0) {
    lines.push(
      `skipped ${r.embeddingsSkipped.length} embedding(s) a checkpoint cannot hold (load them as textual inversions): ${r.embeddingsSkipped.slice(0, 5).join(', ')}${r.embeddingsSkipped.length > 5 ? ' …' : ''}`,
    );
  }
  lines.push(
    `tensors: ${r.tensors.total} (${r.tensors.fused} fused, ${r.tensors.copied} copied, ${r.tensors.converted} converted); output dtype ${r.outputDtype}`,
  );
  if (r.overflow.total > 0) {
    lines.push(
      `overflow: ${r.overflow.total} value(s) clamped to the dtype's largest finite value in ${r.overflow.tensors.length} tensor(s):`,
    );
    for (const t of r.overflow.tensors.slice(0, 10)) lines.push(`  ${t.name}: ${t.count}`);
  } else {
    lines.push('overflow: none');
  }
  if (r.nonFiniteInput > 0)
    lines.push(`note: ${r.nonFiniteInput} value(s) of the base already were NaN or ±Inf (passed through)`);
  lines.push(
    `kernel: ${r.kernel}${r.fellBack ? ` (device gpu fell back: ${r.fallbackReason ?? 'no GPU backend'})` : ''}`,
  );
  const rss = r.peakRssBytes !== undefined ? `, peak memory ${fmtBytes(r.peakRssBytes)}` : '';
  lines.push(
    `time: ${r.seconds.toFixed(2)} s (kernel ${r.kernelSeconds.toFixed(2)} s, ${r.gflops.toFixed(1)} GFLOP/s); ` +
      `read ${fmtBytes(r.bytesRead)}, wrote ${fmtBytes(r.bytesWritten)}${rss}`,
  );
  return `${lines.join('\n')}\n`;
}
