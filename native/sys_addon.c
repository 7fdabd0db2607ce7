// The few syscalls that koffi cannot serve well: fd readiness in the libuv
// loop (uv_poll), SCM_RIGHTS sendmsg/recvmsg, mmap'd memory exposed as
// external ArrayBuffers, calls on libuv's pool (asyncIo), and preadv2 over
// guest-memory Buffers. Everything else lives in src/sys/libc.ts via koffi.
// Errors are thrown as Error objects with `errno` (number) and `code`.
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <uv.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include <fcntl.h>

#define MAX_FDS 64

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  napi_value msg, code, error, errnum;
  char text[256];
  snprintf(text, sizeof text, "%s: %s", syscall, strerror(err));
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  const char *name = uv_err_name(-err);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, msg, &error);
  napi_create_int32(env, err, &errnum);
  napi_set_named_property(env, error, "errno", errnum);
  napi_set_named_property(env, error, "code", code);
  napi_throw(env, error);
  return NULL;
}

// Throws a JS error for a failed N-API call (unless one is already pending) and
// returns NULL from the calling function.
#define NAPI_CHECK(env, call)                                   \
  do {                                                          \
    napi_status status_ = (call);                               \
    if (status_ != napi_ok) return throw_napi_failure((env), status_, #call); \
  } while (0)

static napi_value throw_napi_failure(napi_env env, napi_status status, const char *what) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return NULL;
  const napi_extended_error_info *e = NULL;
  napi_get_last_error_info(env, &e);
  char text[256];
  snprintf(text, sizeof text, "%s failed: %s (napi_status %d)", what, e && e->error_message ? e->error_message : "?", (int)status);
  napi_throw_error(env, "ERR_NAPI", text);
  return NULL;
}

// Declares argc/argv and reads up to `n` arguments; fewer than `min` throws EINVAL naming `what`.
#define GET_ARGS(n, min, what)                                              \
  size_t argc = (n);                                                        \
  napi_value argv[(n)];                                                     \
  NAPI_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));     \
  if (argc < (min)) return throw_errno(env, EINVAL, (what))

// Argument readers that throw a TypeError and return 0 when the value is not of the right type.
static int arg_i32_checked(napi_env env, napi_value v, int32_t *out) {
  if (napi_get_value_int32(env, v, out) == napi_ok) return 1;
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "expected a number");
  return 0;
}

static int arg_u64_checked(napi_env env, napi_value v, uint64_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) == napi_ok) {
    if (t == napi_bigint) {
      bool lossless;
      if (napi_get_value_bigint_uint64(env, v, out, &lossless) == napi_ok && lossless) return 1;
    } else if (t == napi_number) {
      double d;
      if (napi_get_value_double(env, v, &d) == napi_ok && d >= 0 && d < 18446744073709551616.0) {
        *out = (uint64_t)d;
        return 1;
      }
    }
  }
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "expected a non-negative number or BigInt below 2^64");
  return 0;
}

/* ---------------- fd readiness ---------------- */

typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  int closed;     /* uv_close has been requested */
  int released;   /* uv_close completed */
  int finalized;  /* the JS external was garbage collected */
} watcher_t;

// The watcher is freed once both libuv and the JS garbage collector are done with it.
static void watcher_closed(uv_handle_t *h) {
  watcher_t *w = h->data;
  w->released = 1;
  if (w->finalized) free(w);
}

static void watcher_close(napi_env env, watcher_t *w) {
  if (w->closed) return;
  w->closed = 1;
  uv_poll_stop(&w->poll);
  napi_delete_reference(env, w->callback);
  napi_async_destroy(env, w->context);
  uv_close((uv_handle_t *)&w->poll, watcher_closed);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  watcher_t *w = p->data;
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, recv, argv[2], result;
  napi_get_reference_value(env, w->callback, &cb);
  napi_get_global(env, &recv);
  napi_create_int32(env, status, &argv[0]);
  napi_create_int32(env, events, &argv[1]);
  if (napi_make_callback(env, w->context, recv, cb, 2, argv, &result) == napi_pending_exception) {
    napi_value ex;
    napi_get_and_clear_last_exception(env, &ex);
    napi_fatal_exception(env, ex);
  }
  napi_close_handle_scope(env, scope);
}

