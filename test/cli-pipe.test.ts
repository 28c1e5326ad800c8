/**
 * The CLI's output piped into a reader that stops early (`lora-mix layout sdxl | head -3`): the reader gets its
 * lines, and lora-mix ends quietly — exit 0, nothing on stderr, no EPIPE stack trace.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = ['--import', 'tsx', 'src/cli/lora-mix.ts'];

interface Ended {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

function collect(stream: NodeJS.ReadableStream | null): Promise<string> {
  return new Promise((resolve) => {
    let s = '';
    if (!stream) {
      resolve(s);
      return;
    }
    stream.setEncoding('utf8');
    stream.on('data', (d: string) => {
      s += d;
    });
    stream.on('end', () => resolve(s));
    stream.on('error', () => resolve(s));
  });
}

function ended(child: ReturnType<typeof spawn>, stderr: Promise<string>): Promise<Ended> {
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      void stderr.then((s) => resolve({ code, signal, stderr: s }));
    });
  });
}

function expectQuiet(r: Ended): void {
  expect(r.stderr).not.toMatch(/EPIPE/);
  expect(r.stderr).not.toMatch(/^\s+at /m); // no stack frame
  expect(r.stderr).toBe('');
  expect(r.signal).toBeNull();
  expect(r.code).toBe(0);
}

describe('CLI output into a reader that closes early', () => {
  it('lora-mix layout sdxl | head -3', async () => {
    const cli = spawn(process.execPath, [...CLI, 'layout', 'sdxl'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const head = spawn('head', ['-3'], { cwd: ROOT, stdio: [cli.stdout!, 'pipe', 'inherit'] });
    cli.stdout!.destroy(); // head holds the read end now; the pipe breaks when head exits
    const [headOut, r] = await Promise.all([collect(head.stdout), ended(cli, collect(cli.stderr))]);
    const lines = headOut.split('\n').filter((l) => l.length > 0);
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^path\s+single-file key/);
    expect(lines[1]).toMatch(/^unet\.conv_in\s/);
    expectQuiet(r);
  });

  it('a reader that destroys the pipe after the first chunk', async () => {
    const cli = spawn(process.execPath, [...CLI, 'layout', 'sdxl', '--json'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const first = new Promise<string>((resolve) => {
      cli.stdout!.once('data', (d: Buffer) => {
        cli.stdout!.destroy();
        resolve(d.toString('utf8'));
      });
    });
    const [chunk, r] = await Promise.all([first, ended(cli, collect(cli.stderr))]);
    expect(chunk.trimStart().startsWith('[')).toBe(true);
    expectQuiet(r);
  });

  it('a command that fails still reports its error and exit code when stdout is closed', async () => {
    const cli = spawn(process.execPath, [...CLI, 'inspect', 'fixtures/bad/truncated.safetensors'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    cli.stdout!.destroy();
    const r = await ended(cli, collect(cli.stderr));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/SAFETENSORS_TRUNCATED/);
    expect(r.stderr).not.toMatch(/^\s+at /m);
  });
});
