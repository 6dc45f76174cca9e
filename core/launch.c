/* launch.c: `zp launch -n N [--timeout SECONDS] [--] ARGS...`: N local ranks of one job.
 *
 * Invariants:
 * - The shared-memory segment ("/zp-<pid>-<random>") exists before any rank starts and is
 *   unlinked before zp_cmd_launch returns, whatever happened.
 * - Each rank runs in its own process group with stdin from /dev/null and the environment
 *   ZP_RANK, ZP_WORLD_SIZE, ZP_LOCAL_RANK, ZP_SHM_NAME, ZP_COMM_TIMEOUT (and OMP_NUM_THREADS =
 *   cores / N when unset). Its stdout and stderr come back through pipes and are printed line
 *   by line with a "[rank K] " prefix, each line in one write (lines never interleave).
 * - What runs: ARGS[0] ending in ".toml" runs `/proc/self/exe train ARGS...`; otherwise ARGS[0]
 *   containing '/' is executed as given; anything else runs `/proc/self/exe ARGS...` (a
 *   subcommand such as `train config.toml`).
 * - The first rank that exits non-zero or by a signal is reported ("zp launch: rank K exited
 *   with status S" / "was killed by signal NAME"); the others get SIGTERM (+SIGCONT, so stopped
 *   ranks see it), SIGKILL after a 5 s grace period; the launcher then returns 1. All ranks
 *   exiting 0 returns 0. SIGINT/SIGTERM/SIGHUP/SIGUSR1 to the launcher are forwarded to every
 *   rank; a second SIGINT/SIGTERM kills them. Usage errors return 2.
 * - The launcher never exits or aborts; a forked child that cannot exec writes why and _exits
 *   with 127. Signal handlers are restored before returning. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/random.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "comm.h"

extern char** environ;

#define GRACE_S 5.0
#define LINE_CAP 65536

static int g_sig_w = -1; /* write end of the self-pipe (signal handlers only write a byte) */

static void on_signal(int sig) {
  int e = errno;
  unsigned char b = (unsigned char)sig;
  if (g_sig_w >= 0) {
    ssize_t k = write(g_sig_w, &b, 1);
    (void)k;
  }
  errno = e;
}