static void watcher_finalize(napi_env env, void *data, void *hint) {
  watcher_t *w = data;
  w->finalized = 1;
  watcher_close(env, w);
  if (w->released) free(w);
}

// watch(fd, callback(status, events)) -> external handle; readable events only.
static napi_value js_watch(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], ext, name, resource;
  NAPI_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  if (argc < 2 || !arg_i32_checked(env, argv[0], &fd)) return argc < 2 ? throw_errno(env, EINVAL, "watch") : NULL;
  napi_valuetype t;
  NAPI_CHECK(env, napi_typeof(env, argv[1], &t));
  if (t != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "watch: expected a callback");
    return NULL;
  }
  uv_loop_t *loop;
  NAPI_CHECK(env, napi_get_uv_event_loop(env, &loop));
  watcher_t *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, ENOMEM, "watch");
  w->env = env;
  int rc = uv_poll_init(loop, &w->poll, fd);
  if (rc < 0) {
    free(w);
    return throw_errno(env, -rc, "uv_poll_init");
  }
  w->poll.data = w;
  // From here a failure must close the poll handle (libuv owns it until closed).
  if (napi_create_reference(env, argv[1], 1, &w->callback) != napi_ok ||
      napi_create_string_utf8(env, "fdwatch", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_object(env, &resource) != napi_ok || napi_async_init(env, resource, name, &w->context) != napi_ok) {
    if (w->callback) napi_delete_reference(env, w->callback);
    w->closed = 1;
    w->finalized = 1;
    uv_close((uv_handle_t *)&w->poll, watcher_closed);
    return throw_napi_failure(env, napi_generic_failure, "watch: setting up the callback");
  }
  rc = uv_poll_start(&w->poll, UV_READABLE, on_poll);
  if (rc < 0 || napi_create_external(env, w, watcher_finalize, NULL, &ext) != napi_ok) {
    napi_delete_reference(env, w->callback);
    napi_async_destroy(env, w->context);
    w->closed = 1;
    w->finalized = 1;
    uv_close((uv_handle_t *)&w->poll, watcher_closed);
    return rc < 0 ? throw_errno(env, -rc, "uv_poll_start") : throw_napi_failure(env, napi_generic_failure, "napi_create_external");
  }
  return ext;
}

static napi_value js_unwatch(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  watcher_t *w;
  if (argc < 1 || napi_get_value_external(env, argv[0], (void **)&w) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "unwatch: expected a watch handle");
    return NULL;
  }
  watcher_close(env, w);
  return NULL;
}

/* ---------------- SCM_RIGHTS ---------------- */

// sendmsg(fd, buffer, fds[]) -> bytes sent
static napi_value js_sendmsg(napi_env env, napi_callback_info info) {
  GET_ARGS(3, 2, "sendmsg");
  napi_value out;
  int32_t fd;
  if (!arg_i32_checked(env, argv[0], &fd)) return NULL;
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "sendmsg: expected a Buffer");
    return NULL;
  }
  uint32_t nfds = 0;
  if (argc > 2 && napi_get_array_length(env, argv[2], &nfds) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "sendmsg: expected an array of fds");
    return NULL;
  }
  if (nfds > MAX_FDS) return throw_errno(env, EINVAL, "sendmsg");
  struct iovec iov = {data, len};
  struct msghdr msg = {0};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  char control[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  if (nfds > 0) {
    memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    int *fds = (int *)CMSG_DATA(c);
    for (uint32_t i = 0; i < nfds; i++) {
      napi_value v;
      NAPI_CHECK(env, napi_get_element(env, argv[2], i, &v));
      if (!arg_i32_checked(env, v, &fds[i])) return NULL;
    }
  }
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) return throw_errno(env, errno, "sendmsg");
  NAPI_CHECK(env, napi_create_int64(env, n, &out));
  return out;
}

