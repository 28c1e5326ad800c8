/**
 * The layer rule of lora-mix (docs/ARCHITECTURE.md), enforced by `npm run lint:deps`:
 * each folder of src/ imports only from the folders listed before it; no import cycles;
 * `node:` modules only in src/node/, src/cli/ and the Node entry src/node.ts.
 */
const LAYERS = ['core', 'kernels', 'safetensors', 'layout', 'lora', 'formats', 'fuse', 'sampler', 'verify', 'fixtures', 'node', 'cli'];

const upward = LAYERS.slice(0, -1).map((layer, i) => ({
  name: `layer-${layer}`,
  comment: `src/${layer}/ may import only from ${LAYERS.slice(0, i).join(', ') || 'itself'} (docs/ARCHITECTURE.md)`,
  severity: 'error',
  from: { path: `^src/${layer}/` },
  to: { path: `^src/(${LAYERS.slice(i + 1).join('|')})/|^src/(index|node)\\.ts$` },
}));

module.exports = {
  forbidden: [
    ...upward,
    {
      name: 'isomorphic-entry',
      comment: 'src/index.ts is the browser/bundler entry: nothing from node/ or cli/',
      severity: 'error',
      from: { path: '^src/index\\.ts$' },
      to: { path: '^src/(node|cli)/|^src/node\\.ts$' },
    },
    {
      name: 'no-circular',
      comment: 'import cycles make the flow unreadable and module initialisation order fragile',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    {
      name: 'node-builtins-only-in-node-layer',
      comment: 'node: modules only in src/node/, src/cli/ and src/node.ts (the core runs in browsers)',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/(node|cli)/|^src/node\\.ts$' },
      to: { dependencyTypes: ['core'] },
    },
    {
      name: 'not-to-unresolvable',
      severity: 'error',
      from: { path: '^src/' },
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'] },
  },
};
