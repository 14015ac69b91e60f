// safetensors files: an 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the raw little-endian data. Writes are atomic: a temporary
// file is written and fsynced, then renamed over the target, so a crash never leaves a torn file.
import {
  closeSync,
  constants,
  fstatSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  writeSync,
  type Stats,
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
  /**
   * How floats are stored: F32 (the default), F64 for a float64 run (`--device cpu64`), or F16 /
   * BF16 (rounded to nearest even; a merged export in its source's dtype). F16 refuses a value
   * beyond its range (RangeError) rather than store an infinity.
   */
  floats?: "F32" | "F64" | "F16" | "BF16";
}

export function writeSafetensors(
  path: string,
  tensors: ReadonlyMap<string, Tensor>,
  metadata: Record<string, string> = {},
  options: WriteOptions = {},
): void {
  const floats = options.floats ?? "F32";
  const stored = (t: Tensor) =>
    t.data instanceof Int32Array
      ? t.data
      : floats === "F16" || floats === "BF16"
        ? narrowed(t.data, floats)
        : floats === "F64"
          ? t.data instanceof Float64Array
            ? t.data
            : Float64Array.from(t.data)
          : t.data instanceof Float32Array
            ? t.data
            : Float32Array.from(t.data);
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  const names = [...tensors.keys()].sort();
  const datas = names.map((name) => stored(tensors.get(name)!));
  for (const [i, name] of names.entries()) {
    const t = tensors.get(name)!;
    const data = datas[i]!;
    const bytes = data.byteLength;
    header[name] = {
      dtype:
        data instanceof Int32Array
          ? "I32"
          : data instanceof Float64Array
            ? "F64"
            : data instanceof Uint16Array
              ? floats
              : "F32",
      shape: t.shape,
      data_offsets: [offset, offset + bytes],
    };
    offset += bytes;
  }
  const json = JSON.stringify(header);
  const length = Buffer.byteLength(json, "utf8");
  // keep the data 8-byte aligned
  const headerBytes = Buffer.from(json + " ".repeat((8 - (length % 8)) % 8), "utf8");
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length));
  mkdirSync(dirname(path), { recursive: true });
  const temporary = `${path}.tmp-${process.pid}`;
  const fd = openSync(temporary, "w");
  try {
    writeAll(fd, prefix);
    writeAll(fd, headerBytes);
    for (const data of datas)
      writeAll(fd, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
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
  /** Each tensor's dtype in the file (F16 and BF16 tensors are read as f32, F64 as float64). */
  dtypes: Map<string, FileDType>;
  metadata: Record<string, string>;
}

export interface ReadOptions {
  /** Refuse a file larger than this many bytes (what the program could hold, with room). */
  maxBytes?: number;
}

/** The dtypes lrk reads, with their element sizes. Floats become f32 (F64 stays float64). */
const readableBytes = { F64: 8, F32: 4, F16: 2, BF16: 2, I32: 4 } as const;
export type FileDType = keyof typeof readableBytes;
/**
 * safetensors' other dtypes: a file may hold them (a Hugging Face checkpoint's BOOL attention
 * masks, I64 position ids) as long as nothing reads them; reading one is refused.
 */
const otherBytes = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  U32: 4,
  I64: 8,
  U64: 8,
} as const;
export type StoredDType = FileDType | keyof typeof otherBytes;
const elementBytes: Record<string, number> = { ...readableBytes, ...otherBytes };
const isReadable = (dtype: StoredDType): dtype is FileDType => dtype in readableBytes;

const unreadableDType = (name: string, path: string, dtype: unknown) =>
  new CheckpointError(
    `tensor \`${name}\` in \`${path}\` has dtype ${JSON.stringify(dtype)}; lrk reads F64, F32, F16, BF16 and I32`,
    "convert the tensor to F32 when saving it",
  );

/** safetensors' own limit on the JSON header; a larger one is not a safetensors file. */
const MAX_HEADER_BYTES = 100_000_000;

