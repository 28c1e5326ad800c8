#!/usr/bin/env node
import { main } from './main.js';

const code = await main(process.argv.slice(2), {
  out: (s) => { process.stdout.write(s); },
  err: (s) => { process.stderr.write(s); },
  isTTY: process.stderr.isTTY === true,
  cwd: process.cwd(),
});
process.exitCode = code;
