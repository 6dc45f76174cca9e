/* bootstrap.c: rank discovery from launcher environments and a TCP rendezvous that hands one
 * blob (e.g. a 128-byte NCCL unique id) from rank 0 to every other rank.
 *
 * Invariants: nothing here exits or aborts; every failure returns a zp_status with a message
 * naming the variable, or the address:port and the step that failed (resolve, listen, connect,
 * handshake, receive). Every socket operation is bounded by the caller's deadline. Frames are
 * fixed 24-byte headers (magic "ZPBS", version, kind, two u32 fields, u64 length; big-endian)
 * followed by exactly `length` bytes. SIGPIPE is never raised (MSG_NOSIGNAL). */
#define _GNU_SOURCE
#include "bootstrap.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "zp/zp_plugin.h"

static int bs_err(char* err, size_t errlen, int code, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int bs_err(char* err, size_t errlen, int code, const char* fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

/* ---------------------------------------------------------------- environment ---- */

typedef struct {
  const char* source;
  const char* rank_var;
  const char* world_var;
  const char* local_var;
} env_family;

static const env_family k_families[] = {
    {"zp", "ZP_RANK", "ZP_WORLD_SIZE", "ZP_LOCAL_RANK"},
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
};
#define N_FAMILIES ((int)(sizeof k_families / sizeof k_families[0]))

static int family_index(void) {
  for (int i = 0; i < N_FAMILIES; i++)
    if (getenv(k_families[i].rank_var) || getenv(k_families[i].world_var)) return i;
  return -1;
}

const char* zp_bootstrap_env_source(void) {
  int i = family_index();
  return i < 0 ? "none" : k_families[i].source;
}

/* Parses a whole decimal integer (optional sign, no spaces, fits in int). */
static int parse_env_int(const env_family* f, const char* var, int* out, char* err,
                         size_t errlen) {
  const char* v = getenv(var);
  if (!v)
    return bs_err(err, errlen, ZP_E_INVALID,
                  "%s is not set, but %s is (%s launcher environment needs %s, %s and %s)", var,
                  getenv(f->rank_var) ? f->rank_var : f->world_var, f->source, f->rank_var,
                  f->world_var, f->local_var);
  if (!*v) return bs_err(err, errlen, ZP_E_INVALID, "%s is set but empty", var);
  errno = 0;
  char* end = NULL;
  long x = strtol(v, &end, 10);
  if (end == v || *end != '\0' || errno == ERANGE || x < INT_MIN || x > INT_MAX)
    return bs_err(err, errlen, ZP_E_INVALID, "%s='%s' is not an integer", var, v);
  *out = (int)x;
  return ZP_OK;
}

int zp_bootstrap_env(int* rank, int* world, int* local_rank, char* err, size_t errlen) {
  if (!rank || !world || !local_rank)
    return bs_err(err, errlen, ZP_E_INVALID, "zp_bootstrap_env: NULL output");
  int fi = family_index();
  if (fi < 0) {
    *rank = 0, *world = 1, *local_rank = 0;
    return ZP_OK;
  }
  const env_family* f = &k_families[fi];
  int r, w, l, rc;
  if ((rc = parse_env_int(f, f->rank_var, &r, err, errlen))) return rc;
  if ((rc = parse_env_int(f, f->world_var, &w, err, errlen))) return rc;
  if ((rc = parse_env_int(f, f->local_var, &l, err, errlen))) return rc;
  if (w < 1)
    return bs_err(err, errlen, ZP_E_INVALID, "%s=%d: the world size must be at least 1",
                  f->world_var, w);
  if (r < 0 || r >= w)
    return bs_err(err, errlen, ZP_E_INVALID, "%s=%d is out of range for %s=%d (need 0 <= rank < %d)",
                  f->rank_var, r, f->world_var, w, w);
  if (l < 0 || l >= w)
    return bs_err(err, errlen, ZP_E_INVALID,
                  "%s=%d is out of range for %s=%d (need 0 <= local rank < %d)", f->local_var, l,
                  f->world_var, w, w);
  *rank = r, *world = w, *local_rank = l;
  return ZP_OK;
}

int zp_bootstrap_master(char* addr, size_t addrlen, int* port, char* err, size_t errlen) {
  if (!addr || !addrlen || !port)
    return bs_err(err, errlen, ZP_E_INVALID, "zp_bootstrap_master: NULL output");
  const char* a = getenv("MASTER_ADDR");
  if (!a || !*a) a = "127.0.0.1";
  if (strlen(a) >= addrlen)
    return bs_err(err, errlen, ZP_E_INVALID, "MASTER_ADDR='%s' is too long", a);
  const char* p = getenv("MASTER_PORT");
  if (!p || !*p)
    return bs_err(err, errlen, ZP_E_INVALID, "MASTER_PORT is not set (needed for the TCP rendezvous with %s)", a);
  char* end = NULL;
  errno = 0;
  long x = strtol(p, &end, 10);
  if (end == p || *end || errno || x < 1 || x > 65535)
    return bs_err(err, errlen, ZP_E_INVALID, "MASTER_PORT='%s' is not a port number (1..65535)", p);
  memcpy(addr, a, strlen(a) + 1);
  *port = (int)x;
  return ZP_OK;
}

/* ---------------------------------------------------------------- TCP rendezvous ---- */

#define BS_MAGIC 0x5a504253u /* "ZPBS" */
#define BS_VERSION 1u
#define BS_HDR 24
#define BS_MAX_LEN (1ull << 30)
enum { BS_HELLO = 1, BS_BLOB = 2, BS_REFUSE = 3, BS_ACK = 4 };
enum { BS_REFUSE_WORLD = 1, BS_REFUSE_LEN = 2, BS_REFUSE_RANK = 3, BS_REFUSE_DUP = 4 };

typedef struct {
  uint32_t magic;
  uint32_t version, kind;
  uint32_t a, b; /* hello/ack: rank, world; blob: world, 0; refuse: reason, world */
  uint64_t len;
} bs_hdr;

static void put32(unsigned char* p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}
static uint32_t get32(const unsigned char* p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void hdr_encode(const bs_hdr* h, unsigned char* p) {
  put32(p, h->magic);
  p[4] = (unsigned char)(h->version >> 8), p[5] = (unsigned char)h->version;
  p[6] = (unsigned char)(h->kind >> 8), p[7] = (unsigned char)h->kind;
  put32(p + 8, h->a);
  put32(p + 12, h->b);
  put32(p + 16, (uint32_t)(h->len >> 32));
  put32(p + 20, (uint32_t)h->len);
}
static void hdr_decode(const unsigned char* p, bs_hdr* h) {
  h->magic = get32(p);
  h->version = (uint32_t)p[4] << 8 | p[5];
  h->kind = (uint32_t)p[6] << 8 | p[7];
  h->a = get32(p + 8);
  h->b = get32(p + 12);
  h->len = (uint64_t)get32(p + 16) << 32 | get32(p + 20);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static int ms_left(double deadline) {
  double left = deadline - now_s();
  if (left <= 0) return 0;
  if (left > 1e6) return 1000000000;
  return (int)(left * 1000.0) + 1;
}

/* Reads or writes exactly n bytes before the deadline. Returns 0, or -1 with errno
 * (ETIMEDOUT on deadline, ECONNRESET when the peer closed early). */
static int io_full(int fd, void* buf, size_t n, int writing, double deadline) {
  unsigned char* p = buf;
  size_t done = 0;
  while (done < n) {
    struct pollfd pfd = {.fd = fd, .events = writing ? POLLOUT : POLLIN};
    int ms = ms_left(deadline);
    if (ms <= 0) {
      errno = ETIMEDOUT;
      return -1;
    }
    int pr = poll(&pfd, 1, ms);
    if (pr < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (pr == 0) continue; /* re-check the deadline */
    ssize_t k = writing ? send(fd, p + done, n - done, MSG_NOSIGNAL)
                        : recv(fd, p + done, n - done, 0);
    if (k < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return -1;
    }
    if (k == 0) {
      errno = ECONNRESET;
      return -1;
    }
    done += (size_t)k;
  }
  return 0;
}

static int send_hdr(int fd, const bs_hdr* h, double deadline) {
  unsigned char b[BS_HDR];
  hdr_encode(h, b);
  return io_full(fd, b, BS_HDR, 1, deadline);
}
static int recv_hdr(int fd, bs_hdr* h, double deadline) {
  unsigned char b[BS_HDR];
  if (io_full(fd, b, BS_HDR, 0, deadline)) return -1;
  hdr_decode(b, h);
  return 0;
}

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int is_loopback(const struct sockaddr* sa) {
  if (sa->sa_family == AF_INET)
    return (ntohl(((const struct sockaddr_in*)sa)->sin_addr.s_addr) >> 24) == 127;
  if (sa->sa_family == AF_INET6)
    return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6*)sa)->sin6_addr);
  return 0;
}

static const char* refuse_reason(uint32_t r) {
  switch (r) {
    case BS_REFUSE_WORLD: return "world size differs";
    case BS_REFUSE_LEN: return "blob length differs";
    case BS_REFUSE_RANK: return "rank out of range";
    case BS_REFUSE_DUP: return "another connection already claimed this rank";
    default: return "unknown reason";
  }
}

static int bcast_root(const char* addr, int port, int world, const void* blob, size_t len,
                      double timeout_s, double deadline, char* err, size_t errlen) {
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", port);
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  int g = getaddrinfo(addr, portstr, &hints, &res);
  if (g != 0)
    return bs_err(err, errlen, ZP_E_COMM, "rank 0: cannot resolve master address '%s': %s", addr,
                  gai_strerror(g));
  /* bind: the exact address when it is a loopback one, otherwise every interface of its
   * family (a hostname may resolve to 127.0.1.1 locally but to the real NIC elsewhere). */
  struct sockaddr_storage ss;
  socklen_t sslen;
  memset(&ss, 0, sizeof ss);
  int fam = res->ai_family;
  if (is_loopback(res->ai_addr)) {
    memcpy(&ss, res->ai_addr, res->ai_addrlen);
    sslen = res->ai_addrlen;
  } else if (fam == AF_INET6) {
    struct sockaddr_in6* s6 = (struct sockaddr_in6*)&ss;
    s6->sin6_family = AF_INET6, s6->sin6_addr = in6addr_any, s6->sin6_port = htons((uint16_t)port);
    sslen = sizeof *s6;
  } else {
    struct sockaddr_in* s4 = (struct sockaddr_in*)&ss;
    s4->sin_family = AF_INET, s4->sin_addr.s_addr = htonl(INADDR_ANY), s4->sin_port = htons((uint16_t)port);
    sslen = sizeof *s4;
  }
  freeaddrinfo(res);
  int lfd = socket(fam, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0)
    return bs_err(err, errlen, ZP_E_COMM, "rank 0: socket() for %s:%d failed: %s", addr, port,
                  strerror(errno));
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(lfd, (struct sockaddr*)&ss, sslen) != 0 || listen(lfd, world) != 0) {
    int e = errno;
    close(lfd);
    return bs_err(err, errlen, ZP_E_COMM, "rank 0: cannot listen on port %d (for %s:%d): %s", port,
                  addr, port, strerror(e));
  }
  set_nonblock(lfd);

  unsigned char* served = calloc((size_t)world, 1);
  if (!served) {
    close(lfd);
    return bs_err(err, errlen, ZP_E_NOMEM, "rank 0: out of memory");
  }
  int n_served = 0, rc = ZP_OK;
  char last_problem[200] = "";
  while (n_served < world - 1) {
    int ms = ms_left(deadline);
    if (ms <= 0) {
      char missing[160] = "";
      size_t off = 0;
      for (int r = 1; r < world && off + 12 < sizeof missing; r++)
        if (!served[r]) off += (size_t)snprintf(missing + off, sizeof missing - off, "%s%d", off ? ", " : "", r);
      rc = bs_err(err, errlen, ZP_E_TIMEOUT,
                  "rank 0 at %s:%d: only %d of %d ranks connected within %.1f s (missing: %s)%s%s",
                  addr, port, n_served, world - 1, timeout_s, missing,
                  last_problem[0] ? "; last problem: " : "", last_problem);
      break;
    }
    struct pollfd pfd = {.fd = lfd, .events = POLLIN};
    int pr = poll(&pfd, 1, ms);
    if (pr <= 0) continue;
    int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (cfd < 0) continue;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* a genuine rank says hello at once: give a stray connection at most 2 s */
    double hd = now_s() + 2.0;
    if (hd > deadline) hd = deadline;
    bs_hdr h;
    if (recv_hdr(cfd, &h, hd) != 0) {
      snprintf(last_problem, sizeof last_problem, "a connection sent no hello (%s)", strerror(errno));
      close(cfd);
      continue;
    }
    if (h.magic != BS_MAGIC || h.version != BS_VERSION || h.kind != BS_HELLO) {
      snprintf(last_problem, sizeof last_problem,
               "a connection sent a non-zp frame (magic 0x%08x version %u kind %u)", h.magic,
               h.version, h.kind);
      close(cfd);
      continue;
    }
    uint32_t reason = 0;
    if (h.b != (uint32_t)world) reason = BS_REFUSE_WORLD;
    else if (h.len != (uint64_t)len) reason = BS_REFUSE_LEN;
    else if (h.a == 0 || h.a >= (uint32_t)world) reason = BS_REFUSE_RANK;
    else if (served[h.a]) reason = BS_REFUSE_DUP;
    if (reason) {
      bs_hdr r = {BS_MAGIC, BS_VERSION, BS_REFUSE, reason, (uint32_t)world, (uint64_t)len};
      send_hdr(cfd, &r, hd);
      close(cfd);
      if (reason == BS_REFUSE_WORLD || reason == BS_REFUSE_LEN) {
        rc = bs_err(err, errlen, ZP_E_COMM,
                    "rank 0 at %s:%d: rank %u connected with world %u and blob length %llu, but "
                    "rank 0 has world %d and length %zu (%s)",
                    addr, port, h.a, h.b, (unsigned long long)h.len, world, len,
                    refuse_reason(reason));
        break;
      }
      snprintf(last_problem, sizeof last_problem, "refused a connection claiming rank %u: %s", h.a,
               refuse_reason(reason));
      continue;
    }
    bs_hdr r = {BS_MAGIC, BS_VERSION, BS_BLOB, (uint32_t)world, 0, (uint64_t)len};
    bs_hdr ack;
    if (send_hdr(cfd, &r, deadline) != 0 || io_full(cfd, (void*)blob, len, 1, deadline) != 0 ||
        recv_hdr(cfd, &ack, deadline) != 0) {
      snprintf(last_problem, sizeof last_problem, "sending to rank %u failed: %s", h.a, strerror(errno));
      close(cfd);
      continue;
    }
    close(cfd);
    if (ack.magic != BS_MAGIC || ack.kind != BS_ACK || ack.a != h.a) {
      snprintf(last_problem, sizeof last_problem, "rank %u sent a bad acknowledgement", h.a);
      continue;
    }
    served[h.a] = 1;
    n_served++;
  }
  free(served);
  close(lfd);
  return rc;
}

static int bcast_peer(const char* addr, int port, int rank, int world, void* blob, size_t len,
                      double timeout_s, double deadline, char* err, size_t errlen) {
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", port);
  char last[200] = "no attempt";
  int fd = -1;
  for (;;) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int g = getaddrinfo(addr, portstr, &hints, &res);
    if (g != 0) {
      snprintf(last, sizeof last, "resolve: %s", gai_strerror(g));
    } else {
      for (struct addrinfo* ai = res; ai && fd < 0; ai = ai->ai_next) {
        int s = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (s < 0) {
          snprintf(last, sizeof last, "socket: %s", strerror(errno));
          continue;
        }
        int ok = connect(s, ai->ai_addr, ai->ai_addrlen) == 0;
        if (!ok && errno == EINPROGRESS) {
          struct pollfd pfd = {.fd = s, .events = POLLOUT};
          int ms = ms_left(deadline);
          if (ms > 1000) ms = 1000;
          if (poll(&pfd, 1, ms) == 1) {
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            getsockopt(s, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            if (soerr == 0) ok = 1;
            else snprintf(last, sizeof last, "connect: %s", strerror(soerr));
          } else {
            snprintf(last, sizeof last, "connect: no answer");
          }
        } else if (!ok) {
          snprintf(last, sizeof last, "connect: %s", strerror(errno));
        }
        if (ok) fd = s;
        else close(s);
      }
      freeaddrinfo(res);
    }
    if (fd >= 0) break;
    int ms = ms_left(deadline);
    if (ms <= 0)
      return bs_err(err, errlen, ZP_E_TIMEOUT,
                    "rank %d: could not connect to rank 0 at %s:%d within %.1f s (last error: %s)",
                    rank, addr, port, timeout_s, last);
    struct timespec ts = {0, (ms < 100 ? ms : 100) * 1000000L};
    nanosleep(&ts, NULL);
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  bs_hdr h = {BS_MAGIC, BS_VERSION, BS_HELLO, (uint32_t)rank, (uint32_t)world, (uint64_t)len};
  bs_hdr r;
  int rc = ZP_OK;
  if (send_hdr(fd, &h, deadline) != 0) {
    rc = bs_err(err, errlen, errno == ETIMEDOUT ? ZP_E_TIMEOUT : ZP_E_COMM,
                "rank %d: sending hello to %s:%d failed: %s", rank, addr, port, strerror(errno));
  } else if (recv_hdr(fd, &r, deadline) != 0) {
    rc = bs_err(err, errlen, errno == ETIMEDOUT ? ZP_E_TIMEOUT : ZP_E_COMM,
                "rank %d: no reply from %s:%d within %.1f s: %s", rank, addr, port, timeout_s,
                strerror(errno));
  } else if (r.magic != BS_MAGIC || r.version != BS_VERSION) {
    rc = bs_err(err, errlen, ZP_E_COMM,
                "rank %d: %s:%d answered with something that is not a zp bootstrap frame "
                "(magic 0x%08x version %u; expected 0x%08x version %u)",
                rank, addr, port, r.magic, r.version, BS_MAGIC, BS_VERSION);
  } else if (r.kind == BS_REFUSE) {
    rc = bs_err(err, errlen, ZP_E_COMM,
                "rank %d: rank 0 at %s:%d refused the connection: %s (rank 0 has world %u and "
                "length %llu; this rank has world %d and length %zu)",
                rank, addr, port, refuse_reason(r.a), r.b, (unsigned long long)r.len, world, len);
  } else if (r.kind != BS_BLOB || r.len != (uint64_t)len || r.a != (uint32_t)world) {
    rc = bs_err(err, errlen, ZP_E_COMM,
                "rank %d: bad frame from %s:%d (kind %u, world %u, length %llu)", rank, addr,
                port, r.kind, r.a, (unsigned long long)r.len);
  } else if (io_full(fd, blob, len, 0, deadline) != 0) {
    rc = bs_err(err, errlen, errno == ETIMEDOUT ? ZP_E_TIMEOUT : ZP_E_COMM,
                "rank %d: receiving %zu bytes from %s:%d failed: %s", rank, len, addr, port,
                strerror(errno));
  } else {
    bs_hdr a = {BS_MAGIC, BS_VERSION, BS_ACK, (uint32_t)rank, (uint32_t)world, (uint64_t)len};
    if (send_hdr(fd, &a, deadline) != 0)
      rc = bs_err(err, errlen, ZP_E_COMM, "rank %d: acknowledging to %s:%d failed: %s", rank,
                  addr, port, strerror(errno));
  }
  close(fd);
  return rc;
}

int zp_tcp_bcast(const char* master_addr, int port, int rank, int world, void* blob, size_t len,
                 double timeout_s, char* err, size_t errlen) {
  if (err && errlen) err[0] = '\0';
  if (!master_addr || !*master_addr)
    return bs_err(err, errlen, ZP_E_INVALID, "zp_tcp_bcast: empty master address");
  if (port < 1 || port > 65535)
    return bs_err(err, errlen, ZP_E_INVALID, "zp_tcp_bcast: port %d is out of range (1..65535)", port);
  if (world < 1 || rank < 0 || rank >= world)
    return bs_err(err, errlen, ZP_E_INVALID, "zp_tcp_bcast: rank %d out of range for world %d",
                  rank, world);
  if (len && !blob) return bs_err(err, errlen, ZP_E_INVALID, "zp_tcp_bcast: NULL blob");
  if ((uint64_t)len > BS_MAX_LEN)
    return bs_err(err, errlen, ZP_E_INVALID, "zp_tcp_bcast: blob of %zu bytes is too large", len);
  if (!(timeout_s > 0)) timeout_s = 300.0;
  if (world == 1) return ZP_OK;
  double deadline = now_s() + timeout_s;
  if (rank == 0)
    return bcast_root(master_addr, port, world, blob, len, timeout_s, deadline, err, errlen);
  return bcast_peer(master_addr, port, rank, world, blob, len, timeout_s, deadline, err, errlen);
}
