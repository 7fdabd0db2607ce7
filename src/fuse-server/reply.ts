/** Reply encoders: file-system results -> the fuse.h reply structs. */
import { type Stat, type StatVfs, newEncodeDev } from '../sys/fs';
import { STATX_BASIC_STATS, STATX_BTIME } from '../sys/fs';
import type { Writer } from './chain-io';
import type { AttrReply, DirEntry, DirSink, Entry, Opened } from './filesystem';
import {
  type EntryOut,
  type FuseAttr,
  fuse_attr_out,
  fuse_dirent,
  fuse_direntplus,
  fuse_entry_out,
  fuse_open_out,
  fuse_statfs_out,
  fuse_statx_out,
  fuseRecAlign,
} from './protocol';

function seconds(t: number): number {
  return Math.floor(t);
}
function nanos(t: number): number {
  return Math.floor((t - Math.floor(t)) * 1e9);
}

export function attrOf(st: Stat, flags: number): FuseAttr {
  return {
    ino: st.ino,
    size: st.size,
    blocks: st.blocks,
    atime: st.atimeSec,
    mtime: st.mtimeSec,
    ctime: st.ctimeSec,
    atimensec: st.atimeNsec,
    mtimensec: st.mtimeNsec,
    ctimensec: st.ctimeNsec,
    mode: st.mode,
    nlink: st.nlink,
    uid: st.uid,
    gid: st.gid,
    rdev: newEncodeDev(st.rdevMajor, st.rdevMinor),
    blksize: st.blksize,
    flags,
  };
}

function entryOut(e: Entry): EntryOut {
  return {
    nodeid: e.nodeid,
    generation: e.generation,
    entry_valid: seconds(e.entryTimeout),
    attr_valid: seconds(e.attrTimeout),
    entry_valid_nsec: nanos(e.entryTimeout),
    attr_valid_nsec: nanos(e.attrTimeout),
    attr: attrOf(e.stat, e.attrFlags),
  };
}

/** READDIRPLUS entries for `.` and `..` carry nodeid 0: the kernel then uses only the dirent. */
const NO_ENTRY: EntryOut = fuse_entry_out.decode(Buffer.alloc(fuse_entry_out.size), 0);

export function replyEntry(out: Writer, e: Entry): void {
  out.writeStruct(fuse_entry_out, entryOut(e));
}

export function replyAttr(out: Writer, a: AttrReply): void {
  out.writeStruct(fuse_attr_out, { attr_valid: seconds(a.timeout), attr_valid_nsec: nanos(a.timeout), attr: attrOf(a.stat, a.attrFlags) });
}

/** fuse_statx_out: the fields statx filled in, the birth time among them when the host has it. */
export function replyStatx(out: Writer, a: AttrReply): void {
  const st = a.stat;
  const time = (sec: number, nsec: number) => ({ tv_sec: sec, tv_nsec: nsec });
  out.writeStruct(fuse_statx_out, {
    attr_valid: seconds(a.timeout),
    attr_valid_nsec: nanos(a.timeout),
    flags: a.attrFlags,
    stat: {
      mask: st.mask & (STATX_BASIC_STATS | STATX_BTIME),
      blksize: st.blksize,
      attributes: st.attributes,
      nlink: st.nlink,
      uid: st.uid,
      gid: st.gid,
      mode: st.mode,
      ino: st.ino,
      size: st.size,
      blocks: st.blocks,
      attributes_mask: st.attributesMask,
      atime: time(st.atimeSec, st.atimeNsec),
      btime: time(st.btimeSec, st.btimeNsec),
      ctime: time(st.ctimeSec, st.ctimeNsec),
      mtime: time(st.mtimeSec, st.mtimeNsec),
      rdev_major: st.rdevMajor,
      rdev_minor: st.rdevMinor,
      dev_major: st.devMajor,
      dev_minor: st.devMinor,
    },
  });
}

export function replyOpen(out: Writer, o: Opened): void {
  out.writeStruct(fuse_open_out, { fh: o.fh, open_flags: o.openFlags });
}

export function replyStatfs(out: Writer, s: StatVfs): void {
  out.writeStruct(fuse_statfs_out, {
    st: {
      blocks: s.blocks,
      bfree: s.bfree,
      bavail: s.bavail,
      files: s.files,
      ffree: s.ffree,
      bsize: s.bsize,
      namelen: s.namemax,
      frsize: s.frsize,
    },
  });
}

/** Packs directory entries into a READDIR(PLUS) reply of at most `budget` bytes. */
export class DirReply implements DirSink {
  constructor(
    private readonly out: Writer,
    private budget: number,
    readonly plus: boolean,
  ) {}

  add(entry: DirEntry, lookup: Entry | null): boolean {
    const header = this.plus ? fuse_direntplus.size : fuse_dirent.size;
    const size = fuseRecAlign(header + entry.name.length);
    if (size > this.budget) return false;
    this.budget -= size;
    const dirent = { ino: entry.ino, off: entry.offset, namelen: entry.name.length, type: entry.type };
    if (this.plus) this.out.writeStruct(fuse_direntplus, { entry_out: lookup ? entryOut(lookup) : NO_ENTRY, dirent });
    else this.out.writeStruct(fuse_dirent, dirent);
    this.out.writeBytes(entry.name);
    this.out.writeZeros(size - header - entry.name.length);
    return true;
  }
}