/** One tensor's entry in a file's header: its dtype, shape and byte range in the data section. */
export interface SafetensorsEntry {
  dtype: StoredDType;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * An open safetensors file whose header has been read and checked (every entry, and that the
 * entries tile the data section); tensors are read one at a time, on demand, so that a checkpoint
 * is never held in memory twice (raw bytes and values) and tensors nobody uses are never read.
 */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private fd: number | undefined,
    readonly entries: ReadonlyMap<string, SafetensorsEntry>,
    readonly metadata: Record<string, string>,
    /** Where the data section starts: after the 8-byte length and the header. */
    private readonly base: number,
  ) {}

  /** Opens `path` and reads its header; the caller closes it. */
  static open(path: string, options: ReadOptions = {}): SafetensorsFile {
    const fd = openRegularFile(path, options.maxBytes);
    try {
      const size = fstatSync(fd).size;
      const corrupt = corruptError(path);
      if (size < 8) throw corrupt("it is shorter than its 8-byte header length");
      const headerLength = readAt(fd, path, 0, 8).readBigUInt64LE(0);
      if (headerLength > BigInt(Math.min(size - 8, MAX_HEADER_BYTES)))
        throw corrupt(
          `its header length (${headerLength} bytes) runs past the end of the file (${size} bytes)`,
        );
      const base = 8 + Number(headerLength);
      let header: unknown;
      try {
        header = JSON.parse(readAt(fd, path, 8, Number(headerLength)).toString("utf8"));
      } catch (e) {
        if (e instanceof CheckpointError) throw e;
        throw corrupt("its header is not JSON");
      }
      if (!isObject(header))
        throw corrupt(`its header is ${describeJson(header)}, not a JSON object`);
      const dataLength = size - base;
      const entries = new Map<string, SafetensorsEntry>();
      for (const [name, entry] of Object.entries(header)) {
        if (name === "__metadata__") continue;
        entries.set(name, checkedEntry(name, entry, dataLength, corrupt, path));
      }
      checkCoverage(
        [...entries].map(([name, e]) => ({ name, begin: e.begin, end: e.end })),
        dataLength,
        corrupt,
      );
      const metadata = metadataOf(header["__metadata__"], corrupt);
      return new SafetensorsFile(path, fd, entries, metadata, base);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** The tensor `name` (F16 and BF16 widened to f32, F64 kept as float64). */
  read(name: string): Tensor {
    const e = this.entries.get(name);
    if (!e) throw new CheckpointError(`\`${this.path}\` holds no tensor \`${name}\``);
    if (this.fd === undefined) throw new Error(`\`${this.path}\` is closed`);
    if (!isReadable(e.dtype)) throw unreadableDType(name, this.path, e.dtype);
    return decode(
      readAt(this.fd, this.path, this.base + e.begin, e.end - e.begin),
      e.dtype,
      e.shape,
    );
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

export function readSafetensors(path: string, options: ReadOptions = {}): Loaded {
  const file = SafetensorsFile.open(path, options);
  try {
    const tensors = new Map<string, Tensor>();
    const dtypes = new Map<string, FileDType>();
    for (const [name, e] of file.entries) {
      tensors.set(name, file.read(name)); // refuses a dtype lrk does not read
      dtypes.set(name, e.dtype as FileDType);
    }
    return { tensors, dtypes, metadata: file.metadata };
  } finally {
    file.close();
  }
}

const corruptError = (path: string) => (why: string) =>
  new CheckpointError(
    `\`${path}\` is not a valid safetensors file: ${why}`,
    "the file may be truncated or corrupt; use an earlier checkpoint",
  );

/**
 * A descriptor of `path`, if it is a regular file of at most `maxBytes`: a FIFO or a device would
 * block or never end, so it is opened without blocking and refused after fstat.
 */
function openRegularFile(path: string, maxBytes = Infinity): number {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    throw unreadable(path, e);
  }
  try {
    const stat = fstatSync(fd);
    if (stat.isDirectory())
      throw new CheckpointError(
        `\`${path}\` is a directory, not a checkpoint`,
        "pass a .safetensors file inside it (a run folder holds final.safetensors and checkpoint.safetensors), or a Hugging Face checkpoint folder",
      );
    if (!stat.isFile())
      throw new CheckpointError(
        `\`${path}\` is ${fileKind(stat)}, not a regular file: lrk reads checkpoints only from files`,
        "save the checkpoint to a file and pass its path",
      );
    if (stat.size > maxBytes)
      throw new CheckpointError(
        `\`${path}\` is ${stat.size} bytes, more than this program's parameters and states could take (at most ${maxBytes} bytes)`,
        "is it the checkpoint of another, larger model? pass one written for this program",
      );
    return fd;
  } catch (e) {
    closeSync(fd);
    if (e instanceof CheckpointError) throw e;
    throw unreadable(path, e);
  }
}

/** `length` bytes at `position`; a file that shrank since its header was read is corrupt. */
function readAt(fd: number, path: string, position: number, length: number): Buffer {
  const bytes = Buffer.alloc(length);
  let done = 0;
  try {
    while (done < length) {
      const n = readSync(fd, bytes, done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
  } catch (e) {
    throw unreadable(path, e);
  }
  if (done < length)
    throw corruptError(path)(`it ends at byte ${position + done}, inside the data of a tensor`);
  return bytes;
}

function unreadable(path: string, e: unknown): CheckpointError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === "ENOENT")
    return new CheckpointError(
      `checkpoint \`${path}\` does not exist`,
      'check the path: `init "…"` is relative to the program\'s folder, a path on the command line to the directory lrkc runs in',
    );
  if (code === "EISDIR") return new CheckpointError(`\`${path}\` is a directory, not a checkpoint`);
  return new CheckpointError(
    `cannot read \`${path}\`: ${(e as Error).message}`,
    code === "EACCES" ? "check the file's permissions" : undefined,
  );
}

function fileKind(stat: Stats): string {
  if (stat.isFIFO()) return "a FIFO (named pipe)";
  if (stat.isCharacterDevice()) return "a character device";
  if (stat.isBlockDevice()) return "a block device";
  if (stat.isSocket()) return "a socket";
  return "not a regular file";
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

const describeJson = (v: unknown) =>
  v === null ? "null" : Array.isArray(v) ? "an array" : `a ${typeof v}`;

const isCount = (v: unknown): v is number =>
  typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/** One header entry, checked: a known dtype, a shape of counts, a byte range that fits both. */
function checkedEntry(
  name: string,
  entry: unknown,
  dataLength: number,
  corrupt: (why: string) => CheckpointError,
  path: string,
): SafetensorsEntry {
  if (!isObject(entry))
    throw corrupt(
      `tensor \`${name}\`'s entry is ${describeJson(entry)}, not an object with dtype, shape and data_offsets`,
    );
  const { dtype, shape, data_offsets: offsets } = entry;
  // No dtype at all is a damaged header (a flipped bit in `__metadata__`), not a dtype to convert.
  if (typeof dtype !== "string")
    throw corrupt(
      `tensor \`${name}\`'s entry has ${dtype === undefined ? "no dtype" : `dtype ${JSON.stringify(dtype)}, not a string`}`,
    );
  if (!(dtype in elementBytes)) throw unreadableDType(name, path, dtype);
  if (!Array.isArray(shape) || !shape.every(isCount))
    throw corrupt(
      `tensor \`${name}\`'s shape ${JSON.stringify(shape)} is not a list of non-negative integers`,
    );
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount))
    throw corrupt(
      `tensor \`${name}\`'s data_offsets ${JSON.stringify(offsets)} are not two non-negative integers`,
    );
  const [begin, end] = offsets as [number, number];
  const count = shape.reduce((a: number, b: number) => a * b, 1);
  const size = count * elementBytes[dtype]!;
  if (begin > end || end > dataLength)
    throw corrupt(
      `tensor \`${name}\`'s data_offsets [${begin}, ${end}] lie outside its ${dataLength}-byte data section`,
    );
  if (end - begin !== size)
    throw corrupt(
      `tensor \`${name}\` is ${dtype} [${shape.join(", ")}] (${size} bytes), but its data_offsets [${begin}, ${end}] hold ${end - begin} bytes`,
    );
  return { dtype: dtype as StoredDType, shape: shape as number[], begin, end };
}

/** The tensors' byte ranges tile the data section: no overlap, no gap, nothing after. */
function checkCoverage(
  ranges: { name: string; begin: number; end: number }[],
  dataLength: number,
  corrupt: (why: string) => CheckpointError,
): void {
  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const r of ranges) {
    if (r.begin < at) throw corrupt(`tensor \`${r.name}\`'s data overlaps the tensor before it`);
    if (r.begin > at) throw corrupt(`bytes ${at} to ${r.begin} of its data belong to no tensor`);
    at = r.end;
  }
  if (at !== dataLength)
    throw corrupt(
      `its data section is ${dataLength} bytes, but its tensors cover ${at}: the header does not match the data`,
    );
}

