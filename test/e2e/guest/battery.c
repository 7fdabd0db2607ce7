/*
 * POSIX battery for the e2e tests (test/e2e/posix-battery.test.ts and
 * test/e2e/cache-coherence.test.ts). scripts/e2e/setup.sh compiles it with
 * `gcc -static -O2` into every guest initramfs as /bin/battery; the host side
 * of the tests runs the same static binary for its probes.
 *
 * Guest commands (run by test/e2e/guest/workload.sh on the virtio-fs share):
 *   battery run DIR [CHECK...]   numbered checks in DIR (created), each in a
 *                                child process with a time limit
 *   battery coherence DIR        host/guest cache coherence observations
 * Host commands (probes the host test runs on the shared directory):
 *   battery probe-flock FILE           "free" or "busy": flock(LOCK_EX|LOCK_NB)
 *   battery probe-posix FILE START LEN F_GETLK of a write lock: "unlocked" or
 *                                      "F_WRLCK|F_RDLCK START LEN"
 *   battery xattr-get FILE NAME        the value in hex, or the errno name
 *   battery xattr-list FILE            the user.* names, sorted, one per line
 *
 * Console protocol (same as workload.sh), one line each:
 *   E2E-OK <check>             E2E-FAIL <check> <reason>
 *   E2E-SUM <path> fnv32x2:<hash>   E2E-INFO <key> <value...>
 *
 * The guest asks the host for things (a lock probe, a rewrite of a file)
 * through files in SHARE/.e2e-host: it writes NAME.req (one line: a verb and
 * its arguments, paths relative to the share) and waits for NAME.reply,
 * which the test process (polling the share) writes.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define KiB 1024L
#define MiB (1024L * 1024L)
#define FUSE_SUPER_MAGIC 0x65735546

/* ---------------------------------------------------------------- output */

static void out(const char *fmt, ...) {
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n > (int)sizeof line - 2) n = sizeof line - 2;
  line[n++] = '\n';
  /* One write per line: lines from several processes do not interleave. */
  ssize_t r = write(1, line, n);
  (void)r;
}

static const char *en(int e) {
  const char *name = strerrorname_np(e);
  return name ? name : "E?";
}

/* The reason a check failed, printed after its name; one line. */
static char reason[2048];

static int failf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  for (char *p = reason; *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';
  return 1;
}

/* TRY(call): the call must not return a negative value. */
#define TRY(x)                                                           \
  do {                                                                   \
    errno = 0;                                                           \
    if ((long)(x) < 0) return failf("%s: %s", #x, en(errno));            \
  } while (0)
/* ERR(call, E): the call must fail with errno E. */
#define ERR(x, e)                                                        \
  do {                                                                   \
    errno = 0;                                                           \
    long r_ = (long)(x);                                                 \
    if (r_ >= 0) return failf("%s returned %ld, expected %s", #x, r_, en(e)); \
    if (errno != (e)) return failf("%s: %s, expected %s", #x, en(errno), en(e)); \
  } while (0)
/* EXPECT(cond, fmt, ...): else fail with the message. */
#define EXPECT(c, ...)                                                   \
  do {                                                                   \
    if (!(c)) return failf(__VA_ARGS__);                                 \
  } while (0)
/* SUB(call): a helper returning nonzero has set the reason already. */
#define SUB(x)                                                           \
  do {                                                                   \
    if (x) return 1;                                                     \
  } while (0)

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

/* ------------------------------------------------------------ file helpers */

static int write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) return -1;
    if (n == 0) { errno = EIO; return -1; }
    p += n;
    len -= n;
  }
  return 0;
}

static ssize_t read_full(int fd, void *buf, size_t len) {
  char *p = buf;
  size_t done = 0;
  while (done < len) {
    ssize_t n = read(fd, p + done, len - done);
    if (n < 0) return -1;
    if (n == 0) break;
    done += n;
  }
  return done;
}

/* put(path, text): create or truncate and write; fails the check on error. */
static int put_n(const char *path, const void *data, size_t len) {
  int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
  if (fd < 0) return failf("open(%s, O_CREAT|O_WRONLY|O_TRUNC): %s", path, en(errno));
  if (write_all(fd, data, len) < 0) { int e = errno; close(fd); return failf("write %s: %s", path, en(e)); }
  if (close(fd) < 0) return failf("close %s: %s", path, en(errno));
  return 0;
}
static int put(const char *path, const char *text) { return put_n(path, text, strlen(text)); }

/* Reads a whole (small) file into buf (NUL-terminated); length or -1. */
static ssize_t slurp(const char *path, char *buf, size_t cap) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  ssize_t n = read_full(fd, buf, cap - 1);
  int e = errno;
  close(fd);
  errno = e;
  if (n >= 0) buf[n] = 0;
  return n;
}

/* Printable excerpt of a (possibly binary) buffer, for failure messages. */
static const char *show(const char *data, size_t len) {
  static char bufs[4][200];
  static int which;
  char *o = bufs[which++ & 3];
  size_t j = 0;
  for (size_t i = 0; i < len && j < 180; i++) {
    unsigned char c = data[i];
    if (c >= 32 && c < 127 && c != '\\') o[j++] = c;
    else j += snprintf(o + j, 200 - j, "\\x%02x", c);
  }
  if (len * 4 > 180 && j >= 180) { o[j++] = '.'; o[j++] = '.'; }
  o[j] = 0;
  return o;
}

/* The file at path holds exactly len bytes of want. */
static int expect_content_n(const char *path, const char *want, size_t len) {
  static char got[256 * 1024];
  ssize_t n = slurp(path, got, sizeof got);
  if (n < 0) return failf("read %s: %s", path, en(errno));
  if ((size_t)n != len || memcmp(got, want, len) != 0)
    return failf("%s holds \"%s\" (%zd bytes), expected \"%s\" (%zu bytes)", path, show(got, n), n,
                 show(want, len), len);
  return 0;
}
static int expect_content(const char *path, const char *want) { return expect_content_n(path, want, strlen(want)); }

static int stat_of(const char *path, struct stat *st) {
  if (lstat(path, st) < 0) return failf("lstat(%s): %s", path, en(errno));
  return 0;
}

static void drop_caches(void) {
  if (getenv("BATTERY_NO_DROP_CACHES")) return; /* trying the battery out on a host */
  sync();
  int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
  if (fd >= 0) {
    ssize_t r = write(fd, "3", 1);
    (void)r;
    close(fd);
  }
}

/* ------------------------------------------------------------- fast hash */

/* "fnv32x2": two FNV-1a lanes over 32-bit little-endian words, even words
 * in lane 0, odd words in lane 1; printed as 16 hex digits (lane 0 first).
 * Under TCG it takes 0.2 s for 256 MiB where sha256 took 9.3 s (measured
 * in the 6.1 guest), and the host computes it in JavaScript with Math.imul. Every byte is also compared with the pattern,
 * so the hash only has to tell the host that the guest read what it wrote. */
static void fnv32x2_update(uint32_t h[2], const uint8_t *p, size_t len) { /* len: multiple of 8 */
  uint32_t a = h[0], b = h[1], w0, w1;
  for (size_t i = 0; i + 8 <= len; i += 8) {
    memcpy(&w0, p + i, 4);
    memcpy(&w1, p + i + 4, 4);
    a = (a ^ w0) * 16777619u;
    b = (b ^ w1) * 16777619u;
  }
  h[0] = a, h[1] = b;
}

/* --------------------------------------------------------- big-file pattern */

/* The big file: a 1 MiB block of xorshift32 words (seed 0x9e3779b9,
 * little endian), repeated, with the first 8 bytes of every 4 KiB page
 * replaced by the page's file offset (u64 little endian), so a misplaced
 * page is caught. test/e2e/posix-battery.test.ts regenerates it. */
static uint8_t *pattern_base(void) {
  static uint8_t *base;
  if (!base) {
    base = malloc(MiB);
    uint32_t x = 0x9e3779b9;
    for (size_t i = 0; i < MiB / 4; i++) {
      x ^= x << 13, x ^= x >> 17, x ^= x << 5;
      memcpy(base + 4 * i, &x, 4);
    }
  }
  return base;
}

static void pattern_chunk(uint8_t *buf, uint64_t offset) { /* offset: multiple of 1 MiB */
  memcpy(buf, pattern_base(), MiB);
  for (uint64_t page = 0; page < (uint64_t)MiB; page += 4096) {
    uint64_t at = offset + page;
    memcpy(buf + page, &at, 8);
  }
}

/* -------------------------------------------------------- host requests */

static char host_dir[600]; /* SHARE/.e2e-host */

/* Asks the host (the test process) to do `request`, waits up to timeout_ms
 * for its reply (newline stripped). 0, or a failure with the reason set. */
static int host_request(const char *name, const char *request, char *reply, size_t cap, long timeout_ms) {
  char req[700], tmp[700], rep[700];
  mkdir(host_dir, 0777);
  snprintf(req, sizeof req, "%s/%s.req", host_dir, name);
  snprintf(tmp, sizeof tmp, "%s/%s.req.tmp", host_dir, name);
  snprintf(rep, sizeof rep, "%s/%s.reply", host_dir, name);
  char line[1024];
  snprintf(line, sizeof line, "%s\n", request);
  SUB(put(tmp, line));
  if (rename(tmp, req) < 0) return failf("rename %s: %s", tmp, en(errno));
  long deadline = now_ms() + timeout_ms;
  for (;;) {
    ssize_t n = slurp(rep, reply, cap);
    if (n > 0 && reply[n - 1] == '\n') {
      reply[n - 1] = 0;
      return 0;
    }
    if (now_ms() > deadline)
      return failf("the host did not answer request '%s' within %ld ms (%s)", request, timeout_ms,
                   n < 0 ? en(errno) : "partial reply");
    sleep_ms(20);
  }
}

/* Path of a file in the current check's directory, relative to the share. */
static char share_root[512];
static char check_rel[512]; /* e.g. "battery/17-flock" */

/* Asks the host to run `battery VERB SHARE/<check dir>/FILE ARGS` and
 * expects `want`. A few tries, 300 ms apart: a lock the guest released may
 * take a moment to go on the host (FUSE_RELEASE is asynchronous). */
static int host_probe(const char *name, const char *verb, const char *file, const char *args, const char *want) {
  char request[700], reply[512], attempt[128];
  snprintf(request, sizeof request, "%s %s/%s%s%s", verb, check_rel, file, args ? " " : "", args ? args : "");
  for (int i = 1;; i++) {
    snprintf(attempt, sizeof attempt, "%s-%d", name, i);
    SUB(host_request(attempt, request, reply, sizeof reply, 20000));
    if (strcmp(reply, want) == 0) return 0;
    if (i == 5) break;
    sleep_ms(300);
  }
  return failf("host %s of %s answered \"%s\", expected \"%s\" (5 tries)", verb, file, reply, want);
}

/* ================================================================ checks */

