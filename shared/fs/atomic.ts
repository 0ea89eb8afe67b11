/**
 * Durable atomic file writes: the data goes to a temp file in the target's directory, is fsynced,
 * renamed over the target, and then the directory is fsynced so the rename itself survives a crash.
 * Readers see either the old file or the complete new one, never a torn one.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export interface AtomicWriteOptions {
  /** File mode of the new file (e.g. 0o600 for secrets); the temp file is created with it, exclusively. */
  mode?: number;
}

/** fsync a directory (makes renames and creations in it durable). A no-op where directories cannot be opened (Windows). */
export async function fsyncDir(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EISDIR' || code === 'EPERM' || code === 'EACCES') return;
    throw e;
  }
  try {
    await fh.sync();
  } catch (e) {
    // some filesystems refuse fsync on a directory; the data itself was already flushed
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'EBADF' && code !== 'EPERM') throw e;
  } finally {
    await fh.close();
  }
}

/** rename, then fsync the target's directory. */
export async function renameDurable(from: string, to: string): Promise<void> {
  await rename(from, to);
  await fsyncDir(dirname(to));
}

/** Writes `data` to `path` atomically and durably (temp file, fsync, rename, fsync of the directory). */
export async function atomicWrite(path: string, data: Uint8Array | string, opts: AtomicWriteOptions = {}): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  const fh = await open(tmp, 'wx', opts.mode ?? 0o666);
  try {
    try {
      await fh.writeFile(data);
      if (opts.mode !== undefined) await fh.chmod(opts.mode); // the umask may have narrowed it; never widened
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
  await fsyncDir(dirname(path));
}