function metadataOf(
  value: unknown,
  corrupt: (why: string) => CheckpointError,
): Record<string, string> {
  if (value === undefined) return {};
  if (!isObject(value)) throw corrupt(`its __metadata__ is ${describeJson(value)}, not an object`);
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) if (typeof v === "string") metadata[k] = v;
  return metadata;
}

/** Little-endian values as a tensor: F16 and BF16 widen to f32 exactly, F64 stays float64. */
function decode(slice: Buffer, dtype: FileDType, shape: number[]): Tensor {
  // `slice` is this tensor's own allocation (Buffer.alloc never pools): its bytes are reused as
  // the values, with no copy, unless it is a view into something larger
  const copy =
    slice.byteOffset === 0 && slice.byteLength === slice.buffer.byteLength
      ? (slice.buffer as ArrayBuffer)
      : new Uint8Array(slice).buffer;
  const tensor = (data: Tensor["data"]): Tensor => ({ shape, data });
  switch (dtype) {
    case "F64":
      return tensor(new Float64Array(copy));
    case "F32":
      return tensor(new Float32Array(copy));
    case "I32":
      return tensor(new Int32Array(copy));
    case "BF16": {
      const halves = new Uint16Array(copy);
      const bits = new Uint32Array(halves.length);
      for (let i = 0; i < halves.length; i++) bits[i] = halves[i]! << 16;
      return tensor(new Float32Array(bits.buffer));
    }
    case "F16": {
      const halves = new Uint16Array(copy);
      const out = new Float32Array(halves.length);
      for (let i = 0; i < halves.length; i++) out[i] = halfToNumber(halves[i]!);
      return tensor(out);
    }
  }
}

