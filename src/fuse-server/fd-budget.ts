/**
 * How many fds the guest may make the daemon hold (inodes' O_PATH fds, open
 * handles, lock descriptions): the rest of RLIMIT_NOFILE stays the daemon's.
 */

/**
 * fds below RLIMIT_NOFILE kept for the daemon itself (sockets, eventfds,
 * memory regions, transient fds of a request), as the Rust virtiofsd keeps
 * about 512 in reserve: the guest may hold the rest.
 */
export const FD_RESERVE = 512;

/** The fds a guest may hold when the soft RLIMIT_NOFILE is `soft`: the reserve off, and never more than half of a small limit. */
export function fdBudgetFor(soft: number): number {
  return Math.max(soft - FD_RESERVE, Math.floor(soft / 2));
}
