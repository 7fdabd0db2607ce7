/*
 * Guest helper of test/e2e/dax-guest.test.ts (packed into the DAX initramfs
 * by scripts/e2e/setup.sh as /bin/daxtool, linked statically):
 *   daxtool isdax FILE                     prints 1 if statx reports STATX_ATTR_DAX, else 0
 *   daxtool store FILE OFFSET LEN BYTE     memset()s [OFFSET, OFFSET+LEN) of a MAP_SHARED
 *                                          mapping of FILE to BYTE, then msync()s it
 *   daxtool now                            prints CLOCK_MONOTONIC in microseconds
 *   daxtool rand read|write FILE BS COUNT  COUNT preads/pwrites of BS bytes at BS-aligned
 *                                          offsets drawn from a fixed LCG over the file
 *   daxtool meta DIR N                     metadata workload (bench/in-guest-dax.ts): makes
 *                                          DIR, then times four phases over N files in it,
 *                                          each pass after dropping the guest's caches (so
 *                                          the LOOKUPs reach the daemon): create (open
 *                                          O_CREAT|O_EXCL + close), stat (stat each by path,
 *                                          3 passes), list (getdents64 + fstatat each entry,
 *                                          as `ls -l`, 10 passes), unlink; prints
 *                                          "meta PHASE OPS MICROSECONDS" per phase (OPS: N
 *                                          times the passes, the time summed over them),
 *                                          then removes DIR
 * Exit status 0 on success; errors go to stderr with errno's text.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef STATX_ATTR_DAX
#define STATX_ATTR_DAX 0x00200000
#endif

static int isdax(const char *path) {
  struct statx stx;
  if (statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, &stx) != 0) {
    fprintf(stderr, "statx %s: %s\n", path, strerror(errno));
    return 1;
  }
  if (!(stx.stx_attributes_mask & STATX_ATTR_DAX)) {
    fprintf(stderr, "statx %s: STATX_ATTR_DAX not reported\n", path);
    return 1;
  }
  printf("%d\n", (stx.stx_attributes & STATX_ATTR_DAX) ? 1 : 0);
  return 0;
}

static int store(const char *path, long offset, long len, int byte) {
  int fd = open(path, O_RDWR);
  if (fd < 0) {
    fprintf(stderr, "open %s: %s\n", path, strerror(errno));
    return 1;
  }
  long page = sysconf(_SC_PAGESIZE);
  long start = offset - offset % page;
  size_t size = (size_t)(offset + len - start);
  char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, start);
  if (p == MAP_FAILED) {
    fprintf(stderr, "mmap %s: %s\n", path, strerror(errno));
    return 1;
  }
  memset(p + (offset - start), byte, (size_t)len);
  if (msync(p, size, MS_SYNC) != 0) {
    fprintf(stderr, "msync %s: %s\n", path, strerror(errno));
    return 1;
  }
  munmap(p, size);
  close(fd);
  return 0;
}

static long long now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int rand_io(int write_, const char *path, long bs, long count) {
  int fd = open(path, write_ ? O_WRONLY : O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    fprintf(stderr, "open %s: %s\n", path, strerror(errno));
    return 1;
  }
  long blocks = st.st_size / bs;
  char *buf = malloc((size_t)bs);
  if (blocks <= 0 || !buf) {
    fprintf(stderr, "%s: smaller than one block\n", path);
    return 1;
  }
  memset(buf, 0x5a, (size_t)bs);
  unsigned long long x = 42;
  for (long i = 0; i < count; i++) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    off_t off = (off_t)((x >> 17) % (unsigned long long)blocks) * bs;
    ssize_t n = write_ ? pwrite(fd, buf, (size_t)bs, off) : pread(fd, buf, (size_t)bs, off);
    if (n != bs) {
      fprintf(stderr, "%s at %lld: %s\n", write_ ? "pwrite" : "pread", (long long)off, n < 0 ? strerror(errno) : "short");
      return 1;
    }
  }
  close(fd);
  return 0;
}

// sync, then empty the guest's page, dentry and inode caches; the FORGETs this sends
// get a moment to reach the daemon before the next phase is timed.
static int drop_caches(void) {
  sync();
  int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
  if (fd < 0 || write(fd, "3\n", 2) != 2) {
    fprintf(stderr, "drop_caches: %s\n", strerror(errno));
    return 1;
  }
  close(fd);
  usleep(100000);
  return 0;
}

enum { META_CREATE, META_STAT, META_LIST, META_UNLINK };
static const char *const meta_phase[] = {"create", "stat", "list", "unlink"};
// stat and list are quick: several passes, so that each phase takes long enough to time.
static const int meta_passes[] = {1, 3, 10, 1};

// One phase over the N files d/f00000..; returns 0 and the files it saw in *seen.
static int meta_run(int phase, const char *dir, long n, long *seen) {
  char path[4096];
  struct stat st;
  *seen = 0;
  if (phase == META_LIST) {
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd < 0) {
      fprintf(stderr, "open %s: %s\n", dir, strerror(errno));
      return 1;
    }
    char buf[32768];
    for (;;) {
      long got = syscall(SYS_getdents64, dfd, buf, sizeof buf);
      if (got < 0) {
        fprintf(stderr, "getdents64 %s: %s\n", dir, strerror(errno));
        return 1;
      }
      if (got == 0) break;
      for (long off = 0; off < got;) {
        // struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name[].
        unsigned short reclen;
        memcpy(&reclen, buf + off + 16, sizeof reclen);
        const char *name = buf + off + 19;
        off += reclen;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
        if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
          fprintf(stderr, "fstatat %s/%s: %s\n", dir, name, strerror(errno));
          return 1;
        }
        ++*seen;
      }
    }
    close(dfd);
    return 0;
  }
  for (long i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/f%05ld", dir, i);
    int rc = 0;
    if (phase == META_CREATE) {
      int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
      rc = fd < 0 ? -1 : close(fd);
    } else if (phase == META_STAT) {
      rc = stat(path, &st);
    } else {
      rc = unlink(path);
    }
    if (rc != 0) {
      fprintf(stderr, "%s %s: %s\n", meta_phase[phase], path, strerror(errno));
      return 1;
    }
    ++*seen;
  }
  return 0;
}

static int meta(const char *dir, long n) {
  if (n <= 0 || n > 99999 || strlen(dir) > 4000) {
    fprintf(stderr, "meta: N must be 1..99999 and DIR short\n");
    return 2;
  }
  if (mkdir(dir, 0755) != 0) {
    fprintf(stderr, "mkdir %s: %s\n", dir, strerror(errno));
    return 1;
  }
  for (int phase = META_CREATE; phase <= META_UNLINK; phase++) {
    long long us = 0;
    for (int pass = 0; pass < meta_passes[phase]; pass++) {
      if (drop_caches() != 0) return 1;
      long seen;
      long long t0 = now_us();
      if (meta_run(phase, dir, n, &seen) != 0) return 1;
      us += now_us() - t0;
      if (seen != n) {
        fprintf(stderr, "%s: %ld files, expected %ld\n", meta_phase[phase], seen, n);
        return 1;
      }
    }
    printf("meta %s %ld %lld\n", meta_phase[phase], n * meta_passes[phase], us);
  }
  if (rmdir(dir) != 0) {
    fprintf(stderr, "rmdir %s: %s\n", dir, strerror(errno));
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "now") == 0) return printf("%lld\n", now_us()) < 0;
  if (argc == 6 && strcmp(argv[1], "rand") == 0) return rand_io(strcmp(argv[2], "write") == 0, argv[3], atol(argv[4]), atol(argv[5]));
  if (argc == 4 && strcmp(argv[1], "meta") == 0) return meta(argv[2], atol(argv[3]));
  if (argc == 3 && strcmp(argv[1], "isdax") == 0) return isdax(argv[2]);
  if (argc == 6 && strcmp(argv[1], "store") == 0) return store(argv[2], atol(argv[3]), atol(argv[4]), atoi(argv[5]));
  fprintf(stderr, "usage: daxtool isdax FILE | store FILE OFFSET LEN BYTE | now | rand read|write FILE BS COUNT | meta DIR N\n");
  return 2;
}
