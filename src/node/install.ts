/**
 * The Node host: file paths, atomic file sinks, gpu.js, diffusers folders, the threaded CPU kernel and extract's threads, installed
 * into the isomorphic layers (src/core/host.ts, src/fuse/host.ts). src/node.ts calls this when it is loaded, so
 * `import … from 'lora-mix'` in Node (the "node" export condition) accepts paths everywhere.
 */
import { installHost } from '../core/host.js';
import { installFuseHost } from '../fuse/host.js';
import { fileSink, fileSource } from './files.js';
import { createExtractPool } from './extract-threads.js';
import { createNodeCpuKernel, joinPath, openBaseNode, writeFolder } from './fuse.js';

let done = false;

export function installNodeHost(): void {
  if (done) return;
  done = true;
  installHost({
    openSource: fileSource,
    openSink: (path, options) =>
      fileSink(path, { refuse: options.refuse ?? [], direct: options.direct === true, fsync: options.fsync !== false }),
    loadGpuJs: () => import('gpu.js'),
  });
  installFuseHost({
    openBase: openBaseNode,
    writeFolder,
    joinPath,
    createCpuKernel: createNodeCpuKernel,
    createExtractPool,
  });
}
