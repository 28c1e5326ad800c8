import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';

/**
 * Three projects, chosen by file name so that new test files land in the right one:
 * - `unit`: unit and property tests of one layer at a time, in memory (`npm run test:unit`, the development loop);
 * - `integration`: several layers through real files, worker threads or external tools (fusion end to end, the
 *   verification network, O_DIRECT and file sinks, the threaded kernel and merge, the WASM build, the lint rules);
 * - `e2e`: the CLI as subprocesses, the docs' and README's examples, the demo, headless Chromium.
 * `npm test` (and CI) runs all three.
 */
const E2E = [
  'test/browser/**/*.test.ts',
  'test/*-cli.test.ts',
  'test/cli-*.test.ts',
  'test/examples.test.ts',
  'test/demo-cli.test.ts',
  'test/*-docs.test.ts',
  'test/api.test.ts',
  'test/fixtures.test.ts',
];
const INTEGRATION = [
  'test/fuse*.test.ts',
  'test/*-fuse.test.ts',
  'test/layout-unet-prefix.test.ts',
  'test/*-threads.test.ts',
  'test/io*.test.ts',
  'test/sampler-verify-net.test.ts',
  'test/wasm-build.test.ts',
  'test/lint-rules.test.ts',
];

export default defineConfig({
  test: {
    setupFiles: ['test/setup-node.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // vitest's default is one worker fewer than the cores: one worker on a 2-core machine, files one after another.
    // Two workers there: the whole suite 388.6 s against 540.3 s with one (same machine, quiet, 2026-12-07).
    maxWorkers: Math.max(2, availableParallelism() - 1),
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/**/*.test.ts'], exclude: [...E2E, ...INTEGRATION] } },
      { extends: true, test: { name: 'integration', include: INTEGRATION, exclude: E2E } },
      { extends: true, test: { name: 'e2e', include: E2E } },
    ],
  },
});
