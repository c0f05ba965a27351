/*
 * clockshift: moves a process's wall clock, for the lab's clock-skew faults.
 *
 * Preloaded (LD_PRELOAD) into every server the lab starts. It overrides
 * clock_gettime (CLOCK_REALTIME and CLOCK_REALTIME_COARSE only; every other clock is
 * left alone), gettimeofday, time and timespec_get (TIME_UTC), and adds the offset
 * held in the file named by $COHERENCE_CLOCK_FILE.
 *
 * The file: one line of one or two decimal integers,
 *
 *     OFFSET_MS            a bump: the clock reads OFFSET_MS later (negative: earlier)
 *     OFFSET_MS PERIOD_MS  a strobe: the offset applies during every other PERIOD_MS of
 *                          real time (when floor(real_time / period) is even), so the
 *                          clock jumps forth and back every period
 *
 * |OFFSET_MS| < 2^31 and PERIOD_MS < 2^32. A missing, empty or unparseable file means
 * no offset. Writers replace the file atomically (write a temporary file, rename it),
 * so a half-written file is never read. The file is read again at most every 10 ms of
 * (real) time, so a change takes effect within 10 ms.
 *
 * Why not libfaketime: Debian's 0.9.10 finds the real functions with
 * dlsym(RTLD_NEXT), which allocates, and redis-server's jemalloc asks for the time
 * while it initialises its allocator: the recursion hangs redis-server at start-up.
 * This shim never allocates and never calls dlsym: it calls the kernel's own vDSO
 * functions (found through the auxiliary vector, as fast as glibc's), or the raw
 * system call where there is no vDSO. It reads its file with raw system calls, keeps
 * its state in lock-free atomics, preserves errno, and is async-signal-safe.
 *
 * Not shifted: glibc's internal uses of the clock (for example the absolute deadline
 * of pthread_cond_timedwait on CLOCK_REALTIME) and file timestamps.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* How often the offset file is read again, in nanoseconds of real time. */
#define CHECK_NS 10000000LL
#define NS_PER_SEC 1000000000LL
#define NS_PER_MS 1000000LL

typedef long (*clock_gettime_fn)(clockid_t, struct timespec *);
typedef long (*gettimeofday_fn)(struct timeval *, void *);

/* 0: not initialised, 1: being initialised, 2: ready. */
static atomic_int state;
static clock_gettime_fn vdso_clock_gettime;
static gettimeofday_fn vdso_gettimeofday;
/* A copy of $COHERENCE_CLOCK_FILE: some servers (redis-server's setproctitle)
 * overwrite the original environment after start-up. Empty: never skewed. */
static char clock_file[4096];
/* The skew now: the offset in ms (signed, high 32 bits) and the strobe period in ms
 * (low 32 bits, 0 for a bump). One word, so no reader ever sees half an update. */
static _Atomic uint64_t skew;
/* When (real CLOCK_REALTIME, ns) the file is to be read again. */
static _Atomic long long next_check_ns;

/* A function of the vDSO, by name; NULL if there is none. Uses the vDSO's DT_HASH
 * table, which the kernel links into it on every architecture. */
