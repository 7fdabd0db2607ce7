/** The FUSE server: wire codec, dispatcher and the passthrough file system behind FuseSession. */
export { FuseSession, type FuseSessionOptions, type LogLevel } from './session';
export type { CacheMode } from './cache-policy';
export { FileSystem } from './filesystem';
export type { AttrReply, Context, DirEntry, DirSink, Entry, InitInfo, Opened, SetattrArgs } from './filesystem';
export { Reader, Writer } from './chain-io';
export { FuseError } from './errors';