static int c_create_rw(void) {
  int fd;
  TRY(fd = open("rw.txt", O_CREAT | O_WRONLY | O_TRUNC, 0644));
  EXPECT(write(fd, "hello world\n", 12) == 12, "short write");
  TRY(close(fd));
  SUB(expect_content("rw.txt", "hello world\n"));

  TRY(fd = open("rw.txt", O_WRONLY | O_APPEND));
  TRY(write_all(fd, "appended\n", 9));
  TRY(close(fd));
  SUB(expect_content("rw.txt", "hello world\nappended\n"));

  TRY(fd = open("rw.txt", O_RDWR));
  TRY(write_all(fd, "HELLO", 5)); /* overwrite at the start */
  char buf[64] = {0};
  TRY(lseek(fd, 6, SEEK_SET));
  EXPECT(read(fd, buf, 5) == 5 && memcmp(buf, "world", 5) == 0, "read after seek gave \"%s\"", show(buf, 5));
  TRY(close(fd));
  SUB(expect_content("rw.txt", "HELLO world\nappended\n"));

  TRY(truncate("rw.txt", 5));
  SUB(expect_content("rw.txt", "HELLO"));
  TRY(fd = open("rw.txt", O_RDWR));
  TRY(ftruncate(fd, 8192));
  struct stat st;
  TRY(fstat(fd, &st));
  EXPECT(st.st_size == 8192, "size after ftruncate(8192) is %lld", (long long)st.st_size);
  static char zeros[8192];
  char big[8192];
  EXPECT(pread(fd, big, 8192, 0) == 8192, "short read after extending");
  EXPECT(memcmp(big, "HELLO", 5) == 0 && memcmp(big + 5, zeros, 8187) == 0, "extended file is not HELLO + zeros");
  TRY(ftruncate(fd, 5));
  TRY(close(fd));
  /* O_TRUNC empties, O_APPEND after it appends at the new end. */
  TRY(fd = open("rw.txt", O_WRONLY | O_TRUNC | O_APPEND));
  TRY(fstat(fd, &st));
  EXPECT(st.st_size == 0, "size after O_TRUNC is %lld", (long long)st.st_size);
  TRY(write_all(fd, "final ", 6));
  TRY(write_all(fd, "content\n", 8));
  TRY(close(fd));
  SUB(expect_content("rw.txt", "final content\n"));
  /* Empty file. */
  TRY(fd = open("empty", O_CREAT | O_WRONLY, 0600));
  TRY(close(fd));
  SUB(stat_of("empty", &st));
  EXPECT(st.st_size == 0 && S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600, "empty file: size %lld mode %o",
         (long long)st.st_size, st.st_mode);
  return 0;
}

static int c_pread_pwrite(void) {
  enum { SIZE = (1 << 20) + 3 };
  static char model[SIZE], got[SIZE + 100];
  int fd;
  TRY(fd = open("pp.bin", O_CREAT | O_RDWR | O_TRUNC, 0644));
  for (int i = 0; i < 65536; i++) model[i] = (char)(i * 7 + 3);
  EXPECT(pwrite(fd, model, 65536, 0) == 65536, "pwrite 64 KiB at 0 short");
  struct { long off; const char *data; } writes[] = {
      {4092, "ABCDEFGH"},   /* straddles a page boundary */
      {65534, "tail"},      /* straddles the end: extends to 65538 */
      {1 << 20, "far"},     /* far past the end: a hole in between */
      {123457, "odd offset"},
      {0, "S"},
  };
  for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
    size_t len = strlen(writes[i].data);
    ssize_t n = pwrite(fd, writes[i].data, len, writes[i].off);
    EXPECT(n == (ssize_t)len, "pwrite(%zu bytes at %ld) returned %zd (%s)", len, writes[i].off, n, en(errno));
    memcpy(model + writes[i].off, writes[i].data, len);
  }
  /* pwrite/pread do not move the file offset. */
  EXPECT(lseek(fd, 0, SEEK_CUR) == 0, "file offset moved by pwrite");
  char b[16];
  EXPECT(pread(fd, b, 8, 4092) == 8 && memcmp(b, "ABCDEFGH", 8) == 0, "pread at 4092: \"%s\"", show(b, 8));
  EXPECT(pread(fd, b, 16, 500000) == 16 && memcmp(b, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16) == 0,
         "hole at 500000 reads \"%s\"", show(b, 16));
  EXPECT(pread(fd, b, 16, (1 << 20) + 1) == 2 && memcmp(b, "ar", 2) == 0, "short read at the end");
  EXPECT(pread(fd, b, 16, 2 << 20) == 0, "pread past EOF did not return 0");
  struct stat st;
  TRY(fstat(fd, &st));
  EXPECT(st.st_size == SIZE, "size %lld, expected %d", (long long)st.st_size, SIZE);
  TRY(close(fd));
  /* The whole file, read back past the page cache. */
  drop_caches();
  TRY(fd = open("pp.bin", O_RDONLY));
  ssize_t n = read_full(fd, got, sizeof got);
  TRY(close(fd));
  EXPECT(n == SIZE, "read back %zd bytes, expected %d", n, SIZE);
  for (long i = 0; i < SIZE; i++)
    EXPECT(got[i] == model[i], "byte %ld is 0x%02x, expected 0x%02x", i, (unsigned char)got[i], (unsigned char)model[i]);
  return 0;
}

static int c_mkdir_rmdir(void) {
  TRY(mkdir("a", 0755));
  TRY(mkdir("a/b", 0755));
  TRY(mkdir("a/b/c", 0700));
  TRY(mkdir("a/b/c/d", 0755));
  ERR(mkdir("a", 0755), EEXIST);
  ERR(mkdir("missing/x", 0755), ENOENT);
  ERR(rmdir("a"), ENOTEMPTY);
  ERR(rmdir("a/b/c"), ENOTEMPTY);
  SUB(put("a/b/c/file", "x"));
  ERR(rmdir("a/b/c/file"), ENOTDIR);
  ERR(mkdir("a/b/c/file/sub", 0755), ENOTDIR);
  ERR(unlink("a/b"), EISDIR);
  struct stat st;
  SUB(stat_of("a/b/c", &st));
  EXPECT(S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700, "a/b/c mode %o", st.st_mode);
  TRY(rmdir("a/b/c/d"));
  ERR(rmdir("a/b/c"), ENOTEMPTY); /* still has the file */
  TRY(unlink("a/b/c/file"));
  TRY(rmdir("a/b/c"));
  TRY(rmdir("a/b"));
  ERR(lstat("a/b", &st), ENOENT);
  /* Directory link counts: 2 + subdirectories. */
  TRY(mkdir("a/x", 0755));
  TRY(mkdir("a/y", 0755));
  SUB(stat_of("a", &st));
  EXPECT(st.st_nlink == 4, "a has st_nlink %lu with 2 subdirectories, expected 4", (unsigned long)st.st_nlink);
  TRY(rmdir("a/y"));
  SUB(stat_of("a", &st));
  EXPECT(st.st_nlink == 3, "a has st_nlink %lu with 1 subdirectory, expected 3", (unsigned long)st.st_nlink);
  return 0;
}

static int readdir_names(const char *dir, char seen[], int count, int *total, int *others) {
  DIR *d = opendir(dir);
  if (!d) return failf("opendir(%s): %s", dir, en(errno));
  struct dirent *e;
  *total = 0;
  *others = 0;
  memset(seen, 0, count);
  errno = 0;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    int i;
    char rest;
    if (sscanf(e->d_name, "entry-%d%c", &i, &rest) == 1 && i >= 0 && i < count) {
      if (seen[i]++) { closedir(d); return failf("%s listed twice", e->d_name); }
      if (e->d_type != DT_REG && e->d_type != DT_UNKNOWN) { closedir(d); return failf("%s has d_type %d", e->d_name, e->d_type); }
    } else {
      (*others)++;
    }
    (*total)++;
    errno = 0;
  }
  int err = errno;
  closedir(d);
  if (err) return failf("readdir(%s): %s", dir, en(err));
  return 0;
}

static int c_readdir_many(void) {
  enum { N = 1100, KEEP = 1000 };
  static char seen[N];
  char name[64];
  TRY(mkdir("dir", 0755));
  /* mknod: one FUSE request per empty file (open + close take four). */
  for (int i = 0; i < N; i++) {
    snprintf(name, sizeof name, "dir/entry-%04d", i);
    if (mknod(name, S_IFREG | 0644, 0) < 0) return failf("mknod(%s, S_IFREG): %s", name, en(errno));
  }
  int total, others;
  SUB(readdir_names("dir", seen, N, &total, &others));
  EXPECT(total == N && others == 0, "listed %d names (%d unexpected), expected %d", total, others, N);
  for (int i = KEEP; i < N; i++) {
    snprintf(name, sizeof name, "dir/entry-%04d", i);
    TRY(unlink(name));
  }
  SUB(readdir_names("dir", seen, N, &total, &others));
  EXPECT(total == KEEP && others == 0, "after removing %d: listed %d names (%d unexpected), expected %d", N - KEEP,
         total, others, KEEP);
  for (int i = 0; i < KEEP; i++) EXPECT(seen[i] == 1, "entry-%04d missing from the listing", i);
  /* Once more past the caches. */
  drop_caches();
  SUB(readdir_names("dir", seen, N, &total, &others));
  EXPECT(total == KEEP && others == 0, "after drop_caches: listed %d names, expected %d", total, KEEP);
  return 0;
}

static int c_rename(void) {
  struct stat st, st2;
  SUB(put("src", "source"));
  SUB(put("dst", "destination"));
  SUB(stat_of("src", &st));
  TRY(rename("src", "dst"));
  SUB(expect_content("dst", "source"));
  ERR(lstat("src", &st2), ENOENT);
  SUB(stat_of("dst", &st2));
  EXPECT(st.st_ino == st2.st_ino, "renamed file has inode %lu, was %lu", (unsigned long)st2.st_ino, (unsigned long)st.st_ino);
  /* Directory over an empty directory; over a non-empty one. */
  TRY(mkdir("d1", 0755));
  SUB(put("d1/inner", "inner"));
  TRY(mkdir("d2", 0755));
  TRY(rename("d1", "d2"));
  SUB(expect_content("d2/inner", "inner"));
  ERR(lstat("d1", &st2), ENOENT);
  TRY(mkdir("d3", 0755));
  ERR(rename("d3", "d2"), ENOTEMPTY);
  ERR(rename("dst", "d3"), EISDIR);
  ERR(rename("d3", "dst"), ENOTDIR);
  ERR(rename("d3", "d3/sub"), EINVAL);
  ERR(rename("nothing", "x"), ENOENT);
  /* Into another directory, with a new name. */
  TRY(rename("dst", "d2/moved"));
  SUB(expect_content("d2/moved", "source"));
  return 0;
}

static int renameat2_(const char *from, const char *to, unsigned flags) {
  return syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, flags);
}