static void *vdso_lookup(const char *name) {
    uintptr_t base = getauxval(AT_SYSINFO_EHDR);
    if (!base)
        return NULL;
    const ElfW(Ehdr) *eh = (const void *)base;
    const ElfW(Phdr) *ph = (const void *)(base + eh->e_phoff);
    uintptr_t load = 0;
    int have_load = 0;
    const ElfW(Dyn) *dyn = NULL;
    for (int i = 0; i < eh->e_phnum; i++) {
        if (ph[i].p_type == PT_LOAD && !have_load) {
            load = base + ph[i].p_offset - ph[i].p_vaddr;
            have_load = 1;
        } else if (ph[i].p_type == PT_DYNAMIC) {
            dyn = (const void *)(base + ph[i].p_offset);
        }
    }
    if (!have_load || !dyn)
        return NULL;
    const ElfW(Sym) *syms = NULL;
    const char *strs = NULL;
    const Elf32_Word *hash = NULL;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        switch (dyn->d_tag) {
        case DT_SYMTAB:
            syms = (const void *)(load + dyn->d_un.d_ptr);
            break;
        case DT_STRTAB:
            strs = (const void *)(load + dyn->d_un.d_ptr);
            break;
        case DT_HASH:
            hash = (const void *)(load + dyn->d_un.d_ptr);
            break;
        }
    }
    if (!syms || !strs || !hash)
        return NULL;
    /* DT_HASH: nbucket, nchain; nchain is the number of symbols. */
    for (Elf32_Word i = 0; i < hash[1]; i++) {
        const ElfW(Sym) *s = &syms[i];
        if (ELF64_ST_TYPE(s->st_info) != STT_FUNC || s->st_shndx == SHN_UNDEF)
            continue;
        if (strcmp(strs + s->st_name, name) == 0)
            return (void *)(load + s->st_value);
    }
    return NULL;
}

/* Initialises once; false while another thread (or an interrupted caller in this
 * one) is initialising: the caller then reads the real clock without an offset. */
static int ready(void) {
    if (atomic_load_explicit(&state, memory_order_acquire) == 2)
        return 1;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&state, &expected, 1))
        return 0;
    vdso_clock_gettime = vdso_lookup("__vdso_clock_gettime");
    if (!vdso_clock_gettime)
        vdso_clock_gettime = vdso_lookup("__kernel_clock_gettime");
    vdso_gettimeofday = vdso_lookup("__vdso_gettimeofday");
    if (!vdso_gettimeofday)
        vdso_gettimeofday = vdso_lookup("__kernel_gettimeofday");
    const char *file = getenv("COHERENCE_CLOCK_FILE");
    if (file && strlen(file) < sizeof clock_file)
        memcpy(clock_file, file, strlen(file) + 1);
    atomic_store_explicit(&state, 2, memory_order_release);
    return 1;
}

/* Before main, while the environment is still the one the process was given. */
__attribute__((constructor)) static void clockshift_init(void) { ready(); }

/* A vDSO or raw system call result as libc returns it: -1 and errno on failure. */
static int result(long r) {
    if (r < 0 && r > -4096) {
        errno = (int)-r;
        return -1;
    }
    return (int)r;
}

static int real_clock_gettime(int ok, clockid_t clock, struct timespec *ts) {
    if (ok && vdso_clock_gettime)
        return result(vdso_clock_gettime(clock, ts));
    return (int)syscall(SYS_clock_gettime, clock, ts);
}

/* Parses "OFFSET_MS [PERIOD_MS]" into the packed skew; 0 (none) if it is not that. */
static uint64_t parse(const char *p) {
    long long v[2] = {0, 0};
    int n = 0;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0' || *p == '\n' || *p == '\r')
            break;
        if (n == 2)
            return 0;
        int negative = 0;
        if (*p == '-' || *p == '+')
            negative = *p++ == '-';
        if (*p < '0' || *p > '9')
            return 0;
        long long x = 0;
        while (*p >= '0' && *p <= '9') {
            x = x * 10 + (*p++ - '0');
            if (x > 0xffffffffLL)
                return 0;
        }
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '\0')
            return 0;
        v[n++] = negative ? -x : x;
    }
    /* The rest of the file must be blank. */
    while (*p == '\n' || *p == '\r' || *p == ' ' || *p == '\t')
        p++;
    if (n == 0 || *p != '\0')
        return 0;
    if (v[0] > INT32_MAX || v[0] < -INT32_MAX || v[1] < 0)
        return 0;
    return ((uint64_t)(uint32_t)(int32_t)v[0] << 32) | (uint32_t)v[1];
}