// recvmsg(fd, buffer, offset, length) -> [bytes, ...fds]; bytes 0 = EOF.
static napi_value js_recvmsg(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], out, v;
  NAPI_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2) return throw_errno(env, EINVAL, "recvmsg");
  int32_t fd, off = 0, want;
  if (!arg_i32_checked(env, argv[0], &fd)) return NULL;
  char *data;
  size_t len;
  if (napi_get_buffer_info(env, argv[1], (void **)&data, &len) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "recvmsg: expected a Buffer");
    return NULL;
  }
  want = (int32_t)(len > INT32_MAX ? INT32_MAX : len);
  if (argc > 2 && !arg_i32_checked(env, argv[2], &off)) return NULL;
  if (argc > 3 && !arg_i32_checked(env, argv[3], &want)) return NULL;
  if (off < 0 || want < 0 || (size_t)off > len || (size_t)want > len - (size_t)off) return throw_errno(env, EINVAL, "recvmsg");
  struct iovec iov = {data + off, (size_t)want};
  char control[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  struct msghdr msg = {0};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) return throw_errno(env, errno, "recvmsg");
  // Received fds are ours from here: if building the result fails they must not leak.
  int received[MAX_FDS];
  int count = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int *fds = (int *)CMSG_DATA(c);
    for (int i = 0; i < k && count < MAX_FDS; i++) received[count++] = fds[i];
  }
  if (napi_create_array(env, &out) != napi_ok || napi_create_int64(env, n, &v) != napi_ok || napi_set_element(env, out, 0, v) != napi_ok) {
    for (int i = 0; i < count; i++) close(received[i]);
    return throw_napi_failure(env, napi_generic_failure, "recvmsg: building the result");
  }
  for (int i = 0; i < count; i++) {
    if (napi_create_int32(env, received[i], &v) != napi_ok || napi_set_element(env, out, (uint32_t)(i + 1), v) != napi_ok) {
      for (int j = i; j < count; j++) close(received[j]);
      return throw_napi_failure(env, napi_generic_failure, "recvmsg: building the result");
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    napi_value t;
    NAPI_CHECK(env, napi_get_boolean(env, true, &t));
    NAPI_CHECK(env, napi_set_named_property(env, out, "ctrunc", t));
  }
  return out;
}

/* ---------------- memory mappings ---------------- */

// mmap(addr, length, prot, flags, fd, offset) -> address (BigInt)
static napi_value js_mmap(napi_env env, napi_callback_info info) {
  GET_ARGS(6, 6, "mmap");
  napi_value out;
  uint64_t addr, length, offset;
  int32_t prot, flags, fd;
  if (!arg_u64_checked(env, argv[0], &addr) || !arg_u64_checked(env, argv[1], &length) ||
      !arg_i32_checked(env, argv[2], &prot) || !arg_i32_checked(env, argv[3], &flags) ||
      !arg_i32_checked(env, argv[4], &fd) || !arg_u64_checked(env, argv[5], &offset)) {
    return NULL;
  }
  void *p = mmap((void *)(uintptr_t)addr, (size_t)length, prot, flags, fd, (off_t)offset);
  if (p == MAP_FAILED) return throw_errno(env, errno, "mmap");
  NAPI_CHECK(env, napi_create_bigint_uint64(env, (uint64_t)(uintptr_t)p, &out));
  return out;
}

static napi_value js_munmap(napi_env env, napi_callback_info info) {
  GET_ARGS(2, 2, "munmap");
  uint64_t addr, length;
  if (!arg_u64_checked(env, argv[0], &addr) || !arg_u64_checked(env, argv[1], &length)) return NULL;
  if (munmap((void *)(uintptr_t)addr, (size_t)length) < 0) return throw_errno(env, errno, "munmap");
  return NULL;
}

