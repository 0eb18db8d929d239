/* A conformance suite for the POSIX message-queue interface, written from the standard
 * (The Open Group Base Specifications Issue 7, mq_*) and Linux's documented behaviour.
 *
 * It is an ordinary program compiled against the system <mqueue.h>: run as is, it tests
 * the kernel's implementation (which proves the tests); run under
 * LD_PRELOAD=libvipc-posix.so, or linked with libvipc-posix first, it tests vipc's.
 * With MQ_TEST_FORBID_KERNEL=1 it first installs a seccomp filter that fails every
 * kernel mqueue system call with ENOSYS, so a pass proves no kernel queue was used.
 *
 * Output: one line per test, "ok NAME", "FAIL NAME: why" or "skip NAME: why"; the exit
 * status is the number of failures. Every test uses limits the kernel's defaults allow
 * (mq_maxmsg <= 10, mq_msgsize <= 8192). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <mqueue.h>
#include <pthread.h>
#include <seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_THREAD__)
#define MQ_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MQ_TEST_TSAN 1
#endif
#endif

static int failures;
static int skipped;
static const char* current;
static char qname[64];
static char qname2[64];

#define CHECK(cond)                                                                   \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      printf("FAIL %s: line %d: %s (errno %d %s)\n", current, __LINE__, #cond, errno, \
             strerror(errno));                                                        \
      ++failures;                                                                     \
      return;                                                                         \
    }                                                                                 \
  } while (0)

#define CHECK_ERR(expr, err)                                                                    \
  do {                                                                                          \
    errno = 0;                                                                                  \
    long rc_ = (long)(expr);                                                                    \
    if (rc_ != -1 || errno != (err)) {                                                          \
      printf("FAIL %s: line %d: %s gave %ld errno %d (%s), wanted -1 errno %d (%s)\n", current, \
             __LINE__, #expr, rc_, errno, strerror(errno), (err), strerror(err));               \
      ++failures;                                                                               \
      return;                                                                                   \
    }                                                                                           \
  } while (0)

static mqd_t make(const char* name, int oflag, long maxmsg, long msgsize) {
  struct mq_attr a;
  memset(&a, 0, sizeof a);
  a.mq_maxmsg = maxmsg;
  a.mq_msgsize = msgsize;
  return mq_open(name, oflag | O_CREAT, 0600, &a);
}

static struct timespec from_now_ms(long ms) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  t.tv_sec += ms / 1000;
  t.tv_nsec += (ms % 1000) * 1000000L;
  if (t.tv_nsec >= 1000000000L) {
    t.tv_sec += 1;
    t.tv_nsec -= 1000000000L;
  }
  return t;
}

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) != 0 && errno == EINTR) {
  }
}

/* Runs fn in a child process; the child's exit status is its verdict (0 = passed). */
static int child_status(pid_t pid) {
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* ------------------------------------------------------------------ mq_open */

static void test_open_create_and_exclusive(void) {
  mqd_t q = make(qname, O_RDWR | O_EXCL, 4, 32);
  CHECK(q != (mqd_t)-1);
  CHECK_ERR(make(qname, O_RDWR | O_EXCL, 4, 32), EEXIST);
  /* a flag the compiler cannot see: a fortified build calls __mq_open_2 here */
  volatile int rdwr = O_RDWR;
  mqd_t q2 = mq_open(qname, rdwr);
  CHECK(q2 != (mqd_t)-1);
  CHECK(q2 != q);
  CHECK(mq_close(q2) == 0);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_open_missing_is_enoent(void) {
  CHECK_ERR(mq_open(qname, O_RDWR), ENOENT);
  CHECK_ERR(mq_unlink(qname), ENOENT);
}

static void test_open_bad_names(void) {
  char longname[300];
  memset(longname, 'n', sizeof longname);
  longname[0] = '/';
  longname[257] = '\0'; /* 256 characters after the slash: one more than NAME_MAX */
  CHECK_ERR(mq_open("noslash", O_RDWR | O_CREAT, 0600, NULL), EINVAL);
  CHECK_ERR(mq_open(longname, O_RDWR | O_CREAT, 0600, NULL), ENAMETOOLONG);
  CHECK_ERR(mq_open("/a/b", O_RDWR | O_CREAT, 0600, NULL), EACCES);
  CHECK_ERR(mq_open("/", O_RDWR | O_CREAT, 0600, NULL), ENOENT);
  CHECK_ERR(mq_unlink("noslash"), EINVAL);
  CHECK_ERR(mq_unlink(longname), ENAMETOOLONG);
  longname[256] = '\0'; /* exactly NAME_MAX: valid */
  snprintf(longname + 1, 20, "vipc-conf-%d", (int)getpid());
  longname[strlen(longname)] = 'n';
  mqd_t q = mq_open(longname, O_RDWR | O_CREAT, 0600, NULL);
  CHECK(q != (mqd_t)-1);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(longname) == 0);
}

static void test_open_bad_attributes(void) {
  CHECK_ERR(make(qname, O_RDWR, 0, 16), EINVAL);
  CHECK_ERR(make(qname, O_RDWR, 4, 0), EINVAL);
  CHECK_ERR(make(qname, O_RDWR, -1, 16), EINVAL);
  CHECK_ERR(make(qname, O_RDWR, 4, -5), EINVAL);
  CHECK_ERR(mq_open(qname, O_RDWR), ENOENT); /* nothing was created */
}

static void test_open_existing_ignores_attributes(void) {
  mqd_t q = make(qname, O_RDWR, 3, 24);
  CHECK(q != (mqd_t)-1);
  mqd_t q2 = make(qname, O_RDWR, -1, -1);
  CHECK(q2 != (mqd_t)-1);
  struct mq_attr a;
  CHECK(mq_getattr(q2, &a) == 0);
  CHECK(a.mq_maxmsg == 3 && a.mq_msgsize == 24);
  CHECK(mq_close(q2) == 0);
  CHECK_ERR(mq_open(qname, O_RDWR | O_WRONLY), EINVAL);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_open_default_attributes(void) {
  mqd_t q = mq_open(qname, O_RDWR | O_CREAT | O_EXCL, 0600, NULL);
  CHECK(q != (mqd_t)-1);
  struct mq_attr a;
  CHECK(mq_getattr(q, &a) == 0);
  CHECK(a.mq_maxmsg > 0 && a.mq_msgsize > 0 && a.mq_curmsgs == 0 && a.mq_flags == 0);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_descriptor_is_close_on_exec(void) {
  mqd_t q = make(qname, O_RDWR, 2, 8);
  CHECK(q != (mqd_t)-1);
  int fl = fcntl(q, F_GETFD);
  CHECK(fl >= 0 && (fl & FD_CLOEXEC) != 0);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

/* ------------------------------------------------------------ send / receive */

static void test_priority_order_and_fifo(void) {
  mqd_t q = make(qname, O_RDWR, 8, 16);
  CHECK(q != (mqd_t)-1);
  const unsigned prios[8] = {1, 5, 1, 0, 5, 31, 0, 1};
  for (int i = 0; i < 8; ++i) {
    char m[16];
    snprintf(m, sizeof m, "m%d", i);
    CHECK(mq_send(q, m, strlen(m) + 1, prios[i]) == 0);
  }
  /* highest priority first, send order within one priority */
  const char* want[8] = {"m5", "m1", "m4", "m0", "m2", "m7", "m3", "m6"};
  const unsigned want_p[8] = {31, 5, 5, 1, 1, 1, 0, 0};
  for (int i = 0; i < 8; ++i) {
    char buf[16];
    unsigned p = 99;
    ssize_t n = mq_receive(q, buf, sizeof buf, &p);
    CHECK(n == (ssize_t)strlen(want[i]) + 1);
    CHECK(strcmp(buf, want[i]) == 0 && p == want_p[i]);
  }
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_highest_priority_accepted(void) {
  mqd_t q = make(qname, O_RDWR, 2, 8);
  CHECK(q != (mqd_t)-1);
  long prio_max = sysconf(_SC_MQ_PRIO_MAX);
  CHECK(prio_max >= 32);
  CHECK(mq_send(q, "a", 1, (unsigned)(prio_max - 1)) == 0);
  CHECK_ERR(mq_send(q, "a", 1, (unsigned)prio_max), EINVAL);
  char buf[8];
  unsigned p = 0;
  CHECK(mq_receive(q, buf, sizeof buf, &p) == 1 && p == (unsigned)(prio_max - 1));
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_zero_length_and_null_priority(void) {
  mqd_t q = make(qname, O_RDWR, 2, 8);
  CHECK(q != (mqd_t)-1);
  CHECK(mq_send(q, "", 0, 3) == 0);
  char buf[8];
  CHECK(mq_receive(q, buf, sizeof buf, NULL) == 0);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_message_size_errors(void) {
  mqd_t q = make(qname, O_RDWR, 2, 8);
  CHECK(q != (mqd_t)-1);
  char big[9] = "12345678";
  CHECK_ERR(mq_send(q, big, 9, 0), EMSGSIZE);
  CHECK(mq_send(q, big, 8, 0) == 0);
  char small[7];
  CHECK_ERR(mq_receive(q, small, sizeof small, NULL), EMSGSIZE);
  char buf[8];
  CHECK(mq_receive(q, buf, sizeof buf, NULL) == 8 && memcmp(buf, big, 8) == 0);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_access_mode_ebadf(void) {
  mqd_t q = make(qname, O_RDWR, 2, 8);
  CHECK(q != (mqd_t)-1);
  mqd_t r = mq_open(qname, O_RDONLY);
  mqd_t w = mq_open(qname, O_WRONLY);
  CHECK(r != (mqd_t)-1 && w != (mqd_t)-1);
  char buf[8];
  CHECK_ERR(mq_send(r, "x", 1, 0), EBADF);
  CHECK_ERR(mq_receive(w, buf, sizeof buf, NULL), EBADF);
  CHECK(mq_send(w, "x", 1, 0) == 0);
  CHECK(mq_receive(r, buf, sizeof buf, NULL) == 1);
  /* a bad priority is EINVAL before the access check, as on Linux */
  CHECK_ERR(mq_send(r, "x", 1, 1u << 20), EINVAL);
  CHECK(mq_close(r) == 0 && mq_close(w) == 0 && mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_bad_descriptors(void) {
  char buf[8];
  struct mq_attr a;
  CHECK_ERR(mq_send((mqd_t)-1, "x", 1, 0), EBADF);
  CHECK_ERR(mq_receive((mqd_t)12345, buf, sizeof buf, NULL), EBADF);
  CHECK_ERR(mq_getattr((mqd_t)12345, &a), EBADF);
  CHECK_ERR(mq_notify((mqd_t)12345, NULL), EBADF);
  CHECK_ERR(mq_close((mqd_t)12345), EBADF);
  mqd_t q = make(qname, O_RDWR, 2, 8);
  CHECK(q != (mqd_t)-1);
  CHECK(mq_close(q) == 0);
  CHECK_ERR(mq_send(q, "x", 1, 0), EBADF);
  CHECK_ERR(mq_close(q), EBADF);
  CHECK(mq_unlink(qname) == 0);
}

static void test_nonblocking_eagain(void) {
  mqd_t q = make(qname, O_RDWR | O_NONBLOCK, 2, 8);
  CHECK(q != (mqd_t)-1);
  char buf[8];
  CHECK_ERR(mq_receive(q, buf, sizeof buf, NULL), EAGAIN);
  CHECK(mq_send(q, "a", 1, 0) == 0 && mq_send(q, "b", 1, 0) == 0);
  CHECK_ERR(mq_send(q, "c", 1, 0), EAGAIN);
  struct mq_attr a;
  CHECK(mq_getattr(q, &a) == 0);
  CHECK(a.mq_curmsgs == 2 && (a.mq_flags & O_NONBLOCK) != 0 && a.mq_maxmsg == 2 &&
        a.mq_msgsize == 8);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_setattr_changes_only_nonblock(void) {
  mqd_t q = make(qname, O_RDWR, 2, 8);
  CHECK(q != (mqd_t)-1);
  struct mq_attr n, old;
  memset(&n, 0, sizeof n);
  n.mq_flags = O_NONBLOCK;
  n.mq_maxmsg = 99; /* ignored */
  CHECK(mq_setattr(q, &n, &old) == 0);
  CHECK(old.mq_flags == 0 && old.mq_maxmsg == 2);
  char buf[8];
  CHECK_ERR(mq_receive(q, buf, sizeof buf, NULL), EAGAIN);
  struct mq_attr a;
  CHECK(mq_getattr(q, &a) == 0 && a.mq_maxmsg == 2 && (a.mq_flags & O_NONBLOCK) != 0);
  n.mq_flags = O_NONBLOCK | O_APPEND;
  CHECK_ERR(mq_setattr(q, &n, NULL), EINVAL);
  n.mq_flags = 0;
  CHECK(mq_setattr(q, &n, NULL) == 0);
  CHECK(mq_getattr(q, &a) == 0 && a.mq_flags == 0);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_timeouts(void) {
  mqd_t q = make(qname, O_RDWR, 1, 8);
  CHECK(q != (mqd_t)-1);
  char buf[8];
  struct timespec t = from_now_ms(50);
  CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, NULL, &t), ETIMEDOUT);
  struct timespec past = {1, 0};
  CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, NULL, &past), ETIMEDOUT);
  struct timespec bad = {time(NULL) + 5, 1000000000L};
  CHECK_ERR(mq_timedreceive(q, buf, sizeof buf, NULL, &bad), EINVAL);
  CHECK(mq_send(q, "a", 1, 0) == 0);
  t = from_now_ms(50);
  CHECK_ERR(mq_timedsend(q, "b", 1, 0, &t), ETIMEDOUT);
  CHECK_ERR(mq_timedsend(q, "b", 1, 0, &bad), EINVAL);
  /* a message that is there is received before any deadline */
  CHECK(mq_timedreceive(q, buf, sizeof buf, NULL, &past) == 1);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void on_alarm(int sig) { (void)sig; }

static void test_eintr_when_a_handler_runs(void) {
  mqd_t q = make(qname, O_RDWR, 1, 8);
  CHECK(q != (mqd_t)-1);
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm; /* no SA_RESTART */
  sigemptyset(&sa.sa_mask);
  CHECK(sigaction(SIGALRM, &sa, &old) == 0);
  char buf[8];
  alarm(1);
  CHECK_ERR(mq_receive(q, buf, sizeof buf, NULL), EINTR);
  CHECK(mq_send(q, "a", 1, 0) == 0);
  alarm(1);
  CHECK_ERR(mq_send(q, "b", 1, 0), EINTR);
  alarm(0);
  sigaction(SIGALRM, &old, NULL);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

/* ------------------------------------------------------------ across processes */

static void test_blocking_across_processes(void) {
  mqd_t q = make(qname, O_RDWR, 1, 16);
  CHECK(q != (mqd_t)-1);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    /* The child opens the queue by name and blocks until the parent sends. */
    mqd_t c = mq_open(qname, O_RDWR);
    if (c == (mqd_t)-1) _exit(1);
    char buf[16];
    unsigned p = 0;
    if (mq_receive(c, buf, sizeof buf, &p) != 6 || strcmp(buf, "hello") != 0 || p != 7) _exit(2);
    /* then blocks on a full queue until the parent receives */
    if (mq_send(c, "one", 4, 0) != 0) _exit(3);
    if (mq_send(c, "two", 4, 0) != 0) _exit(4);
    _exit(0);
  }
  sleep_ms(50);
  CHECK(mq_send(q, "hello", 6, 7) == 0);
  sleep_ms(100);
  char buf[16];
  CHECK(mq_receive(q, buf, sizeof buf, NULL) == 4 && strcmp(buf, "one") == 0);
  CHECK(mq_receive(q, buf, sizeof buf, NULL) == 4 && strcmp(buf, "two") == 0);
  CHECK(child_status(pid) == 0);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_fork_inherits_descriptors(void) {
  mqd_t q = make(qname, O_RDWR, 4, 16);
  CHECK(q != (mqd_t)-1);
  CHECK(mq_send(q, "from-parent", 12, 1) == 0);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    char buf[16];
    if (mq_receive(q, buf, sizeof buf, NULL) != 12 || strcmp(buf, "from-parent") != 0) _exit(1);
    if (mq_send(q, "from-child", 11, 2) != 0) _exit(2);
    /* the child can also open and unlink queues of its own */
    mqd_t c = make(qname2, O_RDWR | O_EXCL, 2, 8);
    if (c == (mqd_t)-1) _exit(3);
    if (mq_send(c, "x", 1, 0) != 0) _exit(4);
    if (mq_close(c) != 0 || mq_unlink(qname2) != 0) _exit(5);
    if (mq_close(q) != 0) _exit(6);
    _exit(0);
  }
  CHECK(child_status(pid) == 0);
  char buf[16];
  CHECK(mq_receive(q, buf, sizeof buf, NULL) == 11 && strcmp(buf, "from-child") == 0);
  /* the child's close did not close the parent's descriptor */
  CHECK(mq_send(q, "still", 6, 0) == 0);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

/* O_NONBLOCK belongs to the open file description: a forked child shares it with its
   parent, and another mq_open of the same queue has a description of its own. */
static void test_nonblock_shared_with_a_forked_child(void) {
  mqd_t q = make(qname, O_RDWR, 2, 8);
  CHECK(q != (mqd_t)-1);
  mqd_t other = mq_open(qname, O_RDWR);
  CHECK(other != (mqd_t)-1);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    struct mq_attr n;
    memset(&n, 0, sizeof n);
    n.mq_flags = O_NONBLOCK;
    _exit(mq_setattr(q, &n, NULL) == 0 ? 0 : 1);
  }
  CHECK(child_status(pid) == 0);
  struct mq_attr a;
  CHECK(mq_getattr(q, &a) == 0 && (a.mq_flags & O_NONBLOCK) != 0);
  char buf[8];
  alarm(5); /* a call that blocks after all is killed by SIGALRM: a failure, not a hang */
  CHECK_ERR(mq_receive(q, buf, sizeof buf, NULL), EAGAIN);
  CHECK(mq_send(q, "a", 1, 0) == 0 && mq_send(q, "b", 1, 0) == 0);
  CHECK_ERR(mq_send(q, "c", 1, 0), EAGAIN);
  alarm(0);
  /* the other description still blocks */
  CHECK(mq_getattr(other, &a) == 0 && a.mq_flags == 0);
  struct timespec t = from_now_ms(50);
  CHECK_ERR(mq_timedsend(other, "c", 1, 0, &t), ETIMEDOUT);
  /* and back: the parent clears it, a second child sees the change */
  memset(&a, 0, sizeof a);
  CHECK(mq_setattr(q, &a, NULL) == 0);
  pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    struct mq_attr c;
    if (mq_getattr(q, &c) != 0 || c.mq_flags != 0) _exit(1);
    struct timespec u = from_now_ms(50);
    _exit(mq_timedsend(q, "c", 1, 0, &u) == -1 && errno == ETIMEDOUT ? 0 : 2);
  }
  CHECK(child_status(pid) == 0);
  CHECK(mq_close(other) == 0 && mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_unlink_while_open(void) {
  mqd_t q = make(qname, O_RDWR, 4, 16);
  CHECK(q != (mqd_t)-1);
  CHECK(mq_send(q, "kept", 5, 0) == 0);
  CHECK(mq_unlink(qname) == 0);
  CHECK_ERR(mq_open(qname, O_RDWR), ENOENT);
  /* the name can be reused at once for a new, empty queue */
  mqd_t q2 = make(qname, O_RDWR | O_EXCL | O_NONBLOCK, 4, 16);
  CHECK(q2 != (mqd_t)-1);
  char buf[16];
  CHECK_ERR(mq_receive(q2, buf, sizeof buf, NULL), EAGAIN);
  /* the unlinked queue lives on for its descriptor */
  CHECK(mq_receive(q, buf, sizeof buf, NULL) == 5 && strcmp(buf, "kept") == 0);
  CHECK(mq_close(q) == 0 && mq_close(q2) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_permissions(void) {
  if (geteuid() == 0) {
    printf("skip %s: running as root (permission checks do not apply)\n", current);
    skipped = 1;
    return;
  }
  mqd_t q = mq_open(qname, O_RDWR | O_CREAT | O_EXCL, 0400, NULL);
  CHECK(q != (mqd_t)-1); /* the creator gets what it asked for */
  CHECK_ERR(mq_open(qname, O_WRONLY), EACCES);
  CHECK_ERR(mq_open(qname, O_RDWR), EACCES);
  mqd_t r = mq_open(qname, O_RDONLY);
  CHECK(r != (mqd_t)-1);
  CHECK(mq_close(r) == 0 && mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

/* Group access through a supplementary group: a queue of root's, of group G and mode
   0060, opens for a process of another uid and gid whose supplementary groups hold G, and
   not for the same process without them. Needs root (to make such a queue and such
   processes), and, against vipc, a daemon that other uids can reach. */
static void test_supplementary_groups(void) {
  if (geteuid() != 0) {
    printf("skip %s: not root (cannot make processes of another uid)\n", current);
    skipped = 1;
    return;
  }
  const gid_t group = 4242, nobody = 65534;
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    umask(0);
    if (setegid(group) != 0) _exit(1);
    mqd_t q = mq_open(qname, O_RDWR | O_CREAT | O_EXCL, 0060, NULL);
    if (q == (mqd_t)-1) _exit(2);
    _exit(mq_close(q) == 0 ? 0 : 3);
  }
  CHECK(child_status(pid) == 0);
  pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    const gid_t groups[1] = {group};
    if (setgroups(1, groups) != 0 || setgid(nobody) != 0 || setuid(nobody) != 0) _exit(1);
    mqd_t q = mq_open(qname, O_RDWR);
    if (q == (mqd_t)-1) _exit(2);
    _exit(mq_send(q, "g", 1, 0) == 0 && mq_close(q) == 0 ? 0 : 3);
  }
  CHECK(child_status(pid) == 0);
  pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    if (setgroups(0, NULL) != 0 || setgid(nobody) != 0 || setuid(nobody) != 0) _exit(1);
    errno = 0;
    _exit(mq_open(qname, O_RDONLY) == (mqd_t)-1 && errno == EACCES ? 0 : 2);
  }
  CHECK(child_status(pid) == 0);
  mqd_t q = mq_open(qname, O_RDONLY | O_NONBLOCK);
  CHECK(q != (mqd_t)-1);
  char buf[8192];
  CHECK(mq_receive(q, buf, sizeof buf, NULL) == 1 && buf[0] == 'g');
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_no_descriptor_left_is_emfile(void) {
  mqd_t q = make(qname, O_RDWR, 2, 8);
  CHECK(q != (mqd_t)-1);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    mqd_t c = mq_open(qname, O_RDWR); /* the child's first call (a vipc child connects) */
    if (c == (mqd_t)-1 || mq_close(c) != 0) _exit(1);
    struct rlimit rl = {64, 64};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) _exit(2);
    while (dup(0) >= 0) {
    }
    errno = 0;
    if (mq_open(qname, O_RDWR) != (mqd_t)-1 || errno != EMFILE) _exit(3);
    _exit(0);
  }
  CHECK(child_status(pid) == 0);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

/* ------------------------------------------------------------ mq_notify */

static volatile sig_atomic_t got_signal;
static volatile sig_atomic_t got_code;
static volatile sig_atomic_t got_value;
static volatile sig_atomic_t got_pid;

static void on_notify(int sig, siginfo_t* info, void* ctx) {
  (void)ctx;
  got_signal = sig;
  got_code = info->si_code;
  got_value = info->si_value.sival_int;
  got_pid = info->si_pid;
}

static int wait_signal(long ms) {
  for (long i = 0; i < ms && got_signal == 0; ++i) sleep_ms(1);
  return got_signal != 0;
}

static void test_notify_signal(void) {
  mqd_t q = make(qname, O_RDWR, 4, 8);
  CHECK(q != (mqd_t)-1);
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_notify;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  CHECK(sigaction(SIGUSR1, &sa, &old) == 0);
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_SIGNAL;
  ev.sigev_signo = SIGUSR1;
  ev.sigev_value.sival_int = 4242;
  got_signal = 0;
  CHECK(mq_notify(q, &ev) == 0);
  CHECK_ERR(mq_notify(q, &ev), EBUSY); /* one registration per queue */
  /* another process sends: the signal comes to the registered process */
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) _exit(mq_send(q, "x", 1, 0) == 0 ? 0 : 1);
  CHECK(child_status(pid) == 0);
  CHECK(wait_signal(2000));
  CHECK(got_signal == SIGUSR1 && got_code == SI_MESGQ && got_value == 4242 && got_pid == pid);
  /* the registration is gone: a message on a non-empty queue, then on an empty one,
     brings no signal; registering again succeeds */
  got_signal = 0;
  CHECK(mq_send(q, "y", 1, 0) == 0);
  char buf[8];
  CHECK(mq_receive(q, buf, sizeof buf, NULL) == 1 && mq_receive(q, buf, sizeof buf, NULL) == 1);
  CHECK(mq_send(q, "z", 1, 0) == 0);
  sleep_ms(100);
  CHECK(got_signal == 0);
  CHECK(mq_notify(q, &ev) == 0);
  /* the queue is not empty: a further message does not notify */
  CHECK(mq_send(q, "w", 1, 0) == 0);
  sleep_ms(100);
  CHECK(got_signal == 0);
  CHECK(mq_notify(q, NULL) == 0);
  CHECK(mq_notify(q, NULL) == 0); /* removing what is not there is not an error */
  sigaction(SIGUSR1, &old, NULL);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_notify_busy_for_another_process(void) {
  mqd_t q = make(qname, O_RDWR, 4, 8);
  CHECK(q != (mqd_t)-1);
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_NONE;
  CHECK(mq_notify(q, &ev) == 0);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    errno = 0;
    if (mq_notify(q, &ev) != -1 || errno != EBUSY) _exit(1);
    /* removing: only the registered process's registration counts */
    if (mq_notify(q, NULL) != 0) _exit(2);
    if (mq_notify(q, &ev) != -1 || errno != EBUSY) _exit(3);
    _exit(0);
  }
  CHECK(child_status(pid) == 0);
  /* mq_close removes the registration: another process can register now */
  CHECK(mq_close(q) == 0);
  pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    mqd_t c = mq_open(qname, O_RDWR);
    if (c == (mqd_t)-1) _exit(1);
    if (mq_notify(c, &ev) != 0) _exit(2);
    _exit(0);
  }
  CHECK(child_status(pid) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_notify_none_ends_with_a_message(void) {
  mqd_t q = make(qname, O_RDWR, 4, 8);
  CHECK(q != (mqd_t)-1);
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_NONE;
  CHECK(mq_notify(q, &ev) == 0);
  CHECK_ERR(mq_notify(q, &ev), EBUSY);
  CHECK(mq_send(q, "x", 1, 0) == 0);
  CHECK(mq_notify(q, &ev) == 0); /* the arrival removed the registration */
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_notify_bad_sigevent(void) {
  mqd_t q = make(qname, O_RDWR, 4, 8);
  CHECK(q != (mqd_t)-1);
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = 12345;
  CHECK_ERR(mq_notify(q, &ev), EINVAL);
  ev.sigev_notify = SIGEV_SIGNAL;
  ev.sigev_signo = 65;
  CHECK_ERR(mq_notify(q, &ev), EINVAL);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static void test_notify_not_sent_while_a_receiver_waits(void) {
  mqd_t q = make(qname, O_RDWR, 4, 8);
  CHECK(q != (mqd_t)-1);
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_notify;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  CHECK(sigaction(SIGUSR2, &sa, &old) == 0);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    char buf[8];
    _exit(mq_receive(q, buf, sizeof buf, NULL) == 1 ? 0 : 1);
  }
  sleep_ms(200); /* the child is blocked in mq_receive */
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_SIGNAL;
  ev.sigev_signo = SIGUSR2;
  got_signal = 0;
  CHECK(mq_notify(q, &ev) == 0);
  CHECK(mq_send(q, "x", 1, 0) == 0);
  CHECK(child_status(pid) == 0);
  sleep_ms(100);
  CHECK(got_signal == 0);
  CHECK_ERR(mq_notify(q, &ev), EBUSY); /* still registered */
  CHECK(mq_send(q, "y", 1, 0) == 0);   /* now nobody waits: it fires */
  CHECK(wait_signal(2000) && got_signal == SIGUSR2);
  sigaction(SIGUSR2, &old, NULL);
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

static pthread_mutex_t thread_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t thread_cv = PTHREAD_COND_INITIALIZER;
static int thread_value;
static pthread_t thread_id;

static void on_thread(union sigval v) {
  pthread_mutex_lock(&thread_mu);
  thread_value = v.sival_int;
  thread_id = pthread_self();
  pthread_cond_signal(&thread_cv);
  pthread_mutex_unlock(&thread_mu);
}

static void test_notify_thread(void) {
  mqd_t q = make(qname, O_RDWR, 4, 8);
  CHECK(q != (mqd_t)-1);
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_THREAD;
  ev.sigev_notify_function = on_thread;
  ev.sigev_value.sival_int = 77;
  thread_value = 0;
  CHECK(mq_notify(q, &ev) == 0);
  CHECK(mq_send(q, "x", 1, 0) == 0);
  struct timespec t = from_now_ms(2000);
  pthread_mutex_lock(&thread_mu);
  while (thread_value == 0) {
    if (pthread_cond_timedwait(&thread_cv, &thread_mu, &t) == ETIMEDOUT) break;
  }
  int v = thread_value;
  pthread_t who = thread_id;
  pthread_mutex_unlock(&thread_mu);
  CHECK(v == 77);
  CHECK(!pthread_equal(who, pthread_self()));
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

/* ------------------------------------------------------------ no kernel queue */

static void forbid_kernel_mqueue(void) {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  const int calls[] = {SCMP_SYS(mq_open),         SCMP_SYS(mq_unlink), SCMP_SYS(mq_timedsend),
                       SCMP_SYS(mq_timedreceive), SCMP_SYS(mq_notify), SCMP_SYS(mq_getsetattr)};
  for (size_t i = 0; i < sizeof calls / sizeof calls[0]; ++i) {
    if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), calls[i], 0) != 0) exit(90);
  }
  if (seccomp_load(ctx) != 0) exit(91);
  seccomp_release(ctx);
}

static void test_kernel_mqueue_untouched(void) {
  mqd_t q = make(qname, O_RDWR, 2, 8);
  CHECK(q != (mqd_t)-1);
  /* the kernel does not know this queue: its own mq_open fails */
  errno = 0;
  long rc = syscall(SYS_mq_open, qname + 1, O_RDONLY, 0, NULL);
  CHECK(rc == -1 && (errno == ENOENT || errno == ENOSYS));
  CHECK(mq_close(q) == 0);
  CHECK(mq_unlink(qname) == 0);
}

typedef void (*test_fn)(void);
struct test {
  const char* name;
  test_fn fn;
  int vipc_only; /* 1: against vipc only; 2: only when named (needs a special setup) */
};

int main(int argc, char** argv) {
  const char* only = argc > 1 ? argv[1] : NULL;
  const int forbid = getenv("MQ_TEST_FORBID_KERNEL") != NULL;
  if (forbid) forbid_kernel_mqueue();
  setvbuf(stdout, NULL, _IOLBF, 0);
  const struct test tests[] = {
      {"OpenCreateAndExclusive", test_open_create_and_exclusive, 0},
      {"OpenMissingIsEnoent", test_open_missing_is_enoent, 0},
      {"OpenBadNames", test_open_bad_names, 0},
      {"OpenBadAttributes", test_open_bad_attributes, 0},
      {"OpenExistingIgnoresAttributes", test_open_existing_ignores_attributes, 0},
      {"OpenDefaultAttributes", test_open_default_attributes, 0},
      {"DescriptorIsCloseOnExec", test_descriptor_is_close_on_exec, 0},
      {"PriorityOrderAndFifo", test_priority_order_and_fifo, 0},
      {"HighestPriorityAccepted", test_highest_priority_accepted, 0},
      {"ZeroLengthAndNullPriority", test_zero_length_and_null_priority, 0},
      {"MessageSizeErrors", test_message_size_errors, 0},
      {"AccessModeEbadf", test_access_mode_ebadf, 0},
      {"BadDescriptors", test_bad_descriptors, 0},
      {"NonblockingEagain", test_nonblocking_eagain, 0},
      {"SetattrChangesOnlyNonblock", test_setattr_changes_only_nonblock, 0},
      {"Timeouts", test_timeouts, 0},
      {"EintrWhenAHandlerRuns", test_eintr_when_a_handler_runs, 0},
      {"BlockingAcrossProcesses", test_blocking_across_processes, 0},
      {"ForkInheritsDescriptors", test_fork_inherits_descriptors, 0},
      {"NonblockSharedWithAForkedChild", test_nonblock_shared_with_a_forked_child, 0},
      {"UnlinkWhileOpen", test_unlink_while_open, 0},
      {"Permissions", test_permissions, 0},
      {"SupplementaryGroups", test_supplementary_groups, 2},
      {"NoDescriptorLeftIsEmfile", test_no_descriptor_left_is_emfile, 0},
      {"NotifySignal", test_notify_signal, 0},
      {"NotifyBusyForAnotherProcess", test_notify_busy_for_another_process, 0},
      {"NotifyNoneEndsWithAMessage", test_notify_none_ends_with_a_message, 0},
      {"NotifyBadSigevent", test_notify_bad_sigevent, 0},
      {"NotifyNotSentWhileAReceiverWaits", test_notify_not_sent_while_a_receiver_waits, 0},
      {"NotifyThread", test_notify_thread, 0},
      {"KernelMqueueUntouched", test_kernel_mqueue_untouched, 1},
  };
  snprintf(qname, sizeof qname, "/vipc-conf-%d", (int)getpid());
  snprintf(qname2, sizeof qname2, "/vipc-conf-%d-b", (int)getpid());
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; ++i) {
    if (only != NULL && strcmp(only, tests[i].name) != 0) continue;
    if (tests[i].vipc_only == 2 && only == NULL) continue;
    if (tests[i].vipc_only == 1 && !forbid) continue;
#ifdef MQ_TEST_TSAN
    /* glibc's own SIGEV_THREAD machinery (a helper thread on a netlink socket) crashes
       under TSan; vipc's notifier threads are ordinary pthreads and are tested. */
    if (!forbid && strcmp(tests[i].name, "NotifyThread") == 0) {
      printf("skip NotifyThread: glibc's SIGEV_THREAD helper does not run under TSan\n");
      continue;
    }
#endif
    current = tests[i].name;
    const int before = failures;
    skipped = 0;
    tests[i].fn();
    if (failures == before && !skipped) printf("ok %s\n", current);
    mq_unlink(qname); /* leave nothing behind after a failure */
    mq_unlink(qname2);
  }
  return failures > 125 ? 125 : failures;
}
