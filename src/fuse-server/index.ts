/** The FUSE server: wire codec, dispatcher and the passthrough file system behind FuseSession. */
export { FuseSession, type FuseSessionOptions, type LogLevel } from './session';
export type { CacheMode } from './cache-policy';
export { FileSystem } from './filesystem';
export type { AttrReply, Capabilities, Context, DirEntry, DirSink, Entry, InitInfo, LockRange, Opened, SetattrArgs } from './filesystem';
export { Reader, Writer } from './chain-io';
export { FuseError } from './errors';
export { XattrMap, XattrMapSyntaxError } from './xattr-map';
export { IdMap, IdMapSyntaxError } from './id-map';
export { DAX_POLICIES, DAX_MIN_FILE_SIZE, type DaxPolicy } from './passthrough-dax';
export type { FileHandleMode } from './file-handles';
