/* How fast the machine's first two cores pass data to each other, and how fast each one computes alone.

       gcc -O2 -pthread scripts/core_pingpong.c -o /tmp/core_pingpong && /tmp/core_pingpong

   Two threads, pinned to cores 0 and 1, hand a counter back and forth through one shared cache line
   300,000 times; the mean round trip is printed with the number of round trips over 20 us (the other
   thread was descheduled) and the time they took. Then a serial chain of 20 million multiply-adds runs
   on each core alone. On a shared virtual machine the round trip can change while each core's own speed
   does not: the two cores then sit farther apart, and any two-thread work that passes arrays between
   them slows down (see bench/cli_epoch.py's probe). Linux only (sched_setaffinity).
*/
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { ROUND_TRIPS = 300000 };
static _Atomic long turn;
static volatile double sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void pin(int core) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(core, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        fprintf(stderr, "core_pingpong: cannot run on core %d (this process may use fewer cores); "
                        "run it where cores 0 and 1 are both allowed\n", core);
        exit(2);
    }
}

static void *answer(void *unused) {
    (void)unused;
    pin(1);
    for (long i = 0; i < ROUND_TRIPS; i++) {
        while (atomic_load(&turn) != 2 * i + 1) {}
        atomic_store(&turn, 2 * i + 2);
    }
    return NULL;
}

static double serial_ms(int core) {
    pin(core);
    double start = now(), x = 1.0;
    for (long i = 0; i < 20000000; i++) x = x * 1.0000001 + 1e-9;
    sink = x;
    return (now() - start) * 1e3;
}

int main(void) {
    pthread_t other;
    pin(0);
    if (pthread_create(&other, NULL, answer, NULL) != 0) {
        fprintf(stderr, "core_pingpong: cannot start the second thread\n");
        return 2;
    }
    double start = now(), stalled = 0.0;
    long stalls = 0;
    for (long i = 0; i < ROUND_TRIPS; i++) {
        double t = now();
        atomic_store(&turn, 2 * i + 1);
        while (atomic_load(&turn) != 2 * i + 2) {}
        t = now() - t;
        if (t > 20e-6) stalls++, stalled += t;
    }
    double total = now() - start;
    pthread_join(other, NULL);
    printf("round trip between cores 0 and 1: mean %.2f us (%ld over 20 us, %.1f ms of %.1f ms)\n",
           total / ROUND_TRIPS * 1e6, stalls, stalled * 1e3, total * 1e3);
    printf("20M serial multiply-adds: core 0 %.1f ms, core 1 %.1f ms\n", serial_ms(0), serial_ms(1));
    return 0;
}
