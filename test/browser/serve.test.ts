/** scripts/serve.ts: the static server the page and the browser tests use. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStaticServer, type StaticServer } from '../../scripts/serve.js';
import { tempDir } from './harness.js';

/** GET a raw path (no URL normalisation by the client, so '..' reaches the server as written). */
function get(port: number, path: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((ok, fail) => {
    const req = request({ host: '127.0.0.1', port, path, method: 'GET' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => ok({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body }));
    });
    req.on('error', fail);
    req.end();
  });
}

describe('static server', () => {
  const tmp = tempDir('serve');
  let server: StaticServer;
  beforeAll(async () => {
    mkdirSync(join(tmp.dir, 'site', 'sub'), { recursive: true });
    writeFileSync(join(tmp.dir, 'site', 'index.html'), '<p>home</p>');
    writeFileSync(join(tmp.dir, 'site', 'app.js'), 'export {};');
    writeFileSync(join(tmp.dir, 'site', 'sub', 'index.html'), '<p>sub</p>');
    writeFileSync(join(tmp.dir, 'secret.txt'), 'outside the root');
    mkdirSync(join(tmp.dir, 'extra'));
    writeFileSync(join(tmp.dir, 'extra', 'x.safetensors'), 'bytes');
    server = await startStaticServer({ root: join(tmp.dir, 'site'), mounts: { '/fixtures/': join(tmp.dir, 'extra') } });
  });
  afterAll(async () => {
    await server?.close();
    tmp.remove();
  });

  it('listens on 127.0.0.1 on a free port and serves files with their types', async () => {
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    expect(server.port).toBeGreaterThan(0);
    const home = await get(server.port, '/');
    expect(home).toMatchObject({ status: 200, body: '<p>home</p>' });
    expect(home.type).toMatch(/^text\/html/);
    expect((await get(server.port, '/app.js')).type).toMatch(/^text\/javascript/);
    expect((await get(server.port, '/sub/')).body).toBe('<p>sub</p>');
    expect(await get(server.port, '/fixtures/x.safetensors')).toMatchObject({ status: 200, body: 'bytes' });
    expect((await get(server.port, '/missing.js')).status).toBe(404);
  });

  it('never serves a file outside its root', async () => {
    for (const path of [
      '/../secret.txt',
      '/%2e%2e/secret.txt',
      '/sub/..%2f..%2fsecret.txt',
      '/fixtures/../../secret.txt',
      '/%00',
    ]) {
      const res = await get(server.port, path);
      expect(res.status, path).toBeGreaterThanOrEqual(400);
      expect(res.body, path).not.toContain('outside the root');
    }
  });
});
