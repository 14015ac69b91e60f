// Writing a user's file so that it is never lost: the new content goes to a temporary file in the
// same folder (so the rename cannot cross file systems), is fsynced, and only then renamed over
// the target. A full disk, a read-only folder or a crash mid-write leaves the old file as it was.
import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  fchmodSync,
  fsyncSync,
  mkdirSync,
  openSync,
  realpathSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { open as openFile, realpath, rename, stat, access, unlink } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";

/**
 * Replaces `path` with `data` atomically, keeping an existing file's permission bits (a new file
 * gets `mode`, default 0o644 less the umask). A symbolic link is followed: the file it points to
 * is replaced, the link stays. Throws the system error (ENOSPC, EACCES, EROFS, …) with nothing
 * changed; `writeErrorReason` words it for a diagnostic.
 */
export function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  options: { mode?: number } = {},
): void {
  const target = existingTarget(path);
  const keepMode = target.mode;
  // A rename would replace even a file the user made read-only: refuse as a plain write would.
  if (keepMode !== undefined) accessSync(target.path, constants.W_OK);
  const tmp = join(
    dirname(target.path),
    `.${basename(target.path)}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`,
  );
  const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  const fd = openSync(tmp, "wx", options.mode ?? 0o644);
  try {
    try {
      for (let done = 0; done < bytes.length;)
        done += writeSync(fd, bytes, done, bytes.length - done);
      if (keepMode !== undefined) fchmodSync(fd, keepMode);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, target.path);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      // already gone, or the folder refuses even that: the error below says why
    }
    throw e;
  }
  syncFolder(dirname(target.path));
}

/**
 * Writes many files, each as `writeFileAtomic` does (temporary file, fsync, rename; an existing
 * file keeps its permission bits), several at a time: each fsync waits for the disk, and ext4
 * commits concurrent ones together (1,506 kernel files: 8 s one by one on a loaded machine, 2.5 s
 * four at a time). Each folder is synced once, at the end. Resolves to undefined when every file
 * is written, or to the first failure's path and system error: files not yet started are left
 * alone, those under way finish (or fail) first, and no temporary file is left behind.
 */
export async function writeFilesAtomic(
  files: readonly { path: string; data: string | Uint8Array }[],
  concurrency = 8,
): Promise<{ path: string; error: unknown } | undefined> {
  let next = 0;
  let failed: { path: string; error: unknown } | undefined;
  const worker = async () => {
    while (failed === undefined && next < files.length) {
      const { path, data } = files[next++]!;
      try {
        await writeOneAtomic(path, data);
      } catch (error) {
        failed ??= { path, error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, files.length) }, worker));
  if (failed) return failed;
  for (const dir of new Set(files.map((f) => dirname(resolve(f.path))))) syncFolder(dir);
  return undefined;
}

/** One file of writeFilesAtomic: writeFileAtomic's steps, asynchronous, without the folder sync. */
async function writeOneAtomic(path: string, data: string | Uint8Array): Promise<void> {
  let target: { path: string; mode?: number } = { path };
  try {
    const real = await realpath(path);
    target = { path: real, mode: (await stat(real)).mode & 0o7777 };
  } catch {
    // a new file (or a dangling link: written as a plain write would, at the link's own path)
  }
  if (target.mode !== undefined) await access(target.path, constants.W_OK);
  const tmp = join(
    dirname(target.path),
    `.${basename(target.path)}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`,
  );
  const handle = await openFile(tmp, "wx", 0o644);
  try {
    try {
      await handle.writeFile(data);
      if (target.mode !== undefined) await handle.chmod(target.mode);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, target.path);
  } catch (e) {
    await unlink(tmp).catch(() => {
      // already gone, or the folder refuses even that: the error below says why
    });
    throw e;
  }
}

/**
 * `mkdir -p`, one folder at a time from the nearest one that exists. Node's recursive mkdirSync
 * loops forever where mkdir says ENOENT under a parent that exists (`/proc/x`: it climbs and
 * retries), and on a relative path of two or more parts when the working directory was deleted
 * (it climbs to "."), so that case throws ENOENT first.
 */
export function makeFolder(path: string): void {
  if (!isAbsolute(path)) {
    try {
      process.cwd();
    } catch (e) {
      throw Object.assign(new Error(`the working directory no longer exists (making ${path})`), {
        code: "ENOENT",
        syscall: "mkdir",
        path,
        cause: e,
      });
    }
  }
  const missing: string[] = [];
  let folder = resolve(path);
  while (!existsSync(folder) && dirname(folder) !== folder) {
    missing.push(folder);
    folder = dirname(folder);
  }
  // nothing missing: a folder is done, anything else is EEXIST from mkdir, as `mkdir -p` says
  if (missing.length === 0 && !statSync(folder).isDirectory()) mkdirSync(folder);
  for (const dir of missing.reverse()) {
    try {
      mkdirSync(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e; // made meanwhile: fine
    }
  }
}

/** The file to replace (a link's target) and its permission bits, if it exists. */
function existingTarget(path: string): { path: string; mode?: number } {
  try {
    const real = realpathSync(path);
    return { path: real, mode: statSync(real).mode & 0o7777 };
  } catch {
    return { path };
  }
}

/** The rename is durable only once the folder's entry is on disk; best effort (not every system allows it). */
function syncFolder(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, "r");
    fsyncSync(fd);
  } catch {
    // a folder that cannot be opened or synced: the file is written, only its durability is weaker
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** A failed write's system error in words (`no space left on device`), for a diagnostic. */
export function writeErrorReason(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case "ENOSPC":
      return "no space left on device";
    case "EDQUOT":
      return "disk quota exceeded";
    case "EROFS":
      return "the file system is read-only";
    case "EACCES":
    case "EPERM":
      return "permission denied";
    case "ENOTDIR":
      return "a part of the path is a file, not a folder";
    case "EISDIR":
      return "it is a folder";
    case "EEXIST":
      return "a file of that name is in the way";
    case "ENOENT":
      return "the folder does not exist";
    case "ENAMETOOLONG":
      return "the path is too long";
    case "EIO":
      return "input/output error";
    default:
      return (e as Error | undefined)?.message ?? String(e);
  }
}

/** Is this a file-system failure (as opposed to a bug)? */
export function isFileSystemError(e: unknown): e is NodeJS.ErrnoException {
  return (
    e instanceof Error &&
    typeof (e as NodeJS.ErrnoException).code === "string" &&
    typeof (e as NodeJS.ErrnoException).syscall === "string"
  );
}
