/* Reference for bench/workers.py: the same exchanges as ktstr's
 * FutexPingPong and PipeIo workers, in C. Two processes; each side records
 * wake latency = now - the waker's timestamp, as the Python workers do.
 * Usage: ref_pingpong futex|pipe SECONDS CPU_A CPU_B -> "p50_us p99_us samples"
 * (side A pinned to CPU_A, side B to CPU_B, as the ktstr workers are). */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 200000

struct shared { volatile int32_t turn; int32_t pad; volatile int64_t stamp; volatile int stop; };

static int64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static int run_futex(struct shared *s, int me, int64_t *lat, int64_t end) {
	int n = 0, other = 1 - me;
	while (now_ns() < end && !s->stop) {
		while (s->turn != me && !s->stop) {
			struct timespec to = { 0, 100000000 };
			syscall(SYS_futex, &s->turn, FUTEX_WAIT, other, &to, NULL, 0);
		}
		int64_t t = now_ns();
		if (s->stamp && n < MAX_SAMPLES) lat[n++] = t - s->stamp;
		s->stamp = now_ns();
		__atomic_store_n(&s->turn, other, __ATOMIC_SEQ_CST);
		syscall(SYS_futex, &s->turn, FUTEX_WAKE, 1, NULL, NULL, 0);
	}
	s->stop = 1;
	__atomic_store_n(&s->turn, other, __ATOMIC_SEQ_CST);
	syscall(SYS_futex, &s->turn, FUTEX_WAKE, 1, NULL, NULL, 0);
	return n;
}

static int run_pipe(int rd, int wr, int me, int64_t *lat, int64_t end) {
	int n = 0;
	int64_t stamp;
	while (now_ns() < end) {
		if (me == 0) { stamp = now_ns(); if (write(wr, &stamp, 8) != 8) break; }
		if (read(rd, &stamp, 8) != 8) break;
		if (n < MAX_SAMPLES) lat[n++] = now_ns() - stamp;
		if (me == 1) { stamp = now_ns(); if (write(wr, &stamp, 8) != 8) break; }
	}
	close(wr);
	return n;
}

int main(int argc, char **argv) {
	if (argc != 5) {
		fprintf(stderr, "usage: %s futex|pipe SECONDS CPU_A CPU_B\n", argv[0]);
		return 2;
	}
	int futex = strcmp(argv[1], "futex") == 0;
	int64_t end = now_ns() + (int64_t)(atof(argv[2]) * 1e9);
	struct shared *s = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int64_t *lat = mmap(NULL, 2 * MAX_SAMPLES * 8, PROT_READ | PROT_WRITE,
			    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int *counts = (int *)s + 16;
	int ab[2], ba[2];
	if (pipe(ab) || pipe(ba)) return 1;
	pid_t pid = fork();
	int me = pid == 0 ? 1 : 0;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(atoi(argv[3 + me]), &set);
	if (sched_setaffinity(0, sizeof(set), &set)) { perror("sched_setaffinity"); return 1; }
	int64_t *mine = lat + me * MAX_SAMPLES;
	int n = futex ? run_futex(s, me, mine, end)
		      : run_pipe(me ? ab[0] : ba[0], me ? ba[1] : ab[1], me, mine, end);
	counts[me] = n;
	if (pid == 0) _exit(0);
	waitpid(pid, NULL, 0);
	/* both sides' samples, together */
	memmove(lat + counts[0], lat + MAX_SAMPLES, (size_t)counts[1] * 8);
	int total = counts[0] + counts[1];
	qsort(lat, total, 8, cmp);
	if (!total) { printf("0 0 0\n"); return 1; }
	int p50 = (total * 50 + 99) / 100 - 1, p99 = (total * 99 + 99) / 100 - 1;
	printf("%.2f %.2f %d\n", lat[p50 < 0 ? 0 : p50] / 1e3, lat[p99 < 0 ? 0 : p99] / 1e3, total);
	return 0;
}
