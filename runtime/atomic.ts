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
