#!/usr/bin/env node
import { main } from './main.js';

/**
 * A standard stream whose reader may go away (`lora-mix layout sdxl | head -3`). Once a write fails with EPIPE
 * the reader is gone: later output is dropped, silently, and the command still runs to its end, so work in
 * progress (a temp file about to be renamed into place) finishes or cleans up as it would have. Other write
 * errors are reported once on stderr (when it still works) and make the exit code 1.
 */
function guardedStream(stream: NodeJS.WriteStream, label: string, other: () => NodeJS.WriteStream | null) {
  let open = true;
  let failed = false;
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (!open) return;
    open = false;
    if (e.code === 'EPIPE') return;
    failed = true;
    if (!process.exitCode) process.exitCode = 1;
    const sink = other();
    if (sink) {
      try {
        sink.write(`lora-mix: cannot write to ${label}: ${e.message}\n`);
      } catch {
        /* nothing left to tell */
      }
    }
  });
  return {
    write(s: string): void {
      if (!open) return;
      try {
        stream.write(s);
      } catch {
        open = false; // a synchronous failure: treat like the asynchronous one, without a message
      }
    },
    get open() {
      return open;
    },
    get failed() {
      return failed;
    },
  };
}

const stdout = guardedStream(process.stdout, 'standard output', () => (stderr.open ? process.stderr : null));
const stderr = guardedStream(process.stderr, 'standard error', () => null);

const code = await main(process.argv.slice(2), {
  out: (s) => {
    stdout.write(s);
  },
  err: (s) => {
    stderr.write(s);
  },
  isTTY: process.stderr.isTTY === true,
  cwd: process.cwd(),
});
process.exitCode = code !== 0 ? code : stdout.failed || stderr.failed ? 1 : 0;
