/*
 * virtiofsd-ts-sandbox: enters new namespaces and lowers the capability sets
 * BEFORE Node starts, then runs the daemon inside them.
 *
 * Why a separate program: unshare(CLONE_NEWNS) needs an unshared fs_struct and
 * CLONE_NEWUSER a single-threaded caller, and Node has started its threads
 * before any JavaScript runs. So the daemon's launcher (bin/virtiofsd-ts.js)
 * execs this program, which unshares, forks (a new pid namespace applies to
 * children only), and execs Node again as pid 1 of the new namespace. Node then
 * loads all of its code and makes the share its root itself (src/sandbox/).
 *
 * usage: virtiofsd-ts-sandbox [--namespace] [--userns] [--no-io-uring] [--uid-map I:O:C]...
 *          [--gid-map I:O:C]... [--caps HEXMASK] [--remove PATH]... [--remove-pidfile PATH]
 *          -- PROGRAM ARGS...
 *   --namespace   new mount, pid and network namespaces for the daemon
 *                 (this process forks it, waits, and forwards signals)
 *   --userns      also a new user namespace (unprivileged start); maps as given,
 *                 else inside 0 -> our euid/egid, count 1
 *   --no-io-uring the program runs with io_uring answering ENOSYS (see
 *                 deny_io_uring): for a daemon that will install its seccomp filter
 *   --caps MASK   keep only these capabilities (bounding, permitted, effective,
 *                 inheritable; ambient cleared) in every thread Node will start
 *   --remove PATH after the daemon has ended, remove the socket file PATH (the
 *                 daemon cannot: the path is outside its new root); implies the
 *                 fork and wait; repeatable (the metrics socket too)
 *   --remove-pidfile PATH  after the daemon has ended, remove the pid file PATH if
 *                 no process holds its lock any more (a new daemon may have taken
 *                 it over meanwhile); implies the fork and wait
 * Exit status: the daemon's; 127 with a message on stderr if the sandbox
 * cannot be set up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>

#define MAX_MAPS 64
#define MAX_REMOVE 4

struct id_map {
  unsigned long inside, outside, count;
};

static pid_t child_pid = -1;


static void die(const char *what) {
  fprintf(stderr, "virtiofsd-ts: sandbox: %s: %s\n", what, strerror(errno));
  exit(127);
}

static void usage(const char *msg) {
  fprintf(stderr, "virtiofsd-ts: sandbox: %s\n", msg);
  exit(127);
}

/* "I:O:C", or libvirt's ":I:O:C:" form. */
static int parse_map(const char *s, struct id_map *m) {
  char extra;
  if (*s == ':') s++;
  if (sscanf(s, "%lu:%lu:%lu%c", &m->inside, &m->outside, &m->count, &extra) == 3) return m->count > 0 ? 0 : -1;
  if (sscanf(s, "%lu:%lu:%lu:%c", &m->inside, &m->outside, &m->count, &extra) == 3) return m->count > 0 ? 0 : -1;
  /* A trailing ':' alone. */
  if (sscanf(s, "%lu:%lu:%lu:", &m->inside, &m->outside, &m->count) == 3 && s[strlen(s) - 1] == ':') return m->count > 0 ? 0 : -1;
  return -1;
}

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die(path);
  ssize_t n = write(fd, text, strlen(text));
  if (n != (ssize_t)strlen(text)) die(path);
  close(fd);
}

/* Whether the maps are what an unprivileged process may write itself: one entry for its own id. */
static int simple_map(const struct id_map *m, int n, unsigned long own) {
  return n == 1 && m[0].outside == own && m[0].count == 1;
}

static void run_and_wait(char *const argv[]) {
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    execvp(argv[0], argv);
    fprintf(stderr, "virtiofsd-ts: sandbox: %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) die("waitpid");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "virtiofsd-ts: sandbox: %s failed\n", argv[0]);
    exit(127);
  }
}

/* newuidmap/newgidmap PID I O C ...: what privileged maps need (setuid helpers from uidmap). */
static void run_newidmap(const char *tool, pid_t target, const struct id_map *m, int n) {
  char *argv[3 + 3 * MAX_MAPS];
  char buf[3 * MAX_MAPS + 1][24];
  int a = 0, b = 0;
  argv[a++] = (char *)tool;
  snprintf(buf[b], sizeof buf[b], "%d", (int)target);
  argv[a++] = buf[b++];
  for (int i = 0; i < n; i++) {
    snprintf(buf[b], sizeof buf[b], "%lu", m[i].inside);
    argv[a++] = buf[b++];
    snprintf(buf[b], sizeof buf[b], "%lu", m[i].outside);
    argv[a++] = buf[b++];
    snprintf(buf[b], sizeof buf[b], "%lu", m[i].count);
    argv[a++] = buf[b++];
  }
  argv[a] = NULL;
  run_and_wait(argv);
}

