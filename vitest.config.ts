import { defineConfig } from 'vitest/config';

/**
 * Two projects: `unit` (unit and property tests: no browser, no subprocess-heavy end-to-end runs; `npm run
 * test:unit`, the development loop) and `e2e` (headless Chromium, the CLI's demo, the runnable examples and docs).
 * `npm test` runs both.
 */
const E2E = [
  'test/browser/**/*.test.ts',
  'test/examples.test.ts',
  'test/demo-cli.test.ts',
  'test/merge-docs.test.ts',
  'test/cli-pipe.test.ts',
  'test/api.test.ts',
  'test/*-cli.test.ts',
  'test/fixtures.test.ts',
];

export default defineConfig({
  test: {
    setupFiles: ['test/setup-node.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/**/*.test.ts'], exclude: E2E } },
      { extends: true, test: { name: 'e2e', include: E2E } },
    ],
  },
});