static const char* sig_name(int sig) {
  switch (sig) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    case SIGXCPU: return "SIGXCPU";
    case SIGXFSZ: return "SIGXFSZ";
    case SIGSYS: return "SIGSYS";
    default: return NULL;
  }
}
static void sig_str(int sig, char* buf, size_t len) {
  const char* n = sig_name(sig);
  if (n) snprintf(buf, len, "%s", n);
  else snprintf(buf, len, "%d", sig);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void write_all(int fd, const char* p, size_t n) {
  while (n) {
    ssize_t k = write(fd, p, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      return; /* stdout gone: drop the output, keep supervising */
    }
    p += k, n -= (size_t)k;
  }
}

static void usage(FILE* f) {
  fprintf(f,
          "usage: zp launch -n N [--timeout SECONDS] [--] CONFIG.toml [--set key=value]...\n"
          "       zp launch -n N [--timeout SECONDS] [--] SUBCOMMAND ARGS...\n"
          "       zp launch -n N [--timeout SECONDS] [--] /path/to/program ARGS...\n"
          "  -n, --nproc N      number of local ranks (1..%d)\n"
          "  --timeout SECONDS  deadline of every communication wait (ZP_COMM_TIMEOUT, default 300)\n",
          ZP_SHM_MAX_RANKS);
}

/* one output stream of one rank */
typedef struct {
  int fd;   /* read end, -1 when closed */
  int out;  /* 1 or 2 */
  size_t len;
  char buf[LINE_CAP];
} stream;

typedef struct {
  pid_t pid; /* 0 once reaped */
  int status, reaped, signalled_by_us;
  stream s[2];
} rank_proc;

static void emit_line(int rank, int out, const char* p, size_t n) {
  char pre[32];
  int pl = snprintf(pre, sizeof pre, "[rank %d] ", rank);
  char* line = malloc((size_t)pl + n + 1);
  if (!line) {
    write_all(out, pre, (size_t)pl);
    write_all(out, p, n);
    write_all(out, "\n", 1);
    return;
  }
  memcpy(line, pre, (size_t)pl);
  memcpy(line + pl, p, n);
  line[(size_t)pl + n] = '\n';
  write_all(out, line, (size_t)pl + n + 1);
  free(line);
}

/* Splits the buffered bytes into lines; with `flush` also emits a trailing partial line. */
static void stream_lines(int rank, stream* s, int flush) {
  size_t start = 0;
  for (size_t i = 0; i < s->len; i++) {
    if (s->buf[i] == '\n') {
      emit_line(rank, s->out, s->buf + start, i - start);
      start = i + 1;
    }
  }
  if (start < s->len && (flush || (start == 0 && s->len == sizeof s->buf))) {
    emit_line(rank, s->out, s->buf + start, s->len - start); /* overlong or final line */
    start = s->len;
  }
  memmove(s->buf, s->buf + start, s->len - start);
  s->len -= start;
}

/* Reads what is available now. Returns 0 on EOF/error (stream closed), 1 otherwise. */
static int stream_read(int rank, stream* s) {
  for (;;) {
    if (s->len == sizeof s->buf) stream_lines(rank, s, 0);
    ssize_t k = read(s->fd, s->buf + s->len, sizeof s->buf - s->len);
    if (k > 0) {
      s->len += (size_t)k;
      stream_lines(rank, s, 0);
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 1;
    stream_lines(rank, s, 1);
    close(s->fd);
    s->fd = -1;
    return 0;
  }
}

static void stream_close(int rank, stream* s) {
  if (s->fd < 0) return;
  stream_read(rank, s); /* drain what the rank wrote before it exited */
  if (s->fd >= 0) {
    stream_lines(rank, s, 1);
    close(s->fd);
    s->fd = -1;
  }
}

/* env for one rank: the launcher's environment minus ours, plus ours */
static char** rank_env(int rank, int n, const char* shm, const char* timeout, int omp) {
  static const char* ours[] = {"ZP_RANK=", "ZP_WORLD_SIZE=", "ZP_LOCAL_RANK=", "ZP_SHM_NAME=",
                               "ZP_COMM_TIMEOUT="};
  size_t ne = 0;
  while (environ && environ[ne]) ne++;
  char** env = calloc(ne + 8, sizeof(char*));
  if (!env) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < ne; i++) {
    int skip = 0;
    for (size_t j = 0; j < sizeof ours / sizeof ours[0]; j++)
      if (strncmp(environ[i], ours[j], strlen(ours[j])) == 0) skip = 1;
    if (!skip) env[k++] = strdup(environ[i]);
  }
  char b[512];
  snprintf(b, sizeof b, "ZP_RANK=%d", rank), env[k++] = strdup(b);
  snprintf(b, sizeof b, "ZP_WORLD_SIZE=%d", n), env[k++] = strdup(b);
  snprintf(b, sizeof b, "ZP_LOCAL_RANK=%d", rank), env[k++] = strdup(b);
  snprintf(b, sizeof b, "ZP_SHM_NAME=%s", shm), env[k++] = strdup(b);
  snprintf(b, sizeof b, "ZP_COMM_TIMEOUT=%s", timeout), env[k++] = strdup(b);
  if (omp > 0) snprintf(b, sizeof b, "OMP_NUM_THREADS=%d", omp), env[k++] = strdup(b);
  env[k] = NULL;
  for (size_t i = 0; i < k; i++)
    if (!env[i]) {
      for (size_t j = 0; j < k; j++) free(env[j]);
      free(env);
      return NULL;
    }
  return env;
}
static void free_env(char** env) {
  if (!env) return;
  for (size_t i = 0; env[i]; i++) free(env[i]);
  free(env);
}

static void kill_group(rank_proc* p, int sig) {
  if (!p->pid || p->reaped) return;
  if (kill(-p->pid, sig) != 0) kill(p->pid, sig); /* group not set up yet: the child itself */
}

static const int k_fwd_sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGCHLD, SIGPIPE};
#define N_SIGS ((int)(sizeof k_fwd_sigs / sizeof k_fwd_sigs[0]))