// view(address, length) -> ArrayBuffer over that memory; the caller keeps the
// mapping alive for as long as views exist.
static napi_value js_view(napi_env env, napi_callback_info info) {
  GET_ARGS(2, 2, "view");
  napi_value out;
  uint64_t addr, length;
  if (!arg_u64_checked(env, argv[0], &addr) || !arg_u64_checked(env, argv[1], &length)) return NULL;
  NAPI_CHECK(env, napi_create_external_arraybuffer(env, (void *)(uintptr_t)addr, (size_t)length, NULL, NULL, &out));
  return out;
}

/* ---------------- fault handling: guarded ranges and guarded copies ---------------- */

// Two kinds of memory can vanish under us:
// - guest RAM: the front-end hands us a memfd and may shrink it (ftruncate)
//   while we have it mapped; touching a page past the new end raises SIGBUS.
//   Such mappings are registered as guarded ranges: a fault inside one replaces
//   the page with an anonymous zero page, counts the fault for JS to poll
//   (guardFaults) and returns, so the access retries and reads zeros. The owner
//   then drops the front-end.
// - a file mapped in a DAX window (guest side) raises SIGBUS past the file's
//   end (the host truncated it). Copies through such memory (copyGuarded) jump
//   back and report the fault instead of killing Node.
// Any other fault goes to the handler installed before ours (Node's, V8's, or
// the default action, which kills as it always did).

// Every mapping of guest RAM (32 slots per front-end, plus old tables kept while
// requests drain) and of the TypeScript guest's RAM in tests.
#define MAX_GUARDED 4096

typedef struct {
  uintptr_t start, end;      /* [start, end), page-aligned */
  volatile uint32_t faults;  /* faults absorbed so far */
  volatile int active;       /* read by the signal handler */
} guarded_t;

static guarded_t guarded[MAX_GUARDED];
static volatile uint64_t guarded_fault_total;
static pthread_mutex_t guarded_lock = PTHREAD_MUTEX_INITIALIZER;
static uintptr_t page_size;

static __thread sigjmp_buf *volatile guard_jmp;

static struct sigaction prev_sigbus, prev_sigsegv;
static pthread_once_t handlers_once = PTHREAD_ONCE_INIT;
static int handlers_error;

// Replaces the page holding `addr` in range `g` with anonymous zero memory.
// A hugetlbfs mapping can only be replaced in whole huge pages (mmap says
// EINVAL), so the common huge page sizes are tried next. mmap is a plain
// system call on Linux, safe in a signal handler.
static int absorb_fault(guarded_t *g, uintptr_t addr) {
  static const uintptr_t huge[] = {(uintptr_t)2 << 20, (uintptr_t)1 << 30};
  for (int i = -1; i < (int)(sizeof huge / sizeof huge[0]); i++) {
    uintptr_t granule = i < 0 ? page_size : huge[i];
    uintptr_t page = addr & ~(granule - 1);
    if (page < g->start || page + granule > g->end) continue;
    void *p = mmap((void *)page, granule, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED) {
      __atomic_add_fetch(&g->faults, 1, __ATOMIC_RELAXED);
      __atomic_add_fetch(&guarded_fault_total, 1, __ATOMIC_RELAXED);
      return 0;
    }
    if (errno != EINVAL) break;
  }
  return -1;
}

static void chain(int sig, siginfo_t *info, void *ctx, struct sigaction *prev) {
  if (prev->sa_flags & SA_SIGINFO) {
    prev->sa_sigaction(sig, info, ctx);
    return;
  }
  if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
    prev->sa_handler(sig);
    return;
  }
  // Default action (an ignored synchronous fault would only repeat forever):
  // restore it; a kernel fault happens again on return and kills, a signal
  // sent by someone is raised again.
  signal(sig, SIG_DFL);
  if (info->si_code <= 0) raise(sig);
}