/** An IEEE 754 half's value (every half is exactly an f32). */
export function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * (1024 + mantissa) * 2 ** (exponent - 25);
}

const f32Scratch = new Float32Array(1);
const f32Bits = new Uint32Array(f32Scratch.buffer);

/** Floats as F16 or BF16 bit patterns, each rounded to the nearest (ties to even). */
function narrowed(data: ArrayLike<number>, dtype: "F16" | "BF16"): Uint16Array {
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const x = data[i]!;
    out[i] = dtype === "F16" ? numberToHalf(x) : numberToBfloat16(x);
    if (dtype === "F16" && Number.isFinite(x) && (out[i]! & 0x7c00) === 0x7c00)
      throw new RangeError(`${x} is beyond F16's range (±65504)`);
  }
  return out;
}

/** The F16 nearest to x (ties to even): its bit pattern. */
export function numberToHalf(x: number): number {
  f32Scratch[0] = x;
  const b = f32Bits[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exponent = (b >>> 23) & 0xff;
  let mantissa = b & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  const e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  let shift = 13;
  let h: number;
  if (e <= 0) {
    // a subnormal half: the implicit bit joins the mantissa, shifted further
    if (e < -10) return sign;
    mantissa |= 0x800000;
    shift = 14 - e;
    h = mantissa >>> shift;
  } else h = (e << 10) | (mantissa >>> shift);
  const rest = mantissa & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  // a carry out of the mantissa rounds up into the exponent, as it should
  if (rest > half || (rest === half && h & 1)) h++;
  return sign | h;
}

/** The BF16 nearest to x (ties to even): its bit pattern. */
export function numberToBfloat16(x: number): number {
  f32Scratch[0] = x;
  const b = f32Bits[0]!;
  if (Number.isNaN(x)) return ((b >>> 16) & 0x8000) | 0x7fc0;
  return Math.floor((b + 0x7fff + ((b >>> 16) & 1)) / 0x10000) & 0xffff;
}