/* Reads the clock file with raw system calls, keeping errno as it was. */
static uint64_t read_skew(void) {
    int saved = errno;
    uint64_t s = 0;
    long fd = syscall(SYS_openat, AT_FDCWD, clock_file, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[64];
        long n = syscall(SYS_read, fd, buf, sizeof buf - 1);
        syscall(SYS_close, fd);
        if (n > 0) {
            buf[n] = '\0';
            s = parse(buf);
        }
    }
    errno = saved;
    return s;
}

/* The offset to add to the real wall-clock time `real_ns`, in ns. */
static long long offset_ns(long long real_ns) {
    if (!clock_file[0])
        return 0;
    long long next = atomic_load_explicit(&next_check_ns, memory_order_relaxed);
    /* Due, or the real clock was set back: one caller reads the file again. */
    if ((real_ns >= next || real_ns < next - 2 * CHECK_NS) &&
        atomic_compare_exchange_strong(&next_check_ns, &next, real_ns + CHECK_NS))
        atomic_store_explicit(&skew, read_skew(), memory_order_relaxed);
    uint64_t s = atomic_load_explicit(&skew, memory_order_relaxed);
    long long offset = (long long)(int32_t)(uint32_t)(s >> 32) * NS_PER_MS;
    long long period = (long long)(uint32_t)s * NS_PER_MS;
    if (period > 0 && real_ns >= 0 && (real_ns / period) % 2 != 0)
        return 0;
    return offset;
}

static void shift(struct timespec *ts) {
    long long real_ns = (long long)ts->tv_sec * NS_PER_SEC + ts->tv_nsec;
    long long off = offset_ns(real_ns);
    if (!off)
        return;
    long long ns = ts->tv_nsec + off % NS_PER_SEC;
    ts->tv_sec += off / NS_PER_SEC + ns / NS_PER_SEC;
    ns %= NS_PER_SEC;
    if (ns < 0) {
        ns += NS_PER_SEC;
        ts->tv_sec -= 1;
    }
    ts->tv_nsec = ns;
}

/* The shifted wall clock. */
static int wall(clockid_t clock, struct timespec *ts) {
    int ok = ready();
    int r = real_clock_gettime(ok, clock, ts);
    if (r == 0 && ok)
        shift(ts);
    return r;
}

EXPORT int clock_gettime(clockid_t clock, struct timespec *ts) {
    if (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)
        return wall(clock, ts);
    return real_clock_gettime(ready(), clock, ts);
}

/* Defined under another name and exported as an alias: glibc declares gettimeofday's
 * first argument nonnull, and the compiler would drop the check for a null one. */
static int shifted_gettimeofday(struct timeval *tv, void *tz) {
    int ok = ready();
    int r;
    if (ok && vdso_gettimeofday)
        r = result(vdso_gettimeofday(tv, tz));
    else
        r = (int)syscall(SYS_gettimeofday, tv, tz);
    if (r == 0 && ok && tv) {
        struct timespec ts = {tv->tv_sec, tv->tv_usec * 1000};
        shift(&ts);
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return r;
}
EXPORT int gettimeofday(struct timeval *restrict tv, void *restrict tz)
    __attribute__((alias("shifted_gettimeofday")));

EXPORT time_t time(time_t *t) {
    struct timespec ts;
    if (wall(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    if (t)
        *t = ts.tv_sec;
    return ts.tv_sec;
}

EXPORT int timespec_get(struct timespec *ts, int base) {
    clockid_t clock;
    switch (base) {
    case TIME_UTC:
        return wall(CLOCK_REALTIME, ts) == 0 ? base : 0;
#ifdef TIME_MONOTONIC
    case TIME_MONOTONIC:
        clock = CLOCK_MONOTONIC;
        break;
#endif
#ifdef TIME_ACTIVE
    case TIME_ACTIVE:
        clock = CLOCK_PROCESS_CPUTIME_ID;
        break;
#endif
#ifdef TIME_THREAD_ACTIVE
    case TIME_THREAD_ACTIVE:
        clock = CLOCK_THREAD_CPUTIME_ID;
        break;
#endif
    default:
        return 0;
    }
    return real_clock_gettime(ready(), clock, ts) == 0 ? base : 0;
}
