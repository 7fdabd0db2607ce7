import { LogLevel } from './log';

export type CachePolicy = 'never' | 'auto' | 'always' | 'metadata';
export const CACHE_POLICIES: readonly CachePolicy[] = ['never', 'auto', 'always', 'metadata'];

/** Everything the daemon needs, validated; built by cli.ts only. */
export interface DaemonConfig {
  /** Where to listen; exactly one of socketPath / fd is set. */
  socketPath?: string;
  /** An already-listening socket inherited from the parent (libvirt). */
  fd?: number;
  socketGroup?: string;
  sharedDir: string;
  cache: CachePolicy;
  readonly: boolean;
  logLevel: LogLevel;
}
