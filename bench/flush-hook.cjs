// Preload for `node -r bench/flush-hook.cjs dist/cli/lora-mix.js fuse …` (any build): times the output's writes of
// ≥ 64 KiB, the fsyncs and fdatasyncs of file handles and the rename, and prints one line `S8HOOK {json}` to stderr
// at exit (one per thread; the main thread's has writes > 0). `flush` = rename − end of the last write: what the
// final flush (finish, truncate, fsync) costs after the last byte was handed to the file. Used for session 8's
// flush figures in bench/RESULTS.md.
const fs = require('node:fs');
const t0 = performance.now();
const st = {
  lastWriteEnd: 0,
  writes: 0,
  syncMs: 0,
  syncs: 0,
  datasyncs: 0,
  datasyncMs: 0,
  renameAt: 0,
  truncAt: 0,
  syncStart: 0,
  firstWrite: 0,
};
let patched = false;
const origOpen = fs.promises.open;
fs.promises.open = async function (...a) {
  const fh = await origOpen.apply(this, a);
  if (!patched) {
    patched = true;
    const P = Object.getPrototypeOf(fh);
    const w = P.write;
    P.write = async function (...x) {
      const r = await w.apply(this, x);
      const t = performance.now();
      if (!st.firstWrite) st.firstWrite = t;
      if (x[0] && x[0].byteLength >= 65536) {
        st.lastWriteEnd = t;
        st.writes++;
      }
      return r;
    };
    const s = P.sync;
    P.sync = async function (...x) {
      const a0 = performance.now();
      if (!st.syncStart) st.syncStart = a0;
      const r = await s.apply(this, x);
      st.syncMs += performance.now() - a0;
      st.syncs++;
      return r;
    };
    const d = P.datasync;
    P.datasync = async function (...x) {
      const a0 = performance.now();
      const r = await d.apply(this, x);
      st.datasyncMs += performance.now() - a0;
      st.datasyncs++;
      return r;
    };
    const tr = P.truncate;
    P.truncate = async function (...x) {
      const r = await tr.apply(this, x);
      st.truncAt = performance.now();
      return r;
    };
  }
  return fh;
};
const origRename = fs.promises.rename;
fs.promises.rename = async function (...a) {
  const r = await origRename.apply(this, a);
  st.renameAt = performance.now();
  return r;
};
process.on('exit', () => {
  const r = (t) => (t ? +((t - t0) / 1000).toFixed(3) : null);
  process.stderr.write(
    'S8HOOK ' +
      JSON.stringify({
        lastWrite: r(st.lastWriteEnd),
        rename: r(st.renameAt),
        flush: st.renameAt && st.lastWriteEnd ? +((st.renameAt - st.lastWriteEnd) / 1000).toFixed(3) : null,
        syncS: +(st.syncMs / 1000).toFixed(3),
        syncs: st.syncs,
        datasyncs: st.datasyncs,
        datasyncS: +(st.datasyncMs / 1000).toFixed(3),
        writes: st.writes,
        exit: r(performance.now()),
      }) +
      '\n',
  );
});
