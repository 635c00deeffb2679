#define _GNU_SOURCE
#include <malloc.h>
#include "CEgressShims.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/inotify.h>
#include <sys/pidfd.h>
#include <pthread.h>
#include <sched.h>

const uint32_t CEGRESS_EPOLLIN = EPOLLIN;
const uint32_t CEGRESS_EPOLLOUT = EPOLLOUT;
const uint32_t CEGRESS_EPOLLERR = EPOLLERR;
const uint32_t CEGRESS_EPOLLHUP = EPOLLHUP;
const uint32_t CEGRESS_EPOLLRDHUP = EPOLLRDHUP;
const uint32_t CEGRESS_EPOLLET = EPOLLET;
const int CEGRESS_EPOLL_CTL_ADD = EPOLL_CTL_ADD;
const int CEGRESS_EPOLL_CTL_MOD = EPOLL_CTL_MOD;
const int CEGRESS_EPOLL_CTL_DEL = EPOLL_CTL_DEL;
const int CEGRESS_SOCK_NONBLOCK = SOCK_NONBLOCK;
const int CEGRESS_SOCK_CLOEXEC = SOCK_CLOEXEC;
const int CEGRESS_SOCK_STREAM = SOCK_STREAM;
const unsigned int CEGRESS_SPLICE_F_MOVE = SPLICE_F_MOVE;
const unsigned int CEGRESS_SPLICE_F_NONBLOCK = SPLICE_F_NONBLOCK;

int cegress_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int cegress_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}

int cegress_epoll_wait(int epfd, cegress_event *out, int max, int timeout_ms) {
    struct epoll_event evs[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) {
        out[i].data = evs[i].data.u64;
        out[i].events = evs[i].events;
    }
    return n;
}

int cegress_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int cegress_timerfd_create(void) { return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC); }

int cegress_timerfd_set_absolute(int fd, uint64_t deadline_ns) {
    struct itimerspec spec;
    memset(&spec, 0, sizeof spec);
    spec.it_value.tv_sec = (time_t)(deadline_ns / 1000000000ull);
    spec.it_value.tv_nsec = (long)(deadline_ns % 1000000000ull);
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &spec, NULL);
}

static void fill_set(sigset_t *set, const int *signals, int count) {
    sigemptyset(set);
    for (int i = 0; i < count; i++) sigaddset(set, signals[i]);
}

int cegress_signalfd(const int *signals, int count) {
    sigset_t set;
    fill_set(&set, signals, count);
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

int cegress_signalfd_read(int fd) {
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof info);
    if (n == (ssize_t)sizeof info) return (int)info.ssi_signo;
    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    return -1;
}

int cegress_block_signals(const int *signals, int count) {
    sigset_t set;
    fill_set(&set, signals, count);
    return pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int cegress_ignore_sigpipe(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    return sigaction(SIGPIPE, &sa, NULL);
}

int cegress_accept4(int fd, struct sockaddr *addr, socklen_t *len) {
    return accept4(fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int cegress_socket(int domain) { return socket(domain, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0); }

int cegress_pipe2(int fds[2]) { return pipe2(fds, O_NONBLOCK | O_CLOEXEC); }

int cegress_pipe_for_child(int fds[2], int ours) {
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    int flags = fcntl(fds[ours], F_GETFL);
    if (flags < 0 || fcntl(fds[ours], F_SETFL, flags | O_NONBLOCK) != 0) {
        int saved = errno;
        close(fds[0]);
        close(fds[1]);
        errno = saved;
        return -1;
    }
    return 0;
}

int cegress_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}

int cegress_pidfd_open(int pid) { return pidfd_open(pid, 0); }

ssize_t cegress_splice(int fd_in, int fd_out, size_t len, unsigned int flags) {
    return splice(fd_in, NULL, fd_out, NULL, len, flags);
}

int cegress_set_pipe_size(int fd, int size) { return fcntl(fd, F_SETPIPE_SZ, size); }

uint64_t cegress_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t cegress_realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int cegress_errno(void) { return errno; }

void cegress_set_thread_name(const char *name) {
    char truncated[16];
    strncpy(truncated, name, sizeof truncated - 1);
    truncated[sizeof truncated - 1] = 0;
    pthread_setname_np(pthread_self(), truncated);
}

int cegress_available_cpus(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int cegress_inotify_init(void) { return inotify_init1(IN_NONBLOCK | IN_CLOEXEC); }

int cegress_inotify_watch_directory(int fd, const char *path) {
    return inotify_add_watch(fd, path, IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ATTRIB);
}

int cegress_inotify_drain(int fd) {
    char buffer[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    int any = 0;
    for (;;) {
        ssize_t n = read(fd, buffer, sizeof buffer);
        if (n > 0) { any = 1; continue; }
        if (n == -1 && errno == EINTR) continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) return any;
        return -1;
    }
}

int cegress_malloc_arena_max(int arenas) { return mallopt(M_ARENA_MAX, arenas); }

int cegress_malloc_trim(void) { return malloc_trim(0); }