static void on_fault(int sig, siginfo_t *info, void *ctx) {
  int saved_errno = errno;
  // si_addr means something only for faults the kernel raised (si_code > 0);
  // kill()/tgkill() put the sender's pid there.
  if (info->si_code > 0) {
    uintptr_t addr = (uintptr_t)info->si_addr;
    for (int i = 0; i < MAX_GUARDED; i++) {
      guarded_t *g = &guarded[i];
      if (!__atomic_load_n(&g->active, __ATOMIC_ACQUIRE)) continue;
      if (addr >= g->start && addr < g->end) {
        if (absorb_fault(g, addr) == 0) {
          errno = saved_errno;
          return;
        }
        break;  /* could not replace the page: let the fault take its course */
      }
    }
    if (guard_jmp) siglongjmp(*guard_jmp, 1);
  }
  errno = saved_errno;
  chain(sig, info, ctx, sig == SIGBUS ? &prev_sigbus : &prev_sigsegv);
}

static void install_handlers(void) {
  page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fault;
  // SA_NODEFER: copyGuarded leaves the handler by siglongjmp; SA_ONSTACK: use
  // an alternate stack where a thread has one.
  sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &prev_sigbus) < 0 || sigaction(SIGSEGV, &sa, &prev_sigsegv) < 0) handlers_error = errno;
}

// 0, or -1 with a JS error thrown.
static int ensure_handlers(napi_env env) {
  pthread_once(&handlers_once, install_handlers);
  if (!handlers_error) return 0;
  throw_errno(env, handlers_error, "sigaction");
  return -1;
}

// guardRange(address, length) -> id, for a mapping made by mmap (address page-aligned).
static napi_value js_guard_range(napi_env env, napi_callback_info info) {
  GET_ARGS(2, 2, "guardRange");
  napi_value out;
  if (ensure_handlers(env) < 0) return NULL;
  uint64_t addr, length;
  if (!arg_u64_checked(env, argv[0], &addr) || !arg_u64_checked(env, argv[1], &length)) return NULL;
  if (length == 0 || addr % page_size ||
      addr + length < addr || addr + length > UINTPTR_MAX - page_size) {
    return throw_errno(env, EINVAL, "guardRange");
  }
  uintptr_t end = ((uintptr_t)(addr + length) + page_size - 1) & ~(page_size - 1);
  int id = -1;
  pthread_mutex_lock(&guarded_lock);
  for (int i = 0; i < MAX_GUARDED; i++) {
    if (!guarded[i].active) {
      guarded[i].start = (uintptr_t)addr;
      guarded[i].end = end;
      guarded[i].faults = 0;
      __atomic_store_n(&guarded[i].active, 1, __ATOMIC_RELEASE);
      id = i;
      break;
    }
  }
  pthread_mutex_unlock(&guarded_lock);
  if (id < 0) return throw_errno(env, ENOSPC, "guardRange");
  NAPI_CHECK(env, napi_create_int32(env, id, &out));
  return out;
}

static guarded_t *arg_guarded(napi_env env, napi_callback_info info, const char *what) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t id;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &id) != napi_ok || id < 0 || id >= MAX_GUARDED || !guarded[id].active) {
    throw_errno(env, EINVAL, what);
    return NULL;
  }
  return &guarded[id];
}

// unguardRange(id): call before munmap, so a later mapping at that address is not absorbed.
static napi_value js_unguard_range(napi_env env, napi_callback_info info) {
  guarded_t *g = arg_guarded(env, info, "unguardRange");
  if (!g) return NULL;
  pthread_mutex_lock(&guarded_lock);
  __atomic_store_n(&g->active, 0, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&guarded_lock);
  return NULL;
}

