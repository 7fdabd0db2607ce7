/*
 * Guest helper of test/e2e/dax-guest.test.ts (packed into the DAX initramfs
 * by scripts/e2e/setup.sh as /bin/daxtool, linked statically):
 *   daxtool isdax FILE                     prints 1 if statx reports STATX_ATTR_DAX, else 0
 *   daxtool store FILE OFFSET LEN BYTE     memset()s [OFFSET, OFFSET+LEN) of a MAP_SHARED
 *                                          mapping of FILE to BYTE, then msync()s it
 *   daxtool now                            prints CLOCK_MONOTONIC in microseconds
 *   daxtool rand read|write FILE BS COUNT  COUNT preads/pwrites of BS bytes at BS-aligned
 *                                          offsets drawn from a fixed LCG over the file
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

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "now") == 0) return printf("%lld\n", now_us()) < 0;
  if (argc == 6 && strcmp(argv[1], "rand") == 0) return rand_io(strcmp(argv[2], "write") == 0, argv[3], atol(argv[4]), atol(argv[5]));
  if (argc == 3 && strcmp(argv[1], "isdax") == 0) return isdax(argv[2]);
  if (argc == 6 && strcmp(argv[1], "store") == 0) return store(argv[2], atol(argv[3]), atol(argv[4]), atoi(argv[5]));
  fprintf(stderr, "usage: daxtool isdax FILE | store FILE OFFSET LEN BYTE | now | rand read|write FILE BS COUNT\n");
  return 2;
}