static int c_renameat2(void) {
  SUB(put("x", "x-data"));
  SUB(put("y", "y-data"));
  errno = 0;
  if (renameat2_("x", "y", RENAME_NOREPLACE) == 0) return failf("RENAME_NOREPLACE replaced an existing file");
  if (errno == EINVAL) return failf("renameat2 RENAME_NOREPLACE: EINVAL (FUSE RENAME2 refused: daemon answered ENOSYS?)");
  EXPECT(errno == EEXIST, "renameat2(x, y, RENAME_NOREPLACE): %s, expected EEXIST", en(errno));
  SUB(expect_content("x", "x-data"));
  SUB(expect_content("y", "y-data"));
  TRY(renameat2_("x", "z", RENAME_NOREPLACE));
  struct stat st;
  ERR(lstat("x", &st), ENOENT);
  SUB(expect_content("z", "x-data"));
  TRY(renameat2_("z", "y", RENAME_EXCHANGE));
  SUB(expect_content("z", "y-data"));
  SUB(expect_content("y", "x-data"));
  ERR(renameat2_("z", "nowhere", RENAME_EXCHANGE), ENOENT);
  /* Exchange a file and a directory. */
  TRY(mkdir("dir", 0755));
  SUB(put("dir/in", "in"));
  TRY(renameat2_("dir", "z", RENAME_EXCHANGE));
  SUB(expect_content("z/in", "in"));
  SUB(expect_content("dir", "y-data"));
  return 0;
}

static int c_hardlink(void) {
  struct stat a, b;
  SUB(put("f", "linked"));
  TRY(link("f", "g"));
  TRY(link("f", "h"));
  SUB(stat_of("f", &a));
  SUB(stat_of("g", &b));
  EXPECT(a.st_nlink == 3 && b.st_nlink == 3, "st_nlink %lu/%lu after two links, expected 3", (unsigned long)a.st_nlink,
         (unsigned long)b.st_nlink);
  EXPECT(a.st_ino == b.st_ino, "link has inode %lu, original %lu", (unsigned long)b.st_ino, (unsigned long)a.st_ino);
  int fd;
  TRY(fd = open("g", O_WRONLY | O_APPEND));
  TRY(write_all(fd, "!", 1));
  TRY(close(fd));
  SUB(expect_content("f", "linked!"));
  SUB(expect_content("h", "linked!"));
  TRY(unlink("g"));
  SUB(stat_of("f", &a));
  EXPECT(a.st_nlink == 2, "st_nlink %lu after unlinking one of 3, expected 2", (unsigned long)a.st_nlink);
  TRY(fd = open("h", O_RDONLY));
  TRY(fstat(fd, &b));
  TRY(close(fd));
  EXPECT(b.st_nlink == 2 && b.st_ino == a.st_ino, "fstat of the other link: nlink %lu inode %lu",
         (unsigned long)b.st_nlink, (unsigned long)b.st_ino);
  ERR(link("f", "h"), EEXIST);
  ERR(link("missing", "m2"), ENOENT);
  TRY(mkdir("dir", 0755));
  ERR(link("dir", "dirlink"), EPERM);
  /* A link into a subdirectory. */
  TRY(link("f", "dir/f-again"));
  SUB(stat_of("f", &a));
  EXPECT(a.st_nlink == 3, "st_nlink %lu after linking into dir, expected 3", (unsigned long)a.st_nlink);
  TRY(unlink("dir/f-again"));
  return 0;
}

static int c_symlink(void) {
  char buf[4096];
  struct stat st;
  static const char *rel = "some/relative/../target";
  TRY(symlink(rel, "rel"));
  ssize_t n = readlink("rel", buf, sizeof buf);
  EXPECT(n == (ssize_t)strlen(rel) && memcmp(buf, rel, n) == 0, "readlink(rel) gave \"%s\"", show(buf, n < 0 ? 0 : n));
  SUB(stat_of("rel", &st));
  EXPECT(S_ISLNK(st.st_mode) && st.st_size == (off_t)strlen(rel), "lstat(rel): mode %o size %lld", st.st_mode,
         (long long)st.st_size);
  ERR(stat("rel", &st), ENOENT); /* dangling */
  TRY(symlink("/absolute/path/nowhere", "abs"));
  n = readlink("abs", buf, sizeof buf);
  EXPECT(n == 22 && memcmp(buf, "/absolute/path/nowhere", 22) == 0, "readlink(abs) gave \"%s\"", show(buf, n < 0 ? 0 : n));
  SUB(put("target.txt", "via the link"));
  TRY(symlink("target.txt", "good"));
  SUB(expect_content("good", "via the link"));
  TRY(stat("good", &st));
  EXPECT(S_ISREG(st.st_mode) && st.st_size == 12, "stat through the link: mode %o size %lld", st.st_mode,
         (long long)st.st_size);
  /* A long target (2000 bytes). */
  char longt[2001];
  for (int i = 0; i < 2000; i++) longt[i] = i % 50 == 49 ? '/' : 'a' + i % 26;
  longt[2000] = 0;
  TRY(symlink(longt, "long"));
  n = readlink("long", buf, sizeof buf);
  EXPECT(n == 2000 && memcmp(buf, longt, 2000) == 0, "readlink(long) gave %zd bytes", n);
  ERR(symlink("x", "good"), EEXIST);
  ERR(readlink("target.txt", buf, sizeof buf), EINVAL);
  /* A symlink to a directory, followed. */
  TRY(mkdir("dir", 0755));
  SUB(put("dir/in", "in dir"));
  TRY(symlink("dir", "dirlink"));
  SUB(expect_content("dirlink/in", "in dir"));
  return 0;
}

static int c_chmod_chown(void) {
  struct stat st;
  int fd;
  SUB(put("f", "owned"));
  TRY(chmod("f", 0751));
  SUB(stat_of("f", &st));
  EXPECT((st.st_mode & 07777) == 0751, "mode %o after chmod 0751", st.st_mode & 07777);
  TRY(chmod("f", 04755));
  SUB(stat_of("f", &st));
  EXPECT((st.st_mode & 07777) == 04755, "mode %o after chmod 04755", st.st_mode & 07777);
  TRY(fd = open("f", O_RDONLY));
  TRY(fchmod(fd, 0640));
  TRY(fstat(fd, &st));
  TRY(close(fd));
  EXPECT((st.st_mode & 07777) == 0640, "mode %o after fchmod 0640", st.st_mode & 07777);
  TRY(chown("f", 1000, 1000));
  SUB(stat_of("f", &st));
  EXPECT(st.st_uid == 1000 && st.st_gid == 1000, "owner %u:%u after chown 1000:1000", st.st_uid, st.st_gid);
  /* chown keeps the mode of a file without set-id bits. */
  EXPECT((st.st_mode & 07777) == 0640, "mode %o after chown, expected 0640", st.st_mode & 07777);
  TRY(mkdir("d", 0755));
  TRY(chown("d", 1000, 1000));
  SUB(put("g", "gid only"));
  TRY(chown("g", -1, 1234));
  SUB(stat_of("g", &st));
  EXPECT(st.st_uid == 0 && st.st_gid == 1234, "owner %u:%u after chown -1:1234", st.st_uid, st.st_gid);
  TRY(symlink("f", "sl"));
  TRY(lchown("sl", 1001, 1002));
  SUB(stat_of("sl", &st));
  EXPECT(st.st_uid == 1001 && st.st_gid == 1002, "symlink owner %u:%u after lchown 1001:1002", st.st_uid, st.st_gid);
  TRY(stat("sl", &st));
  EXPECT(st.st_uid == 1000, "lchown changed the target's owner to %u", st.st_uid);
  /* Files created by another uid belong to it. */
  pid_t pid = fork();
  if (pid == 0) {
    if (setgid(1000) < 0 || setuid(1000) < 0) _exit(2);
    int f = open("d/made-by-1000", O_CREAT | O_WRONLY, 0644);
    _exit(f < 0 ? 3 : 0);
  }
  int status;
  TRY(waitpid(pid, &status, 0));
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "uid 1000 could not create d/made-by-1000 (status %d)", status);
  SUB(stat_of("d/made-by-1000", &st));
  EXPECT(st.st_uid == 1000 && st.st_gid == 1000, "file created by uid 1000 is owned by %u:%u", st.st_uid, st.st_gid);
  return 0;
}