static void setup_userns(struct id_map *uids, int nuids, struct id_map *gids, int ngids) {
  unsigned long euid = geteuid(), egid = getegid();
  if (nuids == 0) uids[nuids++] = (struct id_map){0, euid, 1};
  if (ngids == 0) gids[ngids++] = (struct id_map){0, egid, 1};
  int simple = simple_map(uids, nuids, euid) && simple_map(gids, ngids, egid);
  if (simple) {
    if (unshare(CLONE_NEWUSER) < 0) die("unshare(CLONE_NEWUSER)");
    char text[64];
    write_file("/proc/self/setgroups", "deny");
    snprintf(text, sizeof text, "%lu %lu 1\n", uids[0].inside, uids[0].outside);
    write_file("/proc/self/uid_map", text);
    snprintf(text, sizeof text, "%lu %lu 1\n", gids[0].inside, gids[0].outside);
    write_file("/proc/self/gid_map", text);
    return;
  }
  /* Wider maps: a helper outside the new namespace runs newuidmap/newgidmap on us once we have unshared. */
  int go[2], done[2];
  if (pipe2(go, O_CLOEXEC) < 0 || pipe2(done, O_CLOEXEC) < 0) die("pipe2");
  pid_t parent = getpid();
  pid_t helper = fork();
  if (helper < 0) die("fork");
  if (helper == 0) {
    char c;
    close(go[1]);
    close(done[0]);
    if (read(go[0], &c, 1) != 1) _exit(1);
    run_newidmap("newuidmap", parent, uids, nuids);
    run_newidmap("newgidmap", parent, gids, ngids);
    if (write(done[1], "k", 1) != 1) _exit(1);
    _exit(0);
  }
  close(go[0]);
  close(done[1]);
  if (unshare(CLONE_NEWUSER) < 0) die("unshare(CLONE_NEWUSER)");
  char c = 'g';
  if (write(go[1], &c, 1) != 1) die("write");
  if (read(done[0], &c, 1) != 1) usage("newuidmap/newgidmap could not set the id maps (see above)");
  int status;
  waitpid(helper, &status, 0);
  close(go[1]);
  close(done[0]);
}

/* Keeps only `keep` in every capability set; later threads inherit them from this one. */
static void limit_caps(uint64_t keep) {
  for (int cap = 0; cap <= 63; cap++) {
    if (keep & (1ULL << cap)) continue;
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) die("PR_CAPBSET_DROP");
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) die("PR_CAP_AMBIENT_CLEAR_ALL");
  struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  if (syscall(SYS_capget, &header, data) < 0) die("capget");
  for (int i = 0; i < 2; i++) {
    uint32_t mask = (uint32_t)(keep >> (32 * i));
    data[i].effective &= mask;
    data[i].permitted &= mask;
    data[i].inheritable &= mask;
  }
  if (syscall(SYS_capset, &header, data) < 0) die("capset");
}

/* A stop signal forwarded to a daemon that is pid 1 of its namespace: resent every second
 * (a few times) while the daemon runs, because pid 1 ignores a signal it has no handler
 * for yet, as in the first milliseconds after exec. A daemon already stopping has no
 * handler left, so for it a resent signal is ignored too. */
static volatile sig_atomic_t stop_signal = 0;
static volatile sig_atomic_t resends_left = 10;
static int child_is_pid1 = 0;

static void forward(int sig) {
  if (child_pid <= 0) return;
  kill(child_pid, sig);
  if (child_is_pid1 && (sig == SIGTERM || sig == SIGINT || sig == SIGHUP) && !stop_signal) {
    stop_signal = sig;
    alarm(1);
  }
}

static void resend_stop(int sig) {
  (void)sig;
  if (child_pid <= 0 || !stop_signal || resends_left <= 0) return;
  resends_left--;
  kill(child_pid, stop_signal);
  alarm(1);
}

#if defined(__x86_64__)
#define NATIVE_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif
/* The io_uring calls have these numbers on every architecture (since Linux 5.1). */
#define NR_IO_URING_SETUP 425
#define NR_IO_URING_ENTER 426
#define NR_IO_URING_REGISTER 427

/*
 * Makes io_uring answer ENOSYS for the program about to be exec'd (filters
 * survive exec). A Node built with a system libuv (Debian's nodejs: libuv
 * 1.50) sets io_uring rings up when its loop starts, before any JavaScript,
 * and enters them later; the daemon's own seccomp allow-list has no io_uring
 * (its operations would bypass the filter), so that Node was killed with
 * SIGSYS at its first file call after the filter. With ENOSYS from the start
 * libuv uses epoll and its thread pool instead, as the nodejs.org builds do.
 */
