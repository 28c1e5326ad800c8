/**
 * The page worker's fuse kernel: made once and reused by every fuse, remade when the thread count asked for changes,
 * after its making failed, and after a job failed with the kernel's own failure (KERNEL_FAILED: a thread died or
 * trapped). A threaded kernel that failed fails every later update too, so keeping it would fail every later fuse
 * of the worker until the page is reloaded.
 */

interface Disposable {
  dispose(): Promise<void>;
}

export interface KernelCache<K extends Disposable> {
  /** The kernel for `threads` (undefined: the kernel's default), made on first use. */
  get(threads: number | undefined): Promise<K>;
  /** A job that used the kernel failed with `error`: drop the kernel when the error is the kernel's failure. */
  jobFailed(error: unknown): void;
}

export function kernelCache<K extends Disposable>(make: (threads: number | undefined) => Promise<K>): KernelCache<K> {
  let made: { threads: number | undefined; kernel: Promise<K> } | null = null;
  const drop = (): void => {
    const old = made?.kernel;
    made = null;
    if (old) void old.then((k) => k.dispose()).catch(() => undefined);
  };
  return {
    get(threads) {
      if (made && made.threads === threads) return made.kernel;
      drop();
      const kernel = make(threads);
      made = { threads, kernel };
      kernel.catch(() => {
        if (made?.kernel === kernel) made = null;
      });
      return kernel;
    },
    jobFailed(error) {
      if ((error as { code?: unknown } | null)?.code === 'KERNEL_FAILED') drop();
    },
  };
}
