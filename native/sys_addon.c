// The few syscalls that koffi cannot serve well: fd readiness in the libuv
// loop (uv_poll), SCM_RIGHTS sendmsg/recvmsg, and mmap'd memory exposed as
// external ArrayBuffers. Everything else lives in src/sys/libc.ts via koffi.
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
#include <uv.h>

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

static int32_t arg_i32(napi_env env, napi_value v) {
  int32_t x = 0;
  napi_get_value_int32(env, v, &x);
  return x;
}

static uint64_t arg_u64(napi_env env, napi_value v) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_bigint) {
    uint64_t x = 0;
    bool lossless;
    napi_get_value_bigint_uint64(env, v, &x, &lossless);
    return x;
  }
  double d = 0;
  napi_get_value_double(env, v, &d);
  return (uint64_t)d;
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
  napi_value argv[2], ext, name;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int fd = arg_i32(env, argv[0]);
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  watcher_t *w = calloc(1, sizeof *w);
  w->env = env;
  int rc = uv_poll_init(loop, &w->poll, fd);
  if (rc < 0) {
    free(w);
    return throw_errno(env, -rc, "uv_poll_init");
  }
  w->poll.data = w;
  napi_create_reference(env, argv[1], 1, &w->callback);
  napi_create_string_utf8(env, "fdwatch", NAPI_AUTO_LENGTH, &name);
  napi_value resource;
  napi_create_object(env, &resource);
  napi_async_init(env, resource, name, &w->context);
  uv_poll_start(&w->poll, UV_READABLE, on_poll);
  napi_create_external(env, w, watcher_finalize, NULL, &ext);
  return ext;
}

static napi_value js_unwatch(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  watcher_t *w;
  if (napi_get_value_external(env, argv[0], (void **)&w) != napi_ok) return NULL;
  watcher_close(env, w);
  return NULL;
}

/* ---------------- SCM_RIGHTS ---------------- */

// sendmsg(fd, buffer, fds[]) -> bytes sent
static napi_value js_sendmsg(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], out;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int fd = arg_i32(env, argv[0]);
  void *data;
  size_t len;
  napi_get_buffer_info(env, argv[1], &data, &len);
  uint32_t nfds = 0;
  if (argc > 2) napi_get_array_length(env, argv[2], &nfds);
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
      napi_get_element(env, argv[2], i, &v);
      fds[i] = arg_i32(env, v);
    }
  }
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) return throw_errno(env, errno, "sendmsg");
  napi_create_int64(env, n, &out);
  return out;
}

// recvmsg(fd, buffer, offset, length) -> [bytes, ...fds]; bytes 0 = EOF.
static napi_value js_recvmsg(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], out, v;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int fd = arg_i32(env, argv[0]);
  char *data;
  size_t len;
  napi_get_buffer_info(env, argv[1], (void **)&data, &len);
  uint32_t off = argc > 2 ? (uint32_t)arg_i32(env, argv[2]) : 0;
  uint32_t want = argc > 3 ? (uint32_t)arg_i32(env, argv[3]) : (uint32_t)len;
  if (off > len || want > len - off) return throw_errno(env, EINVAL, "recvmsg");
  struct iovec iov = {data + off, want};
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
  napi_create_array(env, &out);
  napi_create_int64(env, n, &v);
  napi_set_element(env, out, 0, v);
  uint32_t idx = 1;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int *fds = (int *)CMSG_DATA(c);
    for (int i = 0; i < count; i++) {
      napi_create_int32(env, fds[i], &v);
      napi_set_element(env, out, idx++, v);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    napi_value t;
    napi_get_boolean(env, true, &t);
    napi_set_named_property(env, out, "ctrunc", t);
  }
  return out;
}

/* ---------------- memory mappings ---------------- */

// mmap(addr, length, prot, flags, fd, offset) -> address (BigInt)
static napi_value js_mmap(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6], out;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *addr = (void *)(uintptr_t)arg_u64(env, argv[0]);
  size_t length = (size_t)arg_u64(env, argv[1]);
  int prot = arg_i32(env, argv[2]);
  int flags = arg_i32(env, argv[3]);
  int fd = arg_i32(env, argv[4]);
  off_t offset = (off_t)arg_u64(env, argv[5]);
  void *p = mmap(addr, length, prot, flags, fd, offset);
  if (p == MAP_FAILED) return throw_errno(env, errno, "mmap");
  napi_create_bigint_uint64(env, (uint64_t)(uintptr_t)p, &out);
  return out;
}

static napi_value js_munmap(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *addr = (void *)(uintptr_t)arg_u64(env, argv[0]);
  size_t length = (size_t)arg_u64(env, argv[1]);
  if (munmap(addr, length) < 0) return throw_errno(env, errno, "munmap");
  return NULL;
}

// view(address, length) -> ArrayBuffer over that memory; the caller keeps the
// mapping alive for as long as views exist.
static napi_value js_view(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *addr = (void *)(uintptr_t)arg_u64(env, argv[0]);
  size_t length = (size_t)arg_u64(env, argv[1]);
  napi_status s = napi_create_external_arraybuffer(env, addr, length, NULL, NULL, &out);
  if (s != napi_ok) return throw_errno(env, ENOMEM, "napi_create_external_arraybuffer");
  return out;
}

/* ---------------- fault-guarded copies ---------------- */

// A file mapped in a DAX window raises SIGBUS when touched past the file's end
// (e.g. the host truncated it). Copies through such memory run with a SIGBUS
// handler that jumps back and reports the fault instead of killing Node.
static __thread sigjmp_buf *volatile guard_jmp;

static void on_sigbus(int sig, siginfo_t *info, void *ctx) {
  (void)info;
  (void)ctx;
  if (guard_jmp) siglongjmp(*guard_jmp, 1);
  signal(sig, SIG_DFL);
  raise(sig);
}

static int guard_installed;

// copyGuarded(dst, src) -> bytes copied, or -1 if the memory faulted (SIGBUS/SIGSEGV).
static napi_value js_copy_guarded(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *dst, *src;
  size_t dlen, slen;
  napi_get_buffer_info(env, argv[0], &dst, &dlen);
  napi_get_buffer_info(env, argv[1], &src, &slen);
  size_t n = dlen < slen ? dlen : slen;
  if (!guard_installed) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
    guard_installed = 1;
  }
  sigjmp_buf jmp;
  volatile int64_t result = (int64_t)n;
  if (sigsetjmp(jmp, 1) == 0) {
    guard_jmp = &jmp;
    memcpy(dst, src, n);
  } else {
    result = -1;
  }
  guard_jmp = NULL;
  napi_create_int64(env, result, &out);
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
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