// guardFaults(id) -> faults absorbed in that range so far.
static napi_value js_guard_faults(napi_env env, napi_callback_info info) {
  napi_value out;
  guarded_t *g = arg_guarded(env, info, "guardFaults");
  if (!g) return NULL;
  NAPI_CHECK(env, napi_create_uint32(env, __atomic_load_n(&g->faults, __ATOMIC_RELAXED), &out));
  return out;
}

// guardFaultTotal() -> faults absorbed in all ranges, ever: one cheap poll per batch.
static napi_value js_guard_fault_total(napi_env env, napi_callback_info info) {
  napi_value out;
  (void)info;
  NAPI_CHECK(env, napi_create_double(env, (double)__atomic_load_n(&guarded_fault_total, __ATOMIC_RELAXED), &out));
  return out;
}

// copyGuarded(dst, src) -> bytes copied, or -1 if the memory faulted (SIGBUS/SIGSEGV).
static napi_value js_copy_guarded(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  NAPI_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *dst, *src;
  size_t dlen, slen;
  if (argc < 2) return throw_errno(env, EINVAL, "copyGuarded");
  NAPI_CHECK(env, napi_get_buffer_info(env, argv[0], &dst, &dlen));
  NAPI_CHECK(env, napi_get_buffer_info(env, argv[1], &src, &slen));
  size_t n = dlen < slen ? dlen : slen;
  if (ensure_handlers(env) < 0) return NULL;
  sigjmp_buf jmp;
  volatile int64_t result = (int64_t)n;
  if (sigsetjmp(jmp, 1) == 0) {
    guard_jmp = &jmp;
    memcpy(dst, src, n);
  } else {
    result = -1;
  }
  guard_jmp = NULL;
  NAPI_CHECK(env, napi_create_int64(env, result, &out));
  return out;
}

/* ---------------- blocking file calls on libuv's thread pool ---------------- */

// Calls that may wait for a disk or a slow file system, run on libuv's pool so
// that the event loop (every other queue, the control socket) goes on. Node's
// fs has no copy_file_range with offsets, no fallocate and no syncfs. The fds
// must stay open until the callback: the caller passes private dups.
// With --thread-pool-size the lookups and stats of a slow host file system
// (NFS) go there too: statx and openat, whose path (NUL-terminated) and statx
// buffer are Buffers held referenced until the callback.
enum { IO_COPY_FILE_RANGE = 0, IO_FALLOCATE = 1, IO_SYNCFS = 2, IO_STATX = 3, IO_OPENAT = 4 };
#define IO_MAX_BUFFERS 2

typedef struct {
  napi_async_work work;
  napi_ref callback;
  napi_ref buffer_refs[IO_MAX_BUFFERS];
  void *buffer[IO_MAX_BUFFERS];
  size_t buffer_len[IO_MAX_BUFFERS];
  int op;
  int64_t a[6];
  int64_t ret;
  int err;
} io_job_t;

// Releases a job's references and memory (its async work, if any, is the caller's).
static void io_job_free(napi_env env, io_job_t *j) {
  if (j->callback) napi_delete_reference(env, j->callback);
  for (int b = 0; b < IO_MAX_BUFFERS; b++)
    if (j->buffer_refs[b]) napi_delete_reference(env, j->buffer_refs[b]);
  free(j);
}


static void io_execute(napi_env env, void *data) {
  (void)env;
  io_job_t *j = data;
  int64_t r;
  switch (j->op) {
    case IO_COPY_FILE_RANGE: {
      loff_t in = (loff_t)j->a[1], out = (loff_t)j->a[3];
      r = copy_file_range((int)j->a[0], &in, (int)j->a[2], &out, (size_t)j->a[4], (unsigned)j->a[5]);
      break;
    }
    case IO_FALLOCATE:
      r = fallocate((int)j->a[0], (int)j->a[1], (off_t)j->a[2], (off_t)j->a[3]);
      break;
    case IO_SYNCFS:
      r = syncfs((int)j->a[0]);
      break;
    case IO_STATX:
      r = statx((int)j->a[0], (const char *)j->buffer[0], (int)j->a[1], (unsigned)j->a[2], (struct statx *)j->buffer[1]);
      break;
    case IO_OPENAT:
      r = openat((int)j->a[0], (const char *)j->buffer[0], (int)j->a[1], (mode_t)j->a[2]);
      break;
    default:
      r = -1;
      errno = EINVAL;
  }
  j->ret = r;
  j->err = r < 0 ? errno : 0;
}

