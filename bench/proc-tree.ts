/**
 * A daemon's process tree, as the benchmarks account for it: in namespace
 * mode the serving process is a child of the one started, so CPU and RSS are
 * summed (or maxed) over the tree, read from /proc.
 */
import * as fs from 'node:fs';

function children(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function tree(pid: number): number[] {
  const all = [pid];
  for (let i = 0; i < all.length; i++) all.push(...children(all[i]));
  return all;
}

const CLK_TCK = 100;

/** utime+stime (seconds) of the process and its descendants. */
export function cpuSeconds(pid: number): number {
  let ticks = 0;
  for (const p of tree(pid)) {
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // gone meanwhile
    }
  }
  return ticks / CLK_TCK;
}

/** The largest VmHWM (KiB) in the tree: the serving process, not its launcher. */
export function peakRssKiB(pid: number): number {
  let max = 0;
  for (const p of tree(pid)) {
    try {
      max = Math.max(max, Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0));
    } catch {
      // gone meanwhile
    }
  }
  return max;
}
