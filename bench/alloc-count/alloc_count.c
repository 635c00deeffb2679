// LD_PRELOAD shim that counts heap allocations (malloc, calloc, realloc, posix_memalign,
// aligned_alloc) and prints the total to stderr at exit. Used by bench/alloc_count.sh to show
// how many allocations a tunnel costs and that relaying bytes costs none.
// Build: gcc -O2 -shared -fPIC -o alloc_count.so alloc_count.c
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static atomic_ulong allocations;

void *malloc(size_t size) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_malloc(size); }
void *calloc(size_t n, size_t size) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_realloc(p, size); }
int posix_memalign(void **out, size_t alignment, size_t size) {
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    void *p = __libc_memalign(alignment, size);
    if (!p) return 12;
    *out = p;
    return 0;
}
void *aligned_alloc(size_t alignment, size_t size) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_memalign(alignment, size); }

__attribute__((destructor)) static void report(void) {
    char line[96];
    int n = snprintf(line, sizeof line, "alloc_count: %lu allocations\n", atomic_load(&allocations));
    if (n > 0) { ssize_t ignored = write(2, line, (size_t)n); (void)ignored; }
}