int zp_cmd_launch(int argc, char** argv) {
  int n = 0, i = 0;
  const char* timeout = NULL;
  char tbuf[64];
  for (; i < argc; i++) {
    const char* a = argv[i];
    const char* v = NULL;
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "-n") == 0 || strcmp(a, "--nproc") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "zp launch: %s needs a number of ranks\n", a);
        usage(stderr);
        return 2;
      }
      v = argv[++i];
    } else if (strncmp(a, "--nproc=", 8) == 0) {
      v = a + 8;
    } else if (strncmp(a, "-n", 2) == 0 && a[2]) {
      v = a + 2;
    } else if (strcmp(a, "--timeout") == 0 || strncmp(a, "--timeout=", 10) == 0) {
      const char* t = a[9] == '=' ? a + 10 : (i + 1 < argc ? argv[++i] : NULL);
      char* end = NULL;
      double x = t ? strtod(t, &end) : 0;
      if (!t || end == t || *end || !(x > 0) || x > 1e9) {
        fprintf(stderr, "zp launch: --timeout needs a positive number of seconds, got '%s'\n",
                t ? t : "");
        return 2;
      }
      snprintf(tbuf, sizeof tbuf, "%s", t);
      timeout = tbuf;
      continue;
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "zp launch: unknown option '%s'\n", a);
      usage(stderr);
      return 2;
    } else {
      break;
    }
    char* end = NULL;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < 1 || x > ZP_SHM_MAX_RANKS) {
      fprintf(stderr, "zp launch: -n needs a number of ranks in 1..%d, got '%s'\n",
              ZP_SHM_MAX_RANKS, v);
      return 2;
    }
    n = (int)x;
  }
  if (n < 1) {
    fprintf(stderr, "zp launch: missing -n N\n");
    usage(stderr);
    return 2;
  }
  if (i >= argc) {
    fprintf(stderr, "zp launch: missing what to run (CONFIG.toml or a subcommand)\n");
    usage(stderr);
    return 2;
  }
  if (!timeout) {
    const char* e = getenv("ZP_COMM_TIMEOUT");
    char* end = NULL;
    double x = e ? strtod(e, &end) : 0;
    timeout = e && end != e && !*end && x > 0 ? e : "300";
  }

  /* what each rank executes */
  int nargs = argc - i;
  char** args = calloc((size_t)nargs + 3, sizeof(char*));
  if (!args) {
    fprintf(stderr, "zp launch: out of memory\n");
    return 1;
  }
  const char* path;
  char self[4096];
  int k = 0;
  const char* a0 = argv[i];
  size_t l0 = strlen(a0);
  int is_toml = l0 > 5 && strcmp(a0 + l0 - 5, ".toml") == 0;
  if (strchr(a0, '/') && !is_toml) {
    path = a0;
  } else {
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) {
      fprintf(stderr, "zp launch: cannot resolve /proc/self/exe: %s\n", strerror(errno));
      free(args);
      return 1;
    }
    self[sl] = '\0';
    path = "/proc/self/exe";
    args[k++] = self;
    if (is_toml) args[k++] = "train";
  }
  for (int j = i; j < argc; j++) args[k++] = argv[j];
  args[k] = NULL;

  /* the segment */
  char shm[64];
  uint32_t rnd = 0;
  if (getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd)
    rnd = (uint32_t)now_s() ^ (uint32_t)((uintptr_t)&rnd >> 4);
  snprintf(shm, sizeof shm, "/zp-%d-%08x", (int)getpid(), rnd);
  char err[512];
  if (zp_comm_shm_create_segment(shm, n, err, sizeof err) != 0) {
    fprintf(stderr, "zp launch: %s\n", err);
    free(args);
    return 1;
  }
  int omp = 0;
  if (!getenv("OMP_NUM_THREADS")) {
    cpu_set_t cs;
    int ncpu = sched_getaffinity(0, sizeof cs, &cs) == 0 ? CPU_COUNT(&cs) : 1;
    omp = ncpu / n > 0 ? ncpu / n : 1;
  }

  /* signals: self-pipe */
  int sp[2];
  if (pipe2(sp, O_CLOEXEC | O_NONBLOCK) != 0) {
    fprintf(stderr, "zp launch: pipe: %s\n", strerror(errno));
    zp_comm_shm_unlink(shm);
    free(args);
    return 1;
  }
  g_sig_w = sp[1];
  struct sigaction old[N_SIGS], sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  for (int s = 0; s < N_SIGS; s++) sigaction(k_fwd_sigs[s], &sa, &old[s]);

  rank_proc* rp = calloc((size_t)n, sizeof *rp);
  int rc = 0, failed = -1, live = 0;
  char exec_msg[4200];
  snprintf(exec_msg, sizeof exec_msg, "zp launch: cannot execute %s\n", path);
  if (!rp) {
    fprintf(stderr, "zp launch: out of memory\n");
    rc = 1;
    goto out;
  }
  for (int r = 0; r < n; r++) {
    rp[r].s[0].fd = rp[r].s[1].fd = -1;
    rp[r].s[0].out = 1, rp[r].s[1].out = 2;
  }
  fflush(NULL);
  for (int r = 0; r < n; r++) {
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    char** env = rank_env(r, n, shm, timeout, omp);
    if (!env || pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0) {
      fprintf(stderr, "zp launch: cannot set up rank %d: %s\n", r, env ? strerror(errno) : "out of memory");
      if (po[0] >= 0) close(po[0]), close(po[1]);
      free_env(env);
      failed = r, rc = 1;
      break;
    }
    pid_t pid = fork();
    if (pid < 0) {
      fprintf(stderr, "zp launch: cannot fork rank %d: %s\n", r, strerror(errno));
      close(po[0]), close(po[1]), close(pe[0]), close(pe[1]);
      free_env(env);
      failed = r, rc = 1;
      break;
    }
    if (pid == 0) { /* child: async-signal-safe calls only */
      struct sigaction dfl;
      memset(&dfl, 0, sizeof dfl);
      dfl.sa_handler = SIG_DFL;
      for (int s = 0; s < N_SIGS; s++) sigaction(k_fwd_sigs[s], &dfl, NULL);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, NULL);
      setpgid(0, 0);
      int devnull = open("/dev/null", O_RDONLY);
      if (devnull >= 0) dup2(devnull, 0);
      dup2(po[1], 1);
      dup2(pe[1], 2);
      execve(path, args, env);
      write_all(2, exec_msg, strlen(exec_msg));
      _exit(127);
    }
    setpgid(pid, pid); /* also here, so that the group exists before we signal it */
    close(po[1]), close(pe[1]);
    free_env(env);
    rp[r].pid = pid;
    rp[r].s[0].fd = po[0], rp[r].s[1].fd = pe[0];
    fcntl(po[0], F_SETFL, O_NONBLOCK);
    fcntl(pe[0], F_SETFL, O_NONBLOCK);
    live++;
  }

  {
    double kill_at = 0;  /* when the grace period ends (0: no teardown yet) */
    int killed = 0, fwd_count = 0;
    if (failed >= 0 && live) { /* could not start everyone: stop the started ones */
      for (int r = 0; r < n; r++) kill_group(&rp[r], SIGTERM), kill_group(&rp[r], SIGCONT);
      kill_at = now_s() + GRACE_S;
    }
    struct pollfd* pf = calloc((size_t)(2 * n + 1), sizeof *pf);
    int* who = calloc((size_t)(2 * n + 1), sizeof *who);
    if (!pf || !who) {
      for (int r = 0; r < n; r++) kill_group(&rp[r], SIGKILL);
      kill_at = now_s(); /* degrade: no output relay, only supervision */
    }
    while (live > 0) {
      int np = 0;
      if (pf) {
        pf[np].fd = sp[0], pf[np].events = POLLIN, who[np++] = -1;
        for (int r = 0; r < n; r++)
          for (int s = 0; s < 2; s++)
            if (rp[r].s[s].fd >= 0) pf[np].fd = rp[r].s[s].fd, pf[np].events = POLLIN, who[np++] = r * 2 + s;
      }
      int ms = 200;
      if (kill_at > 0 && !killed) {
        double left = kill_at - now_s();
        ms = left <= 0 ? 0 : (int)(left * 1000) + 1 < 200 ? (int)(left * 1000) + 1 : 200;
      }
      int pr = pf ? poll(pf, (nfds_t)np, ms) : (usleep(20000), 0);
      if (pr > 0) {
        for (int j = 0; j < np; j++) {
          if (!pf[j].revents) continue;
          if (who[j] < 0) {
            unsigned char sigs[64];
            ssize_t got;
            while ((got = read(sp[0], sigs, sizeof sigs)) > 0) {
              for (ssize_t q = 0; q < got; q++) {
                int sig = sigs[q];
                if (sig == SIGCHLD || sig == SIGPIPE) continue;
                char nm[16];
                sig_str(sig, nm, sizeof nm);
                if (sig != SIGUSR1) fwd_count++;
                if (fwd_count >= 2 && sig != SIGUSR1) {
                  fprintf(stderr, "zp launch: %s again: killing all ranks\n", nm);
                  for (int r = 0; r < n; r++) kill_group(&rp[r], SIGKILL);
                  killed = 1;
                } else {
                  fprintf(stderr, "zp launch: forwarding %s to %d rank%s\n", nm, live, live == 1 ? "" : "s");
                  for (int r = 0; r < n; r++) kill_group(&rp[r], sig), kill_group(&rp[r], SIGCONT);
                }
              }
            }
          } else {
            rank_proc* p = &rp[who[j] / 2];
            stream_read(who[j] / 2, &p->s[who[j] % 2]);
          }
        }
      }
      /* reap */
      for (int r = 0; r < n; r++) {
        rank_proc* p = &rp[r];
        if (!p->pid || p->reaped) continue;
        int st;
        pid_t w = waitpid(p->pid, &st, WNOHANG);
        if (w != p->pid) continue;
        p->reaped = 1, p->status = st, live--;
        stream_close(r, &p->s[0]);
        stream_close(r, &p->s[1]);
        int bad = !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        if (!bad) continue;
        char line[256];
        if (WIFEXITED(st)) {
          snprintf(line, sizeof line, "zp launch: rank %d exited with status %d", r, WEXITSTATUS(st));
        } else {
          char nm[16];
          sig_str(WTERMSIG(st), nm, sizeof nm);
          snprintf(line, sizeof line, "zp launch: rank %d was killed by signal %s", r, nm);
        }
        if (failed < 0) {
          failed = r;
          rc = 1;
          fprintf(stderr, "%s\n", line);
          if (live > 0) {
            fprintf(stderr, "zp launch: stopping the other %d rank%s (SIGTERM, SIGKILL after %.0f s)\n",
                    live, live == 1 ? "" : "s", GRACE_S);
            for (int q = 0; q < n; q++) kill_group(&rp[q], SIGTERM), kill_group(&rp[q], SIGCONT);
            kill_at = now_s() + GRACE_S;
          }
        } else if (!(WIFSIGNALED(st) && (WTERMSIG(st) == SIGTERM || WTERMSIG(st) == SIGKILL) &&
                     kill_at > 0)) {
          fprintf(stderr, "%s\n", line); /* its own failure, not our teardown */
        }
      }
      if (kill_at > 0 && !killed && live > 0 && now_s() >= kill_at) {
        fprintf(stderr, "zp launch: %d rank%s still running after %.0f s: SIGKILL\n", live,
                live == 1 ? "" : "s", GRACE_S);
        for (int r = 0; r < n; r++) kill_group(&rp[r], SIGKILL);
        killed = 1;
      }
    }
    if (failed >= 0) /* leftovers in the ranks' process groups (grandchildren) */
      for (int r = 0; r < n; r++)
        if (rp[r].pid) kill(-rp[r].pid, SIGKILL);
    for (int r = 0; r < n; r++) {
      if (rp[r].s[0].fd >= 0) close(rp[r].s[0].fd);
      if (rp[r].s[1].fd >= 0) close(rp[r].s[1].fd);
    }
    free(pf);
    free(who);
  }

out:
  for (int s = 0; s < N_SIGS; s++) sigaction(k_fwd_sigs[s], &old[s], NULL);
  g_sig_w = -1;
  close(sp[0]);
  close(sp[1]);
  zp_comm_shm_unlink(shm);
  free(rp);
  free(args);
  return rc;
}
