export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];

export type Logger = (level: LogLevel, msg: string) => void;

/** A logger to stderr that drops messages below `threshold`. */
export function stderrLogger(threshold: LogLevel): Logger {
  const max = LOG_LEVELS.indexOf(threshold);
  return (level, msg) => {
    if (LOG_LEVELS.indexOf(level) <= max) process.stderr.write(`[virtiofsd-ts] ${level}: ${msg}\n`);
  };
}
