import { readdirSync, readFileSync } from "node:fs";

/**
 * CPU time (ns) of this process's threads other than the main one: on lavapipe, where a kernel
 * runs on the process's own worker threads, the work a dispatch took whatever else the machine
 * was doing (device time on a shared machine grows with other processes' load).
 */
export function workerCpuNs(): number {
  let ns = 0;
  for (const tid of readdirSync("/proc/self/task")) {
    if (tid === String(process.pid)) continue;
    try {
      ns += Number(readFileSync(`/proc/self/task/${tid}/schedstat`, "utf8").split(" ")[0]);
    } catch {
      // the thread ended
    }
  }
  return ns;
}

/** CPU time (ns) of this process's main thread (recording commands, packing uploads). */
export function mainCpuNs(): number {
  const stat = readFileSync(`/proc/self/task/${process.pid}/schedstat`, "utf8");
  return Number(stat.split(" ")[0]);
}
