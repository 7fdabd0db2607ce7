/**
 * The vocabulary of `--sandbox` and `--seccomp`, kept free of native code so
 * that the command line parses without the addon (docs/security.md says what
 * each mode does).
 */
export type SandboxMode = 'namespace' | 'chroot' | 'none';
export const SANDBOX_MODES: readonly SandboxMode[] = ['namespace', 'chroot', 'none'];

/** What a syscall outside the allow-list gets; none: no filter. */
export const SECCOMP_MODES = ['none', 'kill', 'log', 'trap'] as const;
export type SeccompMode = (typeof SECCOMP_MODES)[number];
