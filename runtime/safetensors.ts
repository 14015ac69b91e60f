// safetensors files: an 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the raw little-endian data. Writes are atomic: a temporary
// file is written and fsynced, then renamed over the target, so a crash never leaves a torn file.
import {
  closeSync,
  fsyncSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
  mkdirSync,
} from "node:fs";
import { dirname } from "node:path";
import type { Tensor } from "../compiler/program.js";

export class CheckpointError extends Error {
  constructor(
    message: string,
    readonly help?: string,
  ) {
    super(message);
  }
}

export interface WriteOptions {
  /** How float tensors are stored: F32 (the default) or F64 (a float64 run's exact state). */
  dtype?: "F32" | "F64";
}

export function writeSafetensors(
  path: string,
  tensors: ReadonlyMap<string, Tensor>,
  metadata: Record<string, string> = {},
  options: WriteOptions = {},
): void {
  const floats = options.dtype ?? "F32";
  const stored = (t: Tensor) => (t.data instanceof Int32Array ? "I32" : floats);
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  const names = [...tensors.keys()].sort();
  for (const name of names) {
    const t = tensors.get(name)!;
    const bytes = t.data.length * (stored(t) === "F64" ? 8 : 4);
    header[name] = {
      dtype: stored(t),
      shape: t.shape,
      data_offsets: [offset, offset + bytes],
    };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8); // keep the data 8-byte aligned
  const headerBytes = Buffer.from(json, "utf8");
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length));
  mkdirSync(dirname(path), { recursive: true });
  const temporary = `${path}.tmp-${process.pid}`;
  const fd = openSync(temporary, "w");
  try {
    writeAll(fd, prefix);
    writeAll(fd, headerBytes);
    for (const name of names) {
      const t = tensors.get(name)!;
      const data =
        stored(t) === "F64"
          ? Float64Array.from(t.data)
          : t.data instanceof Float64Array
            ? Float32Array.from(t.data)
            : t.data;
      writeAll(fd, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    }
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(temporary, { force: true });
    throw e;
  }
  closeSync(fd);
  renameSync(temporary, path);
}

/**
 * All of `bytes`: writeSync may write part of them (a disk filling up) and say so only in its
 * return value; writing the rest then fails with ENOSPC instead of renaming a torn file in place.
 */
function writeAll(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length;) {
    const written = writeSync(fd, bytes, done, bytes.length - done);
    if (written <= 0) throw Object.assign(new Error("a write made no progress"), { code: "EIO" });
    done += written;
  }
}

export interface Loaded {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

export function readSafetensors(path: string): Loaded {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new CheckpointError(
      code === "ENOENT"
        ? `checkpoint \`${path}\` does not exist`
        : code === "EISDIR"
          ? `\`${path}\` is a directory, not a checkpoint`
          : `cannot read \`${path}\`: ${(e as Error).message}`,
      code === "ENOENT"
        ? "check the path; it is relative to the directory lrkc runs in"
        : undefined,
    );
  }
  const corrupt = (why: string) =>
    new CheckpointError(
      `\`${path}\` is not a valid safetensors file: ${why}`,
      "the file may be truncated or corrupt; use an earlier checkpoint",
    );
  if (bytes.length < 8) throw corrupt("it is shorter than its 8-byte header length");
  const headerLength = Number(bytes.readBigUInt64LE(0));
  if (headerLength > bytes.length - 8) throw corrupt("its header runs past the end of the file");
  let header: Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>
  >;
  try {
    header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString("utf8"));
  } catch {
    throw corrupt("its header is not JSON");
  }
  const base = 8 + headerLength;
  const tensors = new Map<string, Tensor>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const e = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    if (
      !Array.isArray(e.shape) ||
      !Array.isArray(e.data_offsets) ||
      (e.dtype !== "F32" && e.dtype !== "I32" && e.dtype !== "F64")
    ) {
      throw corrupt(
        `tensor \`${name}\` has an unsupported entry (dtype ${e.dtype}; lrk reads F32, F64 and I32)`,
      );
    }
    const [begin, end] = e.data_offsets;
    const count = e.shape.reduce((a, b) => a * b, 1);
    const width = e.dtype === "F64" ? 8 : 4;
    if (end - begin !== count * width || base + end > bytes.length || begin < 0)
      throw corrupt(`tensor \`${name}\`'s data is cut off or mis-sized`);
    const slice = bytes.subarray(base + begin, base + end);
    const copy = new ArrayBuffer(slice.length);
    new Uint8Array(copy).set(slice);
    tensors.set(name, {
      shape: e.shape,
      data:
        e.dtype === "F32"
          ? new Float32Array(copy)
          : e.dtype === "F64"
            ? new Float64Array(copy)
            : new Int32Array(copy),
    });
  }
  const metadata = (header["__metadata__"] as Record<string, string> | undefined) ?? {};
  return { tensors, metadata };
}
