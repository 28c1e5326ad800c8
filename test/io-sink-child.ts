/**
 * Child process for test/io-special-files.test.ts: opens a file sink on argv[2], writes 1 MiB, prints the temp path
 * and waits to be killed by the parent.
 */
import { fileSink } from '../src/node/files.js';

const target = process.argv[2];
if (!target) throw new Error('usage: io-sink-child.ts TARGET');
const sink = await fileSink(target);
await sink.write(new Uint8Array(1 << 20).fill(7));
process.stdout.write(`${sink.tempPath}\n`);
setInterval(() => undefined, 1000);
