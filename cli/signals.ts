// The stop signals, and holding them over a short synchronous write so that Ctrl-C lets it end.

/** The signals that stop lrkc cleanly: Ctrl-C, `kill`, and the terminal closing. */
export const STOP_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

/**
 * Runs `write` (synchronous) with the stop signals held: a Ctrl-C while the files are written
 * (all temporary files first, then the renames: see writeFilesAtomic) lets them finish — well
 * under a second — instead of leaving a temporary file per kernel behind; the signal is returned
 * for the caller to stop with. Outside this window the signals stop lrkc at once, as usual.
 */
export async function holdingSignals<T>(write: () => T): Promise<{ result: T; signal?: string }> {
  let signal: string | undefined;
  const hold = (s: string) => (signal ??= s);
  for (const s of STOP_SIGNALS) process.on(s, hold);
  try {
    const result = write();
    // a signal that came during the write is delivered by the event loop's poll phase, which
    // the first immediate may precede (measured: the second turn has it)
    for (let turn = 0; turn < 3 && signal === undefined; turn++)
      await new Promise((resolve) => setImmediate(resolve));
    return { result, ...(signal ? { signal } : {}) };
  } finally {
    for (const s of STOP_SIGNALS) process.off(s, hold);
  }
}