static int c_utimes(void) {
  struct stat st;
  SUB(put("fixed", "times"));
  struct timespec ts[2] = {{1000000000, 123456789}, {1234567890, 987654321}};
  TRY(utimensat(AT_FDCWD, "fixed", ts, 0));
  SUB(stat_of("fixed", &st));
  EXPECT(st.st_atim.tv_sec == 1000000000 && st.st_atim.tv_nsec == 123456789, "atime %ld.%09ld",
         (long)st.st_atim.tv_sec, st.st_atim.tv_nsec);
  EXPECT(st.st_mtim.tv_sec == 1234567890 && st.st_mtim.tv_nsec == 987654321, "mtime %ld.%09ld",
         (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
  /* utimes (microseconds). */
  SUB(put("micro", "times"));
  struct timeval tv[2] = {{1500000000, 500000}, {1600000000, 250000}};
  TRY(utimes("micro", tv));
  SUB(stat_of("micro", &st));
  EXPECT(st.st_mtim.tv_sec == 1600000000 && st.st_mtim.tv_nsec == 250000000, "utimes: mtime %ld.%09ld",
         (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
  EXPECT(st.st_atim.tv_sec == 1500000000 && st.st_atim.tv_nsec == 500000000, "utimes: atime %ld.%09ld",
         (long)st.st_atim.tv_sec, st.st_atim.tv_nsec);
  /* futimens: UTIME_OMIT keeps atime, mtime explicit. */
  int fd;
  TRY(fd = open("micro", O_RDWR));
  struct timespec ts2[2] = {{0, UTIME_OMIT}, {1700000000, 42}};
  TRY(futimens(fd, ts2));
  TRY(fstat(fd, &st));
  TRY(close(fd));
  EXPECT(st.st_atim.tv_sec == 1500000000 && st.st_atim.tv_nsec == 500000000, "UTIME_OMIT changed atime to %ld.%09ld",
         (long)st.st_atim.tv_sec, st.st_atim.tv_nsec);
  EXPECT(st.st_mtim.tv_sec == 1700000000 && st.st_mtim.tv_nsec == 42, "futimens: mtime %ld.%09ld",
         (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
  /* UTIME_NOW: close to the guest's clock (set from the host's at boot). */
  struct timespec now[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
  TRY(utimensat(AT_FDCWD, "micro", now, 0));
  SUB(stat_of("micro", &st));
  long skew = (long)(st.st_mtim.tv_sec - time(NULL));
  EXPECT(skew > -120 && skew < 120, "UTIME_NOW set mtime %ld, %ld s from the guest's clock", (long)st.st_mtim.tv_sec, skew);
  /* A directory, and a symlink itself (AT_SYMLINK_NOFOLLOW). */
  TRY(mkdir("d", 0755));
  struct timespec ts3[2] = {{1111111111, 1}, {1222222222, 2}};
  TRY(utimensat(AT_FDCWD, "d", ts3, 0));
  SUB(stat_of("d", &st));
  EXPECT(st.st_mtim.tv_sec == 1222222222 && st.st_mtim.tv_nsec == 2, "directory mtime %ld.%09ld",
         (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
  TRY(symlink("fixed", "sl"));
  TRY(utimensat(AT_FDCWD, "sl", ts3, AT_SYMLINK_NOFOLLOW));
  SUB(stat_of("sl", &st));
  EXPECT(st.st_mtim.tv_sec == 1222222222 && st.st_mtim.tv_nsec == 2, "symlink mtime %ld.%09ld after AT_SYMLINK_NOFOLLOW",
         (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
  SUB(stat_of("fixed", &st));
  EXPECT(st.st_mtim.tv_sec == 1234567890, "setting the symlink's times changed its target's mtime to %ld",
         (long)st.st_mtim.tv_sec);
  /* A write updates mtime to about now. */
  TRY(fd = open("fixed2", O_CREAT | O_WRONLY, 0644));
  TRY(futimens(fd, ts));
  TRY(write_all(fd, "x", 1));
  TRY(close(fd));
  SUB(stat_of("fixed2", &st));
  skew = (long)(st.st_mtim.tv_sec - time(NULL));
  EXPECT(skew > -120 && skew < 120, "a write left mtime at %ld (%ld s from now)", (long)st.st_mtim.tv_sec, skew);
  return 0;
}

static int c_statfs(void) {
  struct statfs s;
  struct statvfs v;
  TRY(statfs(share_root, &s));
  TRY(statvfs(".", &v));
  EXPECT(s.f_type == FUSE_SUPER_MAGIC, "f_type 0x%lx, expected FUSE_SUPER_MAGIC 0x%x", (long)s.f_type, FUSE_SUPER_MAGIC);
  EXPECT(s.f_bsize > 0 && s.f_blocks > 0, "f_bsize %ld f_blocks %llu", (long)s.f_bsize, (unsigned long long)s.f_blocks);
  EXPECT(s.f_bfree <= s.f_blocks && s.f_bavail <= s.f_bfree, "f_blocks %llu f_bfree %llu f_bavail %llu",
         (unsigned long long)s.f_blocks, (unsigned long long)s.f_bfree, (unsigned long long)s.f_bavail);
  EXPECT(s.f_ffree <= s.f_files, "f_files %llu f_ffree %llu", (unsigned long long)s.f_files, (unsigned long long)s.f_ffree);
  EXPECT(s.f_namelen == 255, "f_namelen %ld", (long)s.f_namelen);
  EXPECT(v.f_blocks == s.f_blocks && v.f_frsize > 0, "statvfs f_blocks %llu vs statfs %llu",
         (unsigned long long)v.f_blocks, (unsigned long long)s.f_blocks);
  /* The host compares the total size with its own statfs of the share. */
  out("E2E-INFO statfs total=%llu frsize=%lu bsize=%ld namelen=%ld files=%llu", (unsigned long long)v.f_blocks * v.f_frsize,
      v.f_frsize, (long)s.f_bsize, (long)s.f_namelen, (unsigned long long)s.f_files);
  /* (Free space is not compared before and after a write: the host's file
   * system is shared with everything else on the machine.) */
  return 0;
}

static int c_unlink_open(void) {
  int fd, fd2;
  struct stat st;
  char buf[64];
  TRY(fd = open("f", O_CREAT | O_RDWR | O_TRUNC, 0644));
  TRY(write_all(fd, "before", 6));
  TRY(fd2 = open("f", O_RDONLY));
  TRY(unlink("f"));
  ERR(lstat("f", &st), ENOENT);
  TRY(fstat(fd, &st));
  EXPECT(st.st_nlink == 0, "fstat after unlink: st_nlink %lu, expected 0", (unsigned long)st.st_nlink);
  EXPECT(st.st_size == 6, "fstat after unlink: size %lld", (long long)st.st_size);
  EXPECT(pwrite(fd, "after", 5, 6) == 5, "pwrite after unlink: %s", en(errno));
  memset(buf, 0, sizeof buf);
  EXPECT(pread(fd, buf, sizeof buf, 0) == 11 && !memcmp(buf, "beforeafter", 11), "pread after unlink: \"%s\"", show(buf, 11));
  EXPECT(pread(fd2, buf, sizeof buf, 0) == 11 && !memcmp(buf, "beforeafter", 11), "second fd reads \"%s\"", show(buf, 11));
  TRY(ftruncate(fd, 3));
  TRY(fstat(fd, &st));
  EXPECT(st.st_size == 3, "ftruncate after unlink: size %lld", (long long)st.st_size);
  /* The name is free again; the new file is a different one. */
  SUB(put("f", "new file"));
  EXPECT(pread(fd, buf, sizeof buf, 0) == 3 && !memcmp(buf, "bef", 3), "old fd reads \"%s\" after the name was reused",
         show(buf, 3));
  TRY(close(fd));
  /* The last fd, after the first closed. */
  EXPECT(pread(fd2, buf, sizeof buf, 0) == 3 && !memcmp(buf, "bef", 3), "last fd reads \"%s\"", show(buf, 3));
  TRY(fstat(fd2, &st));
  EXPECT(st.st_nlink == 0, "fstat of the last fd: st_nlink %lu", (unsigned long)st.st_nlink);
  TRY(close(fd2));
  SUB(expect_content("f", "new file"));
  /* An unlinked directory kept open: listing it is empty, creating fails. */
  TRY(mkdir("d", 0755));
  int dfd;
  TRY(dfd = open("d", O_RDONLY | O_DIRECTORY));
  TRY(rmdir("d"));
  ERR(openat(dfd, "x", O_CREAT | O_WRONLY, 0644), ENOENT);
  TRY(fstat(dfd, &st));
  EXPECT(st.st_nlink == 0 || st.st_nlink == 1, "removed directory has st_nlink %lu", (unsigned long)st.st_nlink);
  TRY(close(dfd));
  return 0;
}

static int c_o_excl(void) {
  int fd;
  SUB(put("exists", "x"));
  ERR(open("exists", O_CREAT | O_EXCL | O_WRONLY, 0644), EEXIST);
  TRY(symlink("nowhere", "dangling"));
  ERR(open("dangling", O_CREAT | O_EXCL | O_WRONLY, 0644), EEXIST);
  TRY(fd = open("new", O_CREAT | O_EXCL | O_WRONLY, 0600));
  TRY(close(fd));
  ERR(open("new", O_CREAT | O_EXCL | O_RDWR, 0600), EEXIST);
  TRY(mkdir("dir", 0755));
  ERR(open("dir", O_CREAT | O_EXCL | O_RDONLY, 0644), EEXIST);
  ERR(open("dir", O_WRONLY), EISDIR);
  ERR(open("missing", O_RDONLY), ENOENT);
  ERR(open("exists/sub", O_RDONLY), ENOTDIR);
  ERR(open("exists", O_RDONLY | O_DIRECTORY), ENOTDIR);
  /* O_CREAT without O_EXCL opens the existing file, unchanged. */
  TRY(fd = open("exists", O_CREAT | O_RDONLY, 0644));
  TRY(close(fd));
  SUB(expect_content("exists", "x"));
  return 0;
}

static int c_sparse_seek(void) {
  int fd;
  static char page[4096];
  memset(page, 0x77, sizeof page);
  TRY(fd = open("sparse", O_CREAT | O_RDWR | O_TRUNC, 0644));
  TRY(ftruncate(fd, 4 * MiB));
  EXPECT(pwrite(fd, page, 4096, 1 * MiB) == 4096, "pwrite at 1 MiB");
  EXPECT(pwrite(fd, page, 4096, 3 * MiB) == 4096, "pwrite at 3 MiB");
  TRY(fsync(fd));
  struct { long from; int whence; long want; } seeks[] = {
      {0, SEEK_DATA, 1 * MiB},
      {0, SEEK_HOLE, 0},
      {1 * MiB, SEEK_HOLE, 1 * MiB + 4096},
      {1 * MiB + 100, SEEK_DATA, 1 * MiB + 100},
      {1 * MiB + 4096, SEEK_DATA, 3 * MiB},
      {3 * MiB, SEEK_HOLE, 3 * MiB + 4096},
  };
  for (size_t i = 0; i < sizeof seeks / sizeof seeks[0]; i++) {
    errno = 0;
    off_t got = lseek(fd, seeks[i].from, seeks[i].whence);
    EXPECT(got == seeks[i].want, "lseek(%ld, %s) = %lld (%s), expected %ld%s", seeks[i].from,
           seeks[i].whence == SEEK_DATA ? "SEEK_DATA" : "SEEK_HOLE", (long long)got, got < 0 ? en(errno) : "ok",
           seeks[i].want, got == seeks[i].from && seeks[i].whence == SEEK_DATA ? " (no FUSE_LSEEK: whole file taken as data?)" : "");
  }
  ERR(lseek(fd, 3 * MiB + 4096, SEEK_DATA), ENXIO);
  ERR(lseek(fd, 5 * MiB, SEEK_DATA), ENXIO);
  ERR(lseek(fd, 5 * MiB, SEEK_HOLE), ENXIO);
  struct stat st;
  TRY(fstat(fd, &st));
  EXPECT(st.st_size == 4 * MiB, "size %lld", (long long)st.st_size);
  EXPECT(st.st_blocks * 512 < 1 * MiB, "st_blocks %lld: a 4 MiB file with 8 KiB of data is not sparse", (long long)st.st_blocks);
  char buf[4096];
  EXPECT(pread(fd, buf, 4096, 2 * MiB) == 4096 && buf[0] == 0 && !memcmp(buf, buf + 1, 4095), "hole does not read as zeros");
  TRY(close(fd));
  return 0;
}

static int c_fallocate(void) {
  int fd;
  struct stat st;
  TRY(fd = open("falloc", O_CREAT | O_RDWR | O_TRUNC, 0644));
  TRY(fallocate(fd, 0, 0, 1 * MiB));
  TRY(fstat(fd, &st));
  EXPECT(st.st_size == 1 * MiB, "size %lld after fallocate(0, 1 MiB)", (long long)st.st_size);
  EXPECT(st.st_blocks * 512 >= 1 * MiB, "st_blocks %lld after fallocate of 1 MiB", (long long)st.st_blocks);
  TRY(fallocate(fd, FALLOC_FL_KEEP_SIZE, 1 * MiB, 1 * MiB));
  TRY(fstat(fd, &st));
  EXPECT(st.st_size == 1 * MiB, "size %lld after FALLOC_FL_KEEP_SIZE beyond the end", (long long)st.st_size);
  EXPECT(st.st_blocks * 512 >= 2 * MiB, "st_blocks %lld after FALLOC_FL_KEEP_SIZE of another MiB", (long long)st.st_blocks);
  static char data[MiB];
  memset(data, 0xaa, sizeof data);
  EXPECT(pwrite(fd, data, MiB, 0) == MiB, "pwrite 1 MiB");
  TRY(fsync(fd));
  blkcnt_t before = st.st_blocks;
  TRY(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 256 * KiB, 256 * KiB));
  TRY(fstat(fd, &st));
  EXPECT(st.st_size == 1 * MiB, "size %lld after punching a hole", (long long)st.st_size);
  EXPECT(st.st_blocks * 512 <= (before * 512) - 256 * KiB, "st_blocks %lld after punching 256 KiB, was %lld",
         (long long)st.st_blocks, (long long)before);
  static char got[MiB];
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 1) { TRY(close(fd)); drop_caches(); TRY(fd = open("falloc", O_RDONLY)); }
    EXPECT(pread(fd, got, MiB, 0) == MiB, "pread 1 MiB");
    for (long i = 0; i < MiB; i++) {
      char want = i >= 256 * KiB && i < 512 * KiB ? 0 : (char)0xaa;
      EXPECT(got[i] == want, "%s: byte %ld is 0x%02x after punching [256 KiB, 512 KiB)",
             pass ? "after drop_caches" : "same fd", i, (unsigned char)got[i]);
    }
  }
  TRY(close(fd));
  /* Growing with fallocate mode 0 past the end. */
  TRY(fd = open("grow", O_CREAT | O_RDWR | O_TRUNC, 0644));
  TRY(write_all(fd, "abc", 3));
  TRY(fallocate(fd, 0, 100, 1000));
  TRY(fstat(fd, &st));
  EXPECT(st.st_size == 1100, "size %lld after fallocate(100, 1000) of a 3-byte file", (long long)st.st_size);
  TRY(close(fd));
  return 0;
}

static int xattr_value(const char *path, const char *name, const char *want, size_t wlen) {
  char buf[8192];
  ssize_t n = getxattr(path, name, NULL, 0);
  EXPECT(n == (ssize_t)wlen, "getxattr(%s, %s) size probe: %zd (%s), expected %zu", path, name, n, n < 0 ? en(errno) : "ok", wlen);
  n = getxattr(path, name, buf, sizeof buf);
  EXPECT(n == (ssize_t)wlen && memcmp(buf, want, wlen) == 0, "getxattr(%s, %s) = \"%s\" (%zd)", path, name,
         show(buf, n < 0 ? 0 : n), n);
  return 0;
}

static int c_xattr(void) {
  char buf[8192];
  SUB(put("f", "with xattrs"));
  errno = 0;
  if (setxattr("f", "user.test", "value1", 6, XATTR_CREATE) < 0)
    return failf("setxattr(user.test): %s%s", en(errno), errno == EOPNOTSUPP ? " (xattrs not enabled in the daemon?)" : "");
  ERR(setxattr("f", "user.test", "other", 5, XATTR_CREATE), EEXIST);
  ERR(setxattr("f", "user.none", "v", 1, XATTR_REPLACE), ENODATA);
  SUB(xattr_value("f", "user.test", "value1", 6));
  ERR(getxattr("f", "user.test", buf, 2), ERANGE);
  ERR(getxattr("f", "user.missing", buf, sizeof buf), ENODATA);
  ERR(getxattr("f", "user.missing", NULL, 0), ENODATA);
  TRY(setxattr("f", "user.test", "replaced", 8, XATTR_REPLACE));
  SUB(xattr_value("f", "user.test", "replaced", 8));
  TRY(setxattr("f", "user.test", "value1", 6, 0));
  TRY(setxattr("f", "user.bin", "a\0b\xff", 4, 0));
  SUB(xattr_value("f", "user.bin", "a\0b\xff", 4));
  TRY(setxattr("f", "user.empty", "", 0, 0));
  SUB(xattr_value("f", "user.empty", "", 0));
  static char large[3000];
  for (int i = 0; i < 3000; i++) large[i] = 'A' + i % 23;
  TRY(setxattr("f", "user.large", large, sizeof large, 0));
  SUB(xattr_value("f", "user.large", large, sizeof large));
  TRY(setxattr("f", "user.second", "2", 1, 0));
  /* listxattr: size probe, then the names. */
  ssize_t n = listxattr("f", NULL, 0);
  EXPECT(n > 0, "listxattr size probe: %zd (%s)", n, n < 0 ? en(errno) : "ok");
  ssize_t m = listxattr("f", buf, sizeof buf);
  EXPECT(m == n, "listxattr returned %zd bytes, the size probe %zd", m, n);
  ERR(listxattr("f", buf, 3), ERANGE);
  const char *want[] = {"user.test", "user.bin", "user.empty", "user.large", "user.second"};
  int found = 0, user = 0;
  for (char *p = buf; p < buf + m; p += strlen(p) + 1) {
    if (strncmp(p, "user.", 5) == 0) user++;
    for (int i = 0; i < 5; i++)
      if (!strcmp(p, want[i])) found |= 1 << i;
  }
  EXPECT(found == 31 && user == 5, "listxattr gave \"%s\"", show(buf, m));
  TRY(removexattr("f", "user.second"));
  ERR(getxattr("f", "user.second", buf, sizeof buf), ENODATA);
  ERR(removexattr("f", "user.second"), ENODATA);
  /* On a directory, and through a file descriptor. */
  TRY(mkdir("d", 0755));
  TRY(setxattr("d", "user.dir", "on a dir", 8, 0));
  SUB(xattr_value("d", "user.dir", "on a dir", 8));
  int fd;
  TRY(fd = open("f", O_RDONLY));
  TRY(fsetxattr(fd, "user.viafd", "fd", 2, 0));
  n = fgetxattr(fd, "user.viafd", buf, sizeof buf);
  EXPECT(n == 2 && !memcmp(buf, "fd", 2), "fgetxattr(user.viafd) = %zd", n);
  TRY(fremovexattr(fd, "user.viafd"));
  TRY(close(fd));
  /* user.* is not allowed on symlinks (the VFS says EPERM). */
  TRY(symlink("f", "sl"));
  ERR(lsetxattr("sl", "user.x", "v", 1, 0), EPERM);
  return 0;
}

static int c_flock(void) {
  int fd1, fd2;
  SUB(put("locked", "flock target"));
  TRY(fd1 = open("locked", O_RDWR));
  TRY(fd2 = open("locked", O_RDONLY));
  TRY(flock(fd1, LOCK_EX | LOCK_NB));
  ERR(flock(fd2, LOCK_EX | LOCK_NB), EWOULDBLOCK);
  ERR(flock(fd2, LOCK_SH | LOCK_NB), EWOULDBLOCK);
  /* The lock is taken on the host too, where another process sees it. */
  SUB(host_probe("flock-held", "probe-flock", "locked", NULL, "busy"));
  /* Another process (its own open file description) conflicts as well. */
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open("locked", O_RDONLY);
    _exit(fd < 0 ? 2 : flock(fd, LOCK_EX | LOCK_NB) == 0 ? 3 : errno == EWOULDBLOCK ? 0 : 4);
  }
  int status;
  TRY(waitpid(pid, &status, 0));
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a child's flock(LOCK_EX|LOCK_NB) did not fail with EWOULDBLOCK (status %d)",
         status);
  /* LOCK_NB: the kernel sends a plain LOCK_UN as a blocking request
   * (FUSE_SETLKW); 18-flock-blocking covers that. */
  TRY(flock(fd1, LOCK_UN | LOCK_NB));
  TRY(flock(fd2, LOCK_SH | LOCK_NB));
  TRY(flock(fd1, LOCK_SH | LOCK_NB));
  ERR(flock(fd1, LOCK_EX | LOCK_NB), EWOULDBLOCK); /* fd2 shares it */
  TRY(close(fd2));                                 /* drops fd2's lock */
  TRY(flock(fd1, LOCK_EX | LOCK_NB));
  TRY(close(fd1)); /* drops fd1's lock, on the host too */
  SUB(host_probe("flock-released", "probe-flock", "locked", NULL, "free"));
  return 0;
}

/* Blocking flock: a plain LOCK_UN, and LOCK_EX waiting for the holder. */
static int c_flock_blocking(void) {
  int fd1, fd2;
  SUB(put("locked", "flock target"));
  TRY(fd1 = open("locked", O_RDWR));
  TRY(fd2 = open("locked", O_RDWR));
  TRY(flock(fd1, LOCK_EX)); /* uncontended */
  TRY(flock(fd1, LOCK_UN));
  TRY(flock(fd1, LOCK_EX));
  pid_t pid = fork();
  if (pid == 0) {
    sleep_ms(500);
    _exit(flock(fd1, LOCK_UN) < 0 ? 1 : 0); /* the child shares fd1's open file description */
  }
  long t0 = now_ms();
  TRY(flock(fd2, LOCK_EX));
  long waited = now_ms() - t0;
  int status;
  TRY(waitpid(pid, &status, 0));
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child could not unlock");
  EXPECT(waited >= 300, "flock(LOCK_EX) returned after %ld ms while the lock was held for 500 ms", waited);
  TRY(close(fd1));
  TRY(close(fd2));
  return 0;
}

static int getlk(int fd, int cmd, short type, off_t start, off_t len, struct flock *l) {
  memset(l, 0, sizeof *l);
  l->l_type = type;
  l->l_whence = SEEK_SET;
  l->l_start = start;
  l->l_len = len;
  return fcntl(fd, cmd, l);
}

static int lk(int fd, int cmd, short type, off_t start, off_t len) {
  struct flock l;
  return getlk(fd, cmd, type, start, len, &l);
}

static int c_fcntl_locks(void) {
  int fd1, fd2, fd3;
  struct flock l;
  static char zeros[1000];
  SUB(put_n("locked", zeros, sizeof zeros));
  TRY(fd1 = open("locked", O_RDWR));
  TRY(fd2 = open("locked", O_RDWR));
  /* OFD locks: two open file descriptions conflict, even in one process. */
  errno = 0;
  if (lk(fd1, F_OFD_SETLK, F_WRLCK, 0, 100) < 0) return failf("F_OFD_SETLK write [0,100): %s", en(errno));
  ERR(lk(fd2, F_OFD_SETLK, F_WRLCK, 50, 100), EAGAIN);
  ERR(lk(fd2, F_OFD_SETLK, F_RDLCK, 99, 1), EAGAIN);
  TRY(getlk(fd2, F_OFD_GETLK, F_RDLCK, 50, 10, &l));
  EXPECT(l.l_type == F_WRLCK && l.l_start == 0 && l.l_len == 100, "F_OFD_GETLK [50,60): type %d start %lld len %lld, expected F_WRLCK 0 100",
         l.l_type, (long long)l.l_start, (long long)l.l_len);
  out("E2E-INFO fcntl-locks F_OFD_GETLK l_pid=%d", l.l_pid);
  TRY(lk(fd2, F_OFD_SETLK, F_RDLCK, 100, 100)); /* adjacent: no conflict */
  TRY(getlk(fd1, F_OFD_GETLK, F_WRLCK, 150, 10, &l));
  EXPECT(l.l_type == F_RDLCK && l.l_start == 100 && l.l_len == 100, "F_OFD_GETLK [150,160): type %d start %lld len %lld, expected F_RDLCK 100 100",
         l.l_type, (long long)l.l_start, (long long)l.l_len);
  TRY(getlk(fd1, F_OFD_GETLK, F_WRLCK, 300, 10, &l));
  EXPECT(l.l_type == F_UNLCK, "F_OFD_GETLK of a free range: type %d, expected F_UNLCK", l.l_type);
  /* The write lock is taken on the host too. */
  SUB(host_probe("posix-held", "probe-posix", "locked", "0 100", "F_WRLCK 0 100"));
  TRY(lk(fd1, F_OFD_SETLK, F_UNLCK, 0, 100));
  TRY(lk(fd2, F_OFD_SETLK, F_WRLCK, 0, 50));
  /* Classic POSIX locks between processes; they conflict with OFD locks. */
  TRY(fd3 = open("locked", O_RDWR));
  TRY(lk(fd3, F_SETLK, F_WRLCK, 500, 100));
  ERR(lk(fd3, F_SETLK, F_WRLCK, 0, 10), EAGAIN); /* fd2's OFD lock */
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open("locked", O_RDWR);
    struct flock c;
    if (fd < 0 || getlk(fd, F_GETLK, F_RDLCK, 550, 10, &c) < 0) _exit(2);
    if (c.l_type != F_WRLCK || c.l_start != 500 || c.l_len != 100) _exit(3);
    out("E2E-INFO fcntl-locks F_GETLK l_pid=%d (locker %d)", c.l_pid, (int)parent);
    if (lk(fd, F_SETLK, F_WRLCK, 590, 20) == 0) _exit(4);
    if (errno != EAGAIN && errno != EACCES) _exit(5);
    if (lk(fd, F_SETLK, F_WRLCK, 700, 20) < 0) _exit(6);
    _exit(0);
  }
  int status;
  TRY(waitpid(pid, &status, 0));
  static const char *what[] = {"", "", "F_GETLK failed", "F_GETLK did not report the parent's write lock [500,600)",
                               "F_SETLK of a locked range succeeded", "F_SETLK of a locked range: wrong errno",
                               "F_SETLK of a free range failed"};
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: %s (status %d)",
         WIFEXITED(status) && WEXITSTATUS(status) < 7 ? what[WEXITSTATUS(status)] : "crashed", status);
  /* Closing any fd of a process drops its POSIX locks; the child's went at exit. */
  TRY(close(fd3));
  TRY(getlk(fd1, F_OFD_GETLK, F_WRLCK, 500, 300, &l));
  EXPECT(l.l_type == F_UNLCK, "POSIX locks survived close/exit: type %d start %lld", l.l_type, (long long)l.l_start);
  /* Unlocked explicitly (20-ofd-close covers a close that drops them). */
  TRY(lk(fd2, F_OFD_SETLK, F_UNLCK, 0, 0));
  TRY(getlk(fd1, F_OFD_GETLK, F_WRLCK, 0, 0, &l));
  EXPECT(l.l_type == F_UNLCK, "after unlocking: F_OFD_GETLK type %d start %lld", l.l_type, (long long)l.l_start);
  TRY(close(fd1));
  TRY(close(fd2));
  SUB(host_probe("posix-released", "probe-posix", "locked", "0 1000", "unlocked"));
  return 0;
}

/* Closing the last fd of an open file description drops its OFD locks:
 * another one can lock the file afterwards, in the guest and on the host. */
static int c_ofd_close(void) {
  int fd, fd2;
  SUB(put("locked", "ofd close"));
  TRY(fd = open("locked", O_RDWR));
  TRY(lk(fd, F_OFD_SETLK, F_WRLCK, 0, 0));
  TRY(fd2 = open("locked", O_RDWR));
  ERR(lk(fd2, F_OFD_SETLK, F_WRLCK, 0, 0), EAGAIN);
  TRY(close(fd));
  /* FUSE_RELEASE is asynchronous: allow it a moment. */
  long t0 = now_ms();
  while (lk(fd2, F_OFD_SETLK, F_WRLCK, 0, 0) < 0) {
    EXPECT(errno == EAGAIN, "F_OFD_SETLK after the holder closed: %s", en(errno));
    EXPECT(now_ms() - t0 < 3000, "the write lock of a closed open file description still blocks F_OFD_SETLK after 3 s");
    sleep_ms(50);
  }
  TRY(lk(fd2, F_OFD_SETLK, F_UNLCK, 0, 0));
  TRY(close(fd2));
  SUB(host_probe("ofd-closed", "probe-posix", "locked", "0 0", "unlocked"));
  return 0;
}

/* Blocking locks: F_OFD_SETLKW waits until the holder lets go. */
static int c_fcntl_setlkw(void) {
  int fd1, fd2;
  SUB(put("locked", "blocking"));
  TRY(fd1 = open("locked", O_RDWR));
  TRY(fd2 = open("locked", O_RDWR));
  TRY(lk(fd1, F_OFD_SETLKW, F_WRLCK, 0, 0)); /* uncontended */
  pid_t pid = fork();
  if (pid == 0) {
    sleep_ms(500);
    _exit(lk(fd1, F_OFD_SETLK, F_UNLCK, 0, 0) < 0 ? 1 : 0); /* fd1's OFD is shared with the child */
  }
  long t0 = now_ms();
  TRY(lk(fd2, F_OFD_SETLKW, F_WRLCK, 0, 0));
  long waited = now_ms() - t0;
  int status;
  TRY(waitpid(pid, &status, 0));
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child could not unlock");
  EXPECT(waited >= 300, "F_OFD_SETLKW returned after %ld ms while the lock was held for 500 ms", waited);
  TRY(close(fd1));
  TRY(close(fd2));
  return 0;
}

static int c_mkfifo(void) {
  struct stat st;
  TRY(mkfifo("fifo", 0640));
  SUB(stat_of("fifo", &st));
  EXPECT(S_ISFIFO(st.st_mode) && (st.st_mode & 07777) == 0640, "fifo: mode %o", st.st_mode);
  ERR(mkfifo("fifo", 0640), EEXIST);
  TRY(mknod("fifo2", S_IFIFO | 0600, 0));
  SUB(stat_of("fifo2", &st));
  EXPECT(S_ISFIFO(st.st_mode), "mknod S_IFIFO: mode %o", st.st_mode);
  TRY(unlink("fifo2"));
  /* Opening a FIFO on virtio-fs: only reported (a daemon may refuse it). */
  errno = 0;
  int fd = open("fifo", O_RDONLY | O_NONBLOCK);
  out("E2E-INFO mkfifo open(O_RDONLY|O_NONBLOCK): %s", fd < 0 ? en(errno) : "ok");
  if (fd >= 0) close(fd);
  return 0;
}

#define BIG_BYTES (256 * MiB)

static int c_big_file(void) {
  uint8_t *buf = malloc(4 * MiB), *want = malloc(MiB);
  int fd;
  long t0 = now_ms();
  TRY(fd = open("big.bin", O_CREAT | O_WRONLY | O_TRUNC, 0644));
  for (long off = 0; off < BIG_BYTES; off += 4 * MiB) {
    for (int i = 0; i < 4; i++) pattern_chunk(buf + i * MiB, off + i * MiB);
    if (write_all(fd, buf, 4 * MiB) < 0) return failf("write at %ld: %s", off, en(errno));
  }
  TRY(fsync(fd));
  TRY(close(fd));
  long t1 = now_ms();
  drop_caches();
  long t2 = now_ms();
  uint32_t hash[2] = {2166136261u, 2166136261u};
  TRY(fd = open("big.bin", O_RDONLY));
  long off = 0, t_read = 0, t_hash = 0;
  for (;;) {
    long ta = now_ms();
    ssize_t n = read_full(fd, buf, 4 * MiB);
    if (n < 0) return failf("read at %ld: %s", off, en(errno));
    if (n == 0) break;
    long tb = now_ms();
    if (n % 8) return failf("read at %ld returned %zd bytes, not a multiple of 8", off, n);
    fnv32x2_update(hash, buf, n);
    t_read += tb - ta;
    t_hash += now_ms() - tb;
    for (ssize_t at = 0; at < n; at += MiB) {
      pattern_chunk(want, off + at);
      size_t len = n - at < MiB ? n - at : MiB;
      if (memcmp(buf + at, want, len) != 0) {
        size_t i = 0;
        while (buf[at + i] == want[i]) i++;
        return failf("read back: byte %ld differs (0x%02x, expected 0x%02x)", off + at + (long)i, buf[at + i], want[i]);
      }
    }
    off += n;
  }
  TRY(close(fd));
  long t3 = now_ms();
  EXPECT(off == BIG_BYTES, "read back %ld bytes, expected %ld", off, (long)BIG_BYTES);
  out("E2E-SUM %s/big.bin fnv32x2:%08x%08x", check_rel, hash[0], hash[1]);
  out("E2E-INFO big-file write+fsync %ld ms, read+verify+hash %ld ms (read %ld, hash %ld) (256 MiB)", t1 - t0,
      t3 - t2, t_read, t_hash);
  return 0;
}

static int small_body(int i, char *body, size_t cap) {
  return snprintf(body, cap, "small file %d %.*s\n", i, i % 40, "........................................");
}

/* Creates (phase 0) or reads back and compares (phase 1) files [from, to). */
static int small_files(int phase, int from, int to) {
  char name[64], body[128], got[256];
  for (int i = from; i < to; i++) {
    snprintf(name, sizeof name, "small/f-%04d", i);
    int len = small_body(i, body, sizeof body);
    if (phase == 0) {
      int fd;
      TRY(fd = open(name, O_CREAT | O_EXCL | O_WRONLY, 0644));
      TRY(write_all(fd, body, len));
      TRY(close(fd));
    } else {
      ssize_t n = slurp(name, got, sizeof got);
      EXPECT(n == len && !memcmp(got, body, len), "%s holds \"%s\" (%s)", name, show(got, n < 0 ? 0 : n), n < 0 ? en(errno) : "ok");
    }
  }
  return 0;
}

/* Runs small_files in two processes (one per vCPU), half the files each. */
static int small_files_parallel(int phase, int count) {
  pid_t pids[2];
  for (int w = 0; w < 2; w++) {
    pids[w] = fork();
    if (pids[w] == 0) {
      reason[0] = 0;
      if (small_files(phase, w * count / 2, (w + 1) * count / 2) == 0) _exit(0);
      out("E2E-INFO many-files worker %d: %s", w, reason);
      _exit(1);
    }
    if (pids[w] < 0) return failf("fork: %s", en(errno));
  }
  int bad = 0;
  for (int w = 0; w < 2; w++) {
    int status;
    if (waitpid(pids[w], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) bad |= 1 << w;
  }
  EXPECT(!bad, "%s failed in worker(s) 0x%x (see the E2E-INFO many-files lines)", phase ? "reading back" : "creating", bad);
  return 0;
}

static int c_many_files(void) {
  enum { N = 2000 };
  long t0 = now_ms();
  TRY(mkdir("small", 0755));
  SUB(small_files_parallel(0, N));
  long t1 = now_ms();
  drop_caches();
  SUB(small_files_parallel(1, N));
  DIR *d = opendir("small");
  EXPECT(d, "opendir: %s", en(errno));
  int count = 0;
  struct dirent *e;
  while ((e = readdir(d))) count += e->d_name[0] != '.';
  closedir(d);
  EXPECT(count == N, "small/ lists %d files, expected %d", count, N);
  out("E2E-INFO many-files create %ld ms, read back %ld ms (%d files, 2 processes)", t1 - t0, now_ms() - t1, N);
  return 0;
}

static const char *const UNICODE_NAMES[] = {
    "héllo wörld.txt", "日本語のファイル名.txt", "emoji 🎉🚀 name", " leading space", "trailing space ",
    "multiple   spaces  inside", "tab\there", "quote's \"double\"", "Ωμέγα", "a-name-of-exactly-255-bytes",
};

static int c_unicode_names(void) {
  char long255[256];
  memset(long255, 'n', 255);
  long255[255] = 0;
  int n = sizeof UNICODE_NAMES / sizeof UNICODE_NAMES[0];
  for (int i = 0; i < n; i++) {
    const char *name = i == n - 1 ? long255 : UNICODE_NAMES[i];
    SUB(put(name, i == n - 1 ? "long" : name));
  }
  /* 256 bytes is one too many. */
  char long256[257];
  memset(long256, 'n', 256);
  long256[256] = 0;
  ERR(open(long256, O_CREAT | O_WRONLY, 0644), ENAMETOOLONG);
  TRY(mkdir("dïr with spaces", 0755));
  SUB(put("dïr with spaces/ファイル", "nested"));
  TRY(rename("Ωμέγα", "Ωμέγα renamed ✓"));
  int found = 0, total = 0;
  DIR *d = opendir(".");
  EXPECT(d, "opendir: %s", en(errno));
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    total++;
    for (int i = 0; i < n; i++) {
      const char *name = i == n - 1 ? long255 : i == 8 ? "Ωμέγα renamed ✓" : UNICODE_NAMES[i];
      if (!strcmp(e->d_name, name)) found |= 1 << i;
    }
  }
  closedir(d);
  EXPECT(found == (1 << n) - 1 && total == n + 1, "listing found mask 0x%x of 0x%x, %d entries", found, (1 << n) - 1, total);
  for (int i = 0; i < n - 1; i++)
    if (i != 8) SUB(expect_content(UNICODE_NAMES[i], UNICODE_NAMES[i]));
  SUB(expect_content("dïr with spaces/ファイル", "nested"));
  return 0;
}

static int c_fsync(void) {
  int fd;
  static char data[64 * KiB];
  memset(data, 'f', sizeof data);
  TRY(fd = open("synced", O_CREAT | O_WRONLY | O_TRUNC, 0644));
  TRY(write_all(fd, data, sizeof data));
  TRY(fsync(fd));
  TRY(write_all(fd, data, sizeof data));
  TRY(fdatasync(fd));
  TRY(syncfs(fd));
  TRY(close(fd));
  TRY(fd = open("osync", O_CREAT | O_WRONLY | O_TRUNC | O_SYNC, 0644));
  TRY(write_all(fd, "O_SYNC\n", 7));
  TRY(close(fd));
  TRY(fd = open("odsync", O_CREAT | O_WRONLY | O_TRUNC | O_DSYNC, 0644));
  TRY(write_all(fd, "O_DSYNC\n", 8));
  TRY(close(fd));
  int dfd;
  TRY(dfd = open(".", O_RDONLY | O_DIRECTORY));
  TRY(fsync(dfd));
  TRY(close(dfd));
  struct stat st;
  SUB(stat_of("synced", &st));
  EXPECT(st.st_size == 128 * KiB, "size %lld after two 64 KiB writes", (long long)st.st_size);
  return 0;
}

static int c_copy_file_range(void) {
  enum { SIZE = MiB + 123 };
  static char src[SIZE], got[SIZE];
  for (int i = 0; i < SIZE; i++) src[i] = (char)(i * 31 + (i >> 12));
  SUB(put_n("src", src, SIZE));
  int in, outfd;
  TRY(in = open("src", O_RDONLY));
  TRY(outfd = open("dst", O_CREAT | O_RDWR | O_TRUNC, 0644));
  loff_t off_in = 100, off_out = 0;
  size_t left = 500000;
  while (left > 0) {
    ssize_t n = copy_file_range(in, &off_in, outfd, &off_out, left, 0);
    if (n < 0) return failf("copy_file_range: %s", en(errno));
    if (n == 0) return failf("copy_file_range returned 0 with %zu bytes left", left);
    left -= n;
  }
  EXPECT(off_in == 500100 && off_out == 500000, "offsets after the copy: in %lld out %lld", (long long)off_in, (long long)off_out);
  /* Into the middle of an existing file. */
  off_in = 0;
  off_out = 1000;
  ssize_t n = copy_file_range(in, &off_in, outfd, &off_out, 10, 0);
  EXPECT(n == 10, "second copy_file_range: %zd (%s)", n, n < 0 ? en(errno) : "short");
  TRY(close(in));
  TRY(close(outfd));
  drop_caches();
  ssize_t len = slurp("dst", got, sizeof got);
  EXPECT(len == 500000, "dst has %zd bytes, expected 500000", len);
  for (long i = 0; i < 500000; i++) {
    char want = i >= 1000 && i < 1010 ? src[i - 1000] : src[100 + i];
    EXPECT(got[i] == want, "dst byte %ld is 0x%02x, expected 0x%02x", i, (unsigned char)got[i], (unsigned char)want);
  }
  return 0;
}

static int c_mmap_shared(void) {
  int fd;
  TRY(fd = open("mapped", O_CREAT | O_RDWR | O_TRUNC, 0644));
  TRY(ftruncate(fd, 64 * KiB));
  char *p = mmap(NULL, 64 * KiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  EXPECT(p != MAP_FAILED, "mmap(MAP_SHARED, PROT_WRITE): %s", en(errno));
  for (int i = 0; i < 64 * KiB; i++) p[i] = 'a' + i % 26;
  TRY(msync(p, 64 * KiB, MS_SYNC));
  TRY(munmap(p, 64 * KiB));
  TRY(close(fd));
  drop_caches();
  static char got[64 * KiB + 1];
  ssize_t n = slurp("mapped", got, sizeof got);
  EXPECT(n == 64 * KiB, "read %zd bytes", n);
  for (int i = 0; i < 64 * KiB; i++) EXPECT(got[i] == 'a' + i % 26, "byte %d is 0x%02x after msync", i, (unsigned char)got[i]);
  return 0;
}

struct check {
  const char *name;
  int (*fn)(void);
  int timeout_s;
};

/* The numbered checks; test/e2e/posix-battery.test.ts lists the same names. */
static const struct check CHECKS[] = {
    {"01-create-rw", c_create_rw, 30},
    {"02-pread-pwrite", c_pread_pwrite, 30},
    {"03-mkdir-rmdir", c_mkdir_rmdir, 30},
    {"04-readdir-1000", c_readdir_many, 60},
    {"05-rename", c_rename, 30},
    {"06-renameat2", c_renameat2, 30},
    {"07-hardlink", c_hardlink, 30},
    {"08-symlink", c_symlink, 30},
    {"09-chmod-chown", c_chmod_chown, 30},
    {"10-utimes", c_utimes, 30},
    {"11-statfs", c_statfs, 30},
    {"12-unlink-open", c_unlink_open, 30},
    {"13-o-excl", c_o_excl, 30},
    {"14-sparse-seek", c_sparse_seek, 30},
    {"15-fallocate", c_fallocate, 30},
    {"16-xattr", c_xattr, 30},
    {"17-flock", c_flock, 60},
    {"18-flock-blocking", c_flock_blocking, 30},
    {"19-fcntl-locks", c_fcntl_locks, 60},
    {"20-ofd-close", c_ofd_close, 60},
    {"21-fcntl-setlkw", c_fcntl_setlkw, 30},
    {"22-mkfifo", c_mkfifo, 30},
    {"23-big-file", c_big_file, 180},
    {"24-many-files", c_many_files, 120},
    {"25-unicode-names", c_unicode_names, 30},
    {"26-fsync", c_fsync, 30},
    {"27-copy-file-range", c_copy_file_range, 30},
    {"28-mmap-shared", c_mmap_shared, 30},
};

static volatile sig_atomic_t alarmed;
static void on_alarm(int sig) { (void)sig; alarmed = 1; }

/* Runs one check in a child process, in DIR/NAME, with a time limit. */
static void run_check(const char *dir, const char *rel, const struct check *c) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, c->name);
  long t0 = now_ms();
  pid_t pid = fork();
  if (pid == 0) {
    snprintf(check_rel, sizeof check_rel, "%s/%s", rel, c->name);
    if (mkdir(path, 0755) < 0 || chdir(path) < 0) {
      out("E2E-FAIL %s cannot make its directory %s: %s", c->name, path, en(errno));
      _exit(1);
    }
    reason[0] = 0;
    if (c->fn() == 0) {
      out("E2E-OK %s", c->name);
      _exit(0);
    }
    out("E2E-FAIL %s %s", c->name, reason[0] ? reason : "(no reason given)");
    _exit(1);
  }
  if (pid < 0) {
    out("E2E-FAIL %s fork: %s", c->name, en(errno));
    return;
  }
  struct sigaction sa = {0};
  sa.sa_handler = on_alarm; /* no SA_RESTART: waitpid returns EINTR */
  sigaction(SIGALRM, &sa, NULL);
  alarmed = 0;
  alarm(c->timeout_s);
  int status = 0;
  pid_t r;
  while ((r = waitpid(pid, &status, 0)) < 0 && errno == EINTR && !alarmed) {
  }
  alarm(0);
  if (r < 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    out("E2E-FAIL %s timed out after %d s", c->name, c->timeout_s);
  } else if (!WIFEXITED(status)) {
    out("E2E-FAIL %s crashed (signal %d)", c->name, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  }
  out("E2E-INFO time %s %ld ms", c->name, now_ms() - t0);
}

/* share root: the mount point above DIR, i.e. DIR's parent. */
static void set_share(const char *dir, char *rel, size_t cap) {
  snprintf(share_root, sizeof share_root, "%s", dir);
  char *slash = strrchr(share_root, '/');
  snprintf(rel, cap, "%s", slash ? slash + 1 : dir);
  if (slash && slash != share_root) *slash = 0;
  else snprintf(share_root, sizeof share_root, "/");
  snprintf(host_dir, sizeof host_dir, "%s/.e2e-host", share_root);
}

static int cmd_run(int argc, char **argv) {
  const char *dir = argv[2];
  char rel[256];
  set_share(dir, rel, sizeof rel);
  umask(0);
  if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
    out("E2E-FAIL battery cannot create %s: %s", dir, en(errno));
    return 1;
  }
  long t0 = now_ms();
  int n = sizeof CHECKS / sizeof CHECKS[0];
  for (int i = 0; i < n; i++) {
    int wanted = argc <= 3;
    for (int j = 3; j < argc; j++) wanted |= !strcmp(argv[j], CHECKS[i].name);
    if (wanted) run_check(dir, rel, &CHECKS[i]);
  }
  out("E2E-INFO battery done in %ld ms", now_ms() - t0);
  return 0;
}

/* ------------------------------------------------------------ coherence */

/* The items the host changes at once (see test/e2e/cache-coherence.test.ts):
 *   same.txt  rewritten in place with content of the same length
 *   grow.txt  rewritten in place with longer content
 *   gone.txt  unlinked
 *   new.txt   created
 * For each the guest reports whether its first look after the change saw the
 * new state ("immediate"), when it first saw it while polling for
 * COHERENCE_WINDOW_MS, and what it saw after dropping its caches. */
#define COHERENCE_WINDOW_MS 2500

struct item {
  const char *name, *old_text, *new_text; /* new_text NULL: gone */
  int held_fd;                            /* same.txt: kept open across the change */
  long fresh_ms;                          /* -1: not yet */
  char last[128];
};

/* 1 if the guest sees the new state of the item, 0 if the old one; last
 * gets what it saw. */
static int observe(struct item *it) {
  char buf[128];
  ssize_t n = slurp(it->name, buf, sizeof buf);
  if (n < 0) {
    snprintf(it->last, sizeof it->last, "%s", en(errno));
    return it->new_text == NULL && errno == ENOENT;
  }
  snprintf(it->last, sizeof it->last, "%s", show(buf, n));
  return it->new_text != NULL && (size_t)n == strlen(it->new_text) && !memcmp(buf, it->new_text, n);
}

static int cmd_coherence(const char *dir) {
  char rel[256];
  set_share(dir, rel, sizeof rel);
  if (chdir(dir) < 0) {
    out("E2E-FAIL coh-setup chdir %s: %s", dir, en(errno));
    return 1;
  }
  struct item items[] = {
      {"same.txt", "same length, version 1\n", "same length, version 2\n", -1, -1, ""},
      {"grow.txt", "short v1\n", "a longer version 2 of grow.txt\n", -1, -1, ""},
      {"gone.txt", "deleted by the host\n", NULL, -1, -1, ""},
      {"new.txt", NULL, "created by the host\n", -1, -1, ""},
  };
  enum { N = 4 };
  char reply[512];

  /* 1. Host to guest. Read everything once: caches now hold the old state. */
  int initial_ok = 1;
  for (int i = 0; i < N; i++) {
    char buf[128];
    ssize_t n = slurp(items[i].name, buf, sizeof buf);
    int ok = items[i].old_text ? n == (ssize_t)strlen(items[i].old_text) && !memcmp(buf, items[i].old_text, n)
                               : n < 0 && errno == ENOENT;
    if (!ok) {
      out("E2E-FAIL coh-initial %s: \"%s\"", items[i].name, n < 0 ? en(errno) : show(buf, n));
      initial_ok = 0;
    }
  }
  if (initial_ok) out("E2E-OK coh-initial");
  items[0].held_fd = open("same.txt", O_RDONLY);
  char held_before[64] = "";
  if (items[0].held_fd >= 0) {
    ssize_t n = pread(items[0].held_fd, held_before, sizeof held_before - 1, 0);
    held_before[n > 0 ? n : 0] = 0;
  }

  reason[0] = 0;
  if (host_request("change", "change coh", reply, sizeof reply, 20000) || strcmp(reply, "changed") != 0) {
    out("E2E-FAIL coh-change %s", reason[0] ? reason : reply);
    return 1;
  }
  long t0 = now_ms();
  for (int i = 0; i < N; i++) {
    int fresh = observe(&items[i]);
    if (fresh) items[i].fresh_ms = 0;
    out("E2E-INFO coh %s immediate=%s saw=\"%s\"", items[i].name, fresh ? "fresh" : "stale", items[i].last);
  }
  for (;;) {
    int pending = 0;
    for (int i = 0; i < N; i++) pending += items[i].fresh_ms < 0;
    long t = now_ms() - t0;
    if (!pending || t > COHERENCE_WINDOW_MS) break;
    sleep_ms(50);
    t = now_ms() - t0;
    for (int i = 0; i < N; i++)
      if (items[i].fresh_ms < 0 && observe(&items[i])) items[i].fresh_ms = t;
  }
  for (int i = 0; i < N; i++) {
    if (items[i].fresh_ms >= 0) out("E2E-INFO coh %s fresh-after-ms=%ld", items[i].name, items[i].fresh_ms);
    else out("E2E-INFO coh %s fresh-after-ms=never last=\"%s\"", items[i].name, items[i].last);
  }
  /* The fd opened before the change (only reported). */
  if (items[0].held_fd >= 0) {
    char buf[64];
    ssize_t n = pread(items[0].held_fd, buf, sizeof buf - 1, 0);
    out("E2E-INFO coh held-fd before=\"%s\" after=\"%s\"", show(held_before, strlen(held_before)),
        n < 0 ? en(errno) : show(buf, n));
    close(items[0].held_fd);
  }
  drop_caches();
  for (int i = 0; i < N; i++) {
    int fresh = observe(&items[i]);
    out("E2E-INFO coh %s after-drop=%s saw=\"%s\"", items[i].name, fresh ? "fresh" : "stale", items[i].last);
  }

  /* 2. Guest to host: what the host reads after fsync (fd still open),
   * after close, and after a plain write with the fd still open. */
  struct { const char *name, *text; int how; /* 0 fsync, 1 close, 2 plain */ } writes[] = {
      {"guest-fsync.txt", "written by the guest, then fsync\n", 0},
      {"guest-close.txt", "written by the guest, then close\n", 1},
      {"guest-plain.txt", "written by the guest, fd still open\n", 2},
  };
  for (int i = 0; i < 3; i++) {
    const char *check = i == 0 ? "coh-g2h-fsync" : i == 1 ? "coh-g2h-close" : "coh-g2h-plain";
    int fd = open(writes[i].name, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0 || write_all(fd, writes[i].text, strlen(writes[i].text)) < 0) {
      out("E2E-FAIL %s write %s: %s", check, writes[i].name, en(errno));
      continue;
    }
    if (writes[i].how == 0 && fsync(fd) < 0) out("E2E-FAIL %s fsync: %s", check, en(errno));
    if (writes[i].how == 1) close(fd), fd = -1;
    char request[300];
    snprintf(request, sizeof request, "read %s/%s", rel, writes[i].name);
    reason[0] = 0;
    if (host_request(check, request, reply, sizeof reply, 20000)) {
      out("E2E-FAIL %s %s", check, reason);
    } else {
      /* The host answers with the content it read, newlines as "|". */
      char want[128];
      snprintf(want, sizeof want, "%s", writes[i].text);
      for (char *p = want; *p; p++) if (*p == '\n') *p = '|';
      out("E2E-INFO %s host-read=\"%s\"", check, reply);
      if (!strcmp(reply, want)) out("E2E-OK %s", check);
      else out("E2E-FAIL %s the host read \"%s\", expected \"%s\"", check, reply, want);
    }
    if (fd >= 0) close(fd);
  }
  return 0;
}

/* ------------------------------------------------------------ host probes */

static int cmd_probe_flock(const char *file) {
  int fd = open(file, O_RDONLY);
  if (fd < 0) { printf("error %s\n", en(errno)); return 1; }
  if (flock(fd, LOCK_EX | LOCK_NB) == 0) { printf("free\n"); return 0; }
  printf(errno == EWOULDBLOCK ? "busy\n" : "error %s\n", en(errno));
  return 0;
}

static int cmd_probe_posix(const char *file, long start, long len) {
  int fd = open(file, O_RDWR);
  if (fd < 0) { printf("error %s\n", en(errno)); return 1; }
  struct flock l;
  if (getlk(fd, F_GETLK, F_WRLCK, start, len, &l) < 0) { printf("error %s\n", en(errno)); return 1; }
  if (l.l_type == F_UNLCK) printf("unlocked\n");
  else printf("%s %lld %lld\n", l.l_type == F_WRLCK ? "F_WRLCK" : "F_RDLCK", (long long)l.l_start, (long long)l.l_len);
  return 0;
}

static int cmd_xattr_get(const char *file, const char *name) {
  char buf[65536];
  ssize_t n = lgetxattr(file, name, buf, sizeof buf);
  if (n < 0) { printf("%s\n", en(errno)); return 0; }
  for (ssize_t i = 0; i < n; i++) printf("%02x", (unsigned char)buf[i]);
  printf("\n");
  return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int cmd_xattr_list(const char *file) {
  char buf[65536], *names[1024];
  ssize_t n = llistxattr(file, buf, sizeof buf);
  if (n < 0) { printf("%s\n", en(errno)); return 0; }
  int count = 0;
  for (char *p = buf; p < buf + n && count < 1024; p += strlen(p) + 1)
    if (!strncmp(p, "user.", 5)) names[count++] = p;
  qsort(names, count, sizeof names[0], cmp_str);
  for (int i = 0; i < count; i++) printf("%s\n", names[i]);
  return 0;
}

int main(int argc, char **argv) {
  const char *cmd = argc > 1 ? argv[1] : "";
  if (!strcmp(cmd, "run") && argc >= 3) return cmd_run(argc, argv);
  if (!strcmp(cmd, "coherence") && argc == 3) return cmd_coherence(argv[2]);
  if (!strcmp(cmd, "probe-flock") && argc == 3) return cmd_probe_flock(argv[2]);
  if (!strcmp(cmd, "probe-posix") && argc == 5) return cmd_probe_posix(argv[2], atol(argv[3]), atol(argv[4]));
  if (!strcmp(cmd, "xattr-get") && argc == 4) return cmd_xattr_get(argv[2], argv[3]);
  if (!strcmp(cmd, "xattr-list") && argc == 3) return cmd_xattr_list(argv[2]);
  if (!strcmp(cmd, "list-checks")) {
    for (size_t i = 0; i < sizeof CHECKS / sizeof CHECKS[0]; i++) printf("%s\n", CHECKS[i].name);
    return 0;
  }
  fprintf(stderr,
          "usage: battery run DIR [CHECK...] | coherence DIR | list-checks\n"
          "       battery probe-flock FILE | probe-posix FILE START LEN | xattr-get FILE NAME | xattr-list FILE\n");
  return 2;
}
