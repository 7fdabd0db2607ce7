import * as fs from 'node:fs';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'trace';
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug', 'trace'];
/** What --log-level takes: a level, or off (nothing at all, as in the Rust virtiofsd). */
export type LogThreshold = LogLevel | 'off';
export const LOG_THRESHOLDS: readonly LogThreshold[] = ['error', 'warn', 'info', 'debug', 'trace', 'off'];

export type Logger = (level: LogLevel, msg: string) => void;

/** syslog(3) severities (RFC 5424), also the `<N>` prefixes journald reads from a stream. */
export const SEVERITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7, trace: 7 };
/** LOG_DAEMON, the facility of our syslog messages. */
const FACILITY_DAEMON = 3;

/** Whether `level` passes `threshold`. */
export function enabled(threshold: LogThreshold, level: LogLevel): boolean {
  if (threshold === 'off') return false;
  return LOG_LEVELS.indexOf(level) <= LOG_LEVELS.indexOf(threshold);
}

/**
 * Whether stderr is the journal's stream: systemd sets JOURNAL_STREAM to the
 * "device:inode" of the stream it connected to fd 2 (systemd.exec(5)). Only
 * then may lines carry `<N>` priorities; a redirected stderr gets plain lines.
 */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env, fd = 2): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (!m) return false;
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    return st.dev === BigInt(m[1]) && st.ino === BigInt(m[2]);
  } catch {
    return false;
  }
}

export interface LogSink {
  /** A journal stream: `<N>` prefixes, no timestamp (the journal adds its own). */
  journal?: boolean;
  /** A connected AF_UNIX datagram socket to syslog (/dev/log): RFC 3164 messages, stderr unused. */
  syslogFd?: number;
  /** Where lines go otherwise (tests); default stderr. */
  write?: (line: string) => void;
}

/** One formatted line per message, as the sink wants it (without the newline). */
export function formatLine(level: LogLevel, msg: string, sink: LogSink, now: Date = new Date()): string {
  if (sink.syslogFd !== undefined) return `<${FACILITY_DAEMON * 8 + SEVERITY[level]}>virtiofsd-ts[${process.pid}]: ${level}: ${msg}`;
  if (sink.journal) return `<${SEVERITY[level]}>[virtiofsd-ts] ${level}: ${msg}`;
  return `${now.toISOString()} [virtiofsd-ts] ${level}: ${msg}`;
}

/** A logger that drops messages below `threshold` and writes the rest to `sink`. */
export function makeLogger(threshold: LogThreshold, sink: LogSink = {}): Logger {
  const write =
    sink.syslogFd !== undefined
      ? (line: string) => {
          try {
            fs.writeSync(sink.syslogFd!, line);
          } catch {
            // syslog gone (restarted): the message is lost, the daemon goes on, as syslog(3) does.
          }
        }
      : (sink.write ?? ((line: string) => void process.stderr.write(line + '\n')));
  return (level, msg) => {
    if (enabled(threshold, level)) write(formatLine(level, msg, sink));
  };
}

/** A logger to stderr that drops messages below `threshold` (journal priorities when stderr is the journal). */
export function stderrLogger(threshold: LogThreshold): Logger {
  return makeLogger(threshold, { journal: stderrIsJournal() });
}