// Calls back (errno, result): errno 0 on success. Never throws into the loop.
static void io_complete(napi_env env, napi_status status, void *data) {
  io_job_t *j = data;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) == napi_ok) {
    napi_value cb, recv, argv[2], result;
    if (napi_get_reference_value(env, j->callback, &cb) == napi_ok && napi_get_undefined(env, &recv) == napi_ok &&
        napi_create_int32(env, status == napi_ok ? j->err : ECANCELED, &argv[0]) == napi_ok &&
        napi_create_int64(env, j->ret, &argv[1]) == napi_ok) {
      if (napi_call_function(env, recv, cb, 2, argv, &result) == napi_pending_exception) {
        napi_value ex;
        napi_get_and_clear_last_exception(env, &ex);
      }
    }
    napi_close_handle_scope(env, scope);
  }
  napi_delete_async_work(env, j->work);
  io_job_free(env, j);
}

// asyncIo(op, a0, a1, a2, a3, a4, a5, callback(errno, result)[, buffer0[, buffer1]])
static napi_value js_async_io(napi_env env, napi_callback_info info) {
  size_t argc = 8 + IO_MAX_BUFFERS;
  napi_value argv[8 + IO_MAX_BUFFERS], name;
  NAPI_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 8) return throw_errno(env, EINVAL, "asyncIo");
  int32_t op;
  if (!arg_i32_checked(env, argv[0], &op)) return NULL;
  if (op < IO_COPY_FILE_RANGE || op > IO_OPENAT) return throw_errno(env, EINVAL, "asyncIo");
  int64_t a[6];
  for (int i = 0; i < 6; i++) {
    if (napi_get_value_int64(env, argv[1 + i], &a[i]) != napi_ok) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "asyncIo: expected numbers");
      return NULL;
    }
  }
  napi_valuetype t;
  NAPI_CHECK(env, napi_typeof(env, argv[7], &t));
  if (t != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "asyncIo: expected a callback");
    return NULL;
  }
  io_job_t *j = calloc(1, sizeof *j);
  if (!j) return throw_errno(env, ENOMEM, "asyncIo");
  j->op = op;
  memcpy(j->a, a, sizeof a);
  for (size_t b = 0; b + 8 < argc && b < IO_MAX_BUFFERS; b++) {
    if (napi_get_buffer_info(env, argv[8 + b], &j->buffer[b], &j->buffer_len[b]) != napi_ok ||
        napi_create_reference(env, argv[8 + b], 1, &j->buffer_refs[b]) != napi_ok) {
      io_job_free(env, j);
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "asyncIo: expected Buffers after the callback");
      return NULL;
    }
  }
  // The path calls need a NUL-terminated path in buffer 0; statx its 256-byte result in buffer 1.
  int needs_path = op == IO_STATX || op == IO_OPENAT;
  if ((needs_path && (!j->buffer[0] || !memchr(j->buffer[0], 0, j->buffer_len[0]))) ||
      (op == IO_STATX && (!j->buffer[1] || j->buffer_len[1] < sizeof(struct statx)))) {
    io_job_free(env, j);
    return throw_errno(env, EINVAL, "asyncIo");
  }
  if (napi_create_reference(env, argv[7], 1, &j->callback) != napi_ok) {
    io_job_free(env, j);
    return throw_napi_failure(env, napi_generic_failure, "asyncIo: napi_create_reference");
  }
  if (napi_create_string_utf8(env, "virtiofsd-ts:io", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, io_execute, io_complete, j, &j->work) != napi_ok) {
    io_job_free(env, j);
    return throw_napi_failure(env, napi_generic_failure, "asyncIo: napi_create_async_work");
  }
  if (napi_queue_async_work(env, j->work) != napi_ok) {
    napi_delete_async_work(env, j->work);
    io_job_free(env, j);
    return throw_napi_failure(env, napi_generic_failure, "asyncIo: napi_queue_async_work");
  }
  return NULL;
}