static void deny_io_uring(void) {
#ifdef NATIVE_AUDIT_ARCH
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_AUDIT_ARCH, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, NR_IO_URING_SETUP, 0, 2),
      BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, NR_IO_URING_REGISTER, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {(unsigned short)(sizeof code / sizeof code[0]), code};
  /* CAP_SYS_ADMIN (in our user namespace) allows the filter as it is; without it the
   * kernel wants no_new_privs, which the daemon sets anyway before its own filter. */
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0) return;
  if (errno != EACCES) die("seccomp (io_uring off)");
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("PR_SET_NO_NEW_PRIVS");
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0) die("seccomp (io_uring off)");
#endif
}

int main(int argc, char **argv) {
  int namespace = 0, userns = 0, have_caps = 0, no_io_uring = 0;
  uint64_t caps = 0;
  const char *remove_paths[MAX_REMOVE];
  int nremove = 0;
  const char *remove_pidfile = NULL;
  struct id_map uids[MAX_MAPS], gids[MAX_MAPS];
  int nuids = 0, ngids = 0;
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    } else if (strcmp(a, "--namespace") == 0) {
      namespace = 1;
    } else if (strcmp(a, "--userns") == 0) {
      userns = 1;
    } else if (strcmp(a, "--no-io-uring") == 0) {
      no_io_uring = 1;
    } else if ((strcmp(a, "--uid-map") == 0 || strcmp(a, "--gid-map") == 0) && i + 1 < argc) {
      int uid = a[2] == 'u';
      if ((uid ? nuids : ngids) >= MAX_MAPS) usage("too many id maps");
      struct id_map *m = uid ? &uids[nuids++] : &gids[ngids++];
      if (parse_map(argv[++i], m) < 0) usage("bad id map (expected INSIDE:OUTSIDE:COUNT)");
    } else if (strcmp(a, "--caps") == 0 && i + 1 < argc) {
      char *end;
      errno = 0;
      caps = strtoull(argv[++i], &end, 16);
      if (errno || *end) usage("bad --caps mask");
      have_caps = 1;
    } else if (strcmp(a, "--remove") == 0 && i + 1 < argc) {
      if (nremove >= MAX_REMOVE) usage("too many --remove");
      remove_paths[nremove++] = argv[++i];
    } else if (strcmp(a, "--remove-pidfile") == 0 && i + 1 < argc) {
      remove_pidfile = argv[++i];
    } else {
      usage("unknown argument");
    }
  }
  if (i >= argc) usage("no program to run");
  char **program = &argv[i];

  if (userns) setup_userns(uids, nuids, gids, ngids);
  /* A new pid namespace applies to the children only; the mount and network ones are
   * entered by the child alone, so that this process stays in the host's mount
   * namespace (pivot_root moves the root of every process of the namespace) and can
   * remove the socket file at the end. */
  if (namespace && unshare(CLONE_NEWPID) < 0) die("unshare(CLONE_NEWPID)");
  if (have_caps) limit_caps(caps);

  if (!namespace && nremove == 0 && !remove_pidfile) {
    if (no_io_uring) deny_io_uring();
    execv(program[0], program);
    die(program[0]);
  }

  /* Signals that arrive before the child exists are held, then forwarded. */
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  child_pid = fork();
  if (child_pid < 0) die("fork");
  if (child_pid == 0) {
    sigprocmask(SIG_SETMASK, &old, NULL);
    /* The daemon must not outlive its launcher (it is what libvirt or systemd watches). */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (namespace && unshare(CLONE_NEWNS | CLONE_NEWNET) < 0) die("unshare(CLONE_NEWNS|CLONE_NEWNET)");
    if (no_io_uring) deny_io_uring();
    execv(program[0], program);
    die(program[0]);
  }
  /* The launcher holds nothing the daemon needs: not the listening socket, nor the share. */
  for (int fd = 3; fd < 1024; fd++) close(fd);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward;
  int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
  for (size_t s = 0; s < sizeof forwarded / sizeof forwarded[0]; s++) sigaction(forwarded[s], &sa, NULL);
  child_is_pid1 = namespace;
  sa.sa_handler = resend_stop;
  sigaction(SIGALRM, &sa, NULL);
  sigprocmask(SIG_SETMASK, &old, NULL);

  int status;
  while (waitpid(child_pid, &status, 0) < 0)
    if (errno != EINTR) die("waitpid");
  for (int r = 0; r < nremove; r++) {
    struct stat st;
    if (lstat(remove_paths[r], &st) == 0 && S_ISSOCK(st.st_mode)) unlink(remove_paths[r]);
  }
  if (remove_pidfile) {
    /* Ours only if nobody holds the lock: a daemon started since then keeps its pid file. */
    int fd = open(remove_pidfile, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
      if (flock(fd, LOCK_EX | LOCK_NB) == 0) unlink(remove_pidfile);
      close(fd);
    }
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  /* Die of the same signal, so that the caller sees what the daemon died of. */
  int sig = WTERMSIG(status);
  signal(sig, SIG_DFL);
  sigset_t only;
  sigemptyset(&only);
  sigaddset(&only, sig);
  sigprocmask(SIG_UNBLOCK, &only, NULL);
  raise(sig);
  return 128 + sig;
}
