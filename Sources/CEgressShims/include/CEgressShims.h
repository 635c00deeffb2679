// What Swift's Glibc module does not give us cleanly: epoll (a packed struct and
// enum constants), eventfd, timerfd, signalfd, splice, pipe2 and accept4 flags.
// Every function here is a thin, errno-preserving pass-through; the Swift side
// (EgressPosix) owns retry and error semantics.
#ifndef CEGRESS_SHIMS_H
#define CEGRESS_SHIMS_H

#include <stdint.h>
#include <spawn.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <signal.h>

/// One readiness report, unpacked (struct epoll_event is packed on x86_64,
/// which Swift imports awkwardly).
typedef struct {
    uint64_t data;
    uint32_t events;
} cegress_event;

extern const uint32_t CEGRESS_EPOLLIN;
extern const uint32_t CEGRESS_EPOLLOUT;
extern const uint32_t CEGRESS_EPOLLERR;
extern const uint32_t CEGRESS_EPOLLHUP;
extern const uint32_t CEGRESS_EPOLLRDHUP;
extern const uint32_t CEGRESS_EPOLLET;
extern const int CEGRESS_EPOLL_CTL_ADD;
extern const int CEGRESS_EPOLL_CTL_MOD;
extern const int CEGRESS_EPOLL_CTL_DEL;
extern const int CEGRESS_SOCK_NONBLOCK;
extern const int CEGRESS_SOCK_CLOEXEC;
extern const int CEGRESS_SOCK_STREAM;
extern const unsigned int CEGRESS_SPLICE_F_MOVE;
extern const unsigned int CEGRESS_SPLICE_F_NONBLOCK;

int cegress_epoll_create(void);
int cegress_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
/// Waits like epoll_wait and copies at most `max` reports into `out`.
int cegress_epoll_wait(int epfd, cegress_event *out, int max, int timeout_ms);

int cegress_eventfd(void);
int cegress_timerfd_create(void);
/// Arms the timer for an absolute CLOCK_MONOTONIC deadline in nanoseconds; 0 disarms.
int cegress_timerfd_set_absolute(int fd, uint64_t deadline_ns);
/// Creates a non-blocking signalfd for the given signals (which the caller must have blocked).
int cegress_signalfd(const int *signals, int count);
/// Reads one signal from a signalfd: returns the signal number, 0 when none, -1 on error.
int cegress_signalfd_read(int fd);
/// Blocks the given signals in the calling thread (threads created later inherit the mask).
int cegress_block_signals(const int *signals, int count);
int cegress_ignore_sigpipe(void);

int cegress_accept4(int fd, struct sockaddr *addr, socklen_t *len);
int cegress_socket(int domain);
int cegress_pipe2(int fds[2]);
/// A close-on-exec pipe with only `fds[ours]` non-blocking: the other end goes to a child,
/// and O_NONBLOCK lives on the shared file description, so a child handed a non-blocking
/// stdout would see EAGAIN.
int cegress_pipe_for_child(int fds[2], int ours);
/// posix_spawn_file_actions_addchdir_np (glibc 2.29), which Swift's Glibc module does not show.
int cegress_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path);
/// A descriptor that becomes readable when process `pid` (our child) exits: pidfd_open(2).
int cegress_pidfd_open(int pid);
ssize_t cegress_splice(int fd_in, int fd_out, size_t len, unsigned int flags);
int cegress_set_pipe_size(int fd, int size);
uint64_t cegress_monotonic_ns(void);
uint64_t cegress_realtime_ns(void);
int cegress_errno(void);
/// A non-blocking inotify instance.
int cegress_inotify_init(void);
/// Watches a directory for entries being created, written, moved or deleted (a ConfigMap
/// update swaps a symlink with a rename, which shows up as IN_MOVED_TO).
int cegress_inotify_watch_directory(int fd, const char *path);
/// Reads and discards pending events: 1 if any were read, 0 if none, -1 on error.
int cegress_inotify_drain(int fd);
void cegress_set_thread_name(const char *name);
/// mallopt(M_ARENA_MAX, n); returns 1 on success.
int cegress_malloc_arena_max(int arenas);
/// malloc_trim(0): gives free heap pages back to the kernel; returns 1 if any were.
int cegress_malloc_trim(void);
int cegress_available_cpus(void);

#endif