// preadv2(fd, buffers, position, flags) -> bytes read, or -errno. Node's fs has
// preadv but no flags: RWF_NOWAIT reads what the page cache holds without ever
// waiting for the disk, and answers EAGAIN otherwise (the caller then reads on
// the pool). Failures are returned, not thrown: EAGAIN is an expected answer.
#define PREADV2_MAX_IOV 1024
static napi_value js_preadv2(napi_env env, napi_callback_info info) {
  GET_ARGS(4, 4, "preadv2");
  napi_value out;
  int32_t fd, flags;
  int64_t position;
  uint32_t n;
  if (!arg_i32_checked(env, argv[0], &fd)) return NULL;
  if (napi_get_array_length(env, argv[1], &n) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "preadv2: expected an array of Buffers");
    return NULL;
  }
  if (napi_get_value_int64(env, argv[2], &position) != napi_ok || position < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "preadv2: expected a position >= 0");
    return NULL;
  }
  if (!arg_i32_checked(env, argv[3], &flags)) return NULL;
  if (n == 0 || n > PREADV2_MAX_IOV) return throw_errno(env, EINVAL, "preadv2");
  struct iovec iov[PREADV2_MAX_IOV];
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    NAPI_CHECK(env, napi_get_element(env, argv[1], i, &v));
    if (napi_get_buffer_info(env, v, &iov[i].iov_base, &iov[i].iov_len) != napi_ok) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "preadv2: expected an array of Buffers");
      return NULL;
    }
  }
  ssize_t r;
  do r = preadv2(fd, iov, (int)n, (off_t)position, flags);
  while (r < 0 && errno == EINTR);
  NAPI_CHECK(env, napi_create_int64(env, r < 0 ? -errno : r, &out));
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"watch", NULL, js_watch, NULL, NULL, NULL, napi_default, NULL},
      {"unwatch", NULL, js_unwatch, NULL, NULL, NULL, napi_default, NULL},
      {"sendmsg", NULL, js_sendmsg, NULL, NULL, NULL, napi_default, NULL},
      {"recvmsg", NULL, js_recvmsg, NULL, NULL, NULL, napi_default, NULL},
      {"mmap", NULL, js_mmap, NULL, NULL, NULL, napi_default, NULL},
      {"munmap", NULL, js_munmap, NULL, NULL, NULL, napi_default, NULL},
      {"view", NULL, js_view, NULL, NULL, NULL, napi_default, NULL},
      {"copyGuarded", NULL, js_copy_guarded, NULL, NULL, NULL, napi_default, NULL},
      {"asyncIo", NULL, js_async_io, NULL, NULL, NULL, napi_default, NULL},
      {"preadv2", NULL, js_preadv2, NULL, NULL, NULL, napi_default, NULL},
      {"guardRange", NULL, js_guard_range, NULL, NULL, NULL, napi_default, NULL},
      {"unguardRange", NULL, js_unguard_range, NULL, NULL, NULL, napi_default, NULL},
      {"guardFaults", NULL, js_guard_faults, NULL, NULL, NULL, napi_default, NULL},
      {"guardFaultTotal", NULL, js_guard_fault_total, NULL, NULL, NULL, napi_default, NULL},
  };
  NAPI_CHECK(env, napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
