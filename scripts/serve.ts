/**
 * A tiny static file server for the browser build and the example page. It listens on 127.0.0.1 only
 * (WebGPU and module workers need a secure context; http://127.0.0.1 is one, file:// is not), serves files
 * below one root folder and nothing else.
 *
 *   npx tsx scripts/serve.ts [--port N] [--root DIR] [--no-build]
 *
 * Without --root it builds the page (scripts/build-browser.ts) and serves dist/web/. The port defaults to a free
 * one (the URL is printed).
 */
import { createServer, type Server } from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import { extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const MIME: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.safetensors': 'application/octet-stream',
};

export interface StaticServer {
  /** Base URL, e.g. http://127.0.0.1:43127/ (always ends with '/'). */
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

export interface ServeOptions {
  /** Folder to serve. */
  root: string;
  /** 0 (default) picks a free port. */
  port?: number;
  /** Extra folders mounted under a URL prefix, e.g. { '/fixtures/': 'fixtures' } (read-only, same rules). */
  mounts?: Record<string, string>;
  /**
   * Send the cross-origin isolation headers (COOP same-origin, COEP require-corp; default true): the page then has
   * SharedArrayBuffer and fuses with the threaded kernel. false serves a page that is not isolated (tests).
   */
  isolate?: boolean;
}

/** Resolve a URL path inside a root folder; null when it would leave the root. */
function resolveInside(root: string, urlPath: string): string | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  if (decoded.includes('\0')) return null;
  const full = resolve(root, `.${decoded.startsWith('/') ? decoded : `/${decoded}`}`);
  if (full !== root && !full.startsWith(root + sep)) return null;
  return full;
}

export async function startStaticServer(options: ServeOptions): Promise<StaticServer> {
  const root = resolve(options.root);
  const mounts = Object.entries(options.mounts ?? {}).map(([prefix, dir]) => [prefix, resolve(dir)] as const);
  const isolate = options.isolate !== false;

  const server: Server = createServer(async (req, res) => {
    const send = (status: number, body: string) => {
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed');
    const path = new URL(req.url ?? '/', 'http://127.0.0.1').pathname;
    let base = root;
    let rest = path;
    for (const [prefix, dir] of mounts) {
      if (path.startsWith(prefix)) {
        base = dir;
        rest = `/${path.slice(prefix.length)}`;
        break;
      }
    }
    let file = resolveInside(base, rest);
    if (file === null) return send(403, 'forbidden');
    try {
      let info = await stat(file);
      if (info.isDirectory()) {
        file = join(file, 'index.html');
        info = await stat(file);
      }
      if (!info.isFile()) return send(404, 'not found');
      const body = await readFile(file);
      res.writeHead(200, {
        'content-type': MIME[extname(file).toLowerCase()] ?? 'application/octet-stream',
        'content-length': String(body.length),
        'cache-control': 'no-store',
        // Cross-origin isolation: the page gets SharedArrayBuffer, which the threaded fuse kernel needs.
        ...(isolate
          ? {
              'cross-origin-opener-policy': 'same-origin',
              'cross-origin-embedder-policy': 'require-corp',
              'cross-origin-resource-policy': 'same-origin',
            }
          : {}),
      });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch {
      send(404, 'not found');
    }
  });

  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(options.port ?? 0, '127.0.0.1', () => ok());
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('static server: no TCP address');
  return {
    url: `http://127.0.0.1:${address.port}/`,
    port: address.port,
    close: () =>
      new Promise<void>((ok) => {
        server.closeAllConnections();
        server.close(() => ok());
      }),
  };
}

async function main(argv: string[]): Promise<void> {
  let port = 0;
  let root: string | undefined;
  let build = true;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port') port = Number(argv[++i]);
    else if (a === '--root') root = argv[++i];
    else if (a === '--no-build') build = false;
    else if (a === '--help' || a === '-h') {
      process.stdout.write('usage: npm run serve -- [--port N (0 = any free port)] [--root DIR] [--no-build]\n');
      return;
    } else throw new Error(`serve: unknown argument ${a}`);
  }
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new Error(`serve: --port must be 0..65535, got ${port}`);
  if (root === undefined) {
    const { buildBrowser, REPO_ROOT } = await import('./build-browser.js');
    root = build ? (await buildBrowser()).webDir : join(REPO_ROOT, 'dist', 'web');
  }
  const server = await startStaticServer({ root, port });
  process.stdout.write(`lora-mix page: ${server.url}\n(serving ${root} on 127.0.0.1 only; Ctrl+C to stop)\n`);
  const stop = () => {
    void server.close().then(() => process.exit(0));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
