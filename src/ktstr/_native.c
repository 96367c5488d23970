/*
 * ktstr._native: the hot loops of the wake-latency work kinds in C.
 *
 * A wake latency is "now - the waker's timestamp" as seen by the woken side,
 * so any interpreter overhead on the waiter's path is measured as scheduler
 * latency. CPython adds several times the scheduler's own wake-up cost under
 * emulation (bench/workers.py), so FutexPingPong and PipeIo run their whole
 * loop here, with the same telemetry as guest/workers.py's Telemetry.
 *
 * pingpong(kind, role, rd, wr, page, max_samples) -> dict
 *   kind 0: futex on page[0:4] (turn), page[4:8] (the waker's CPU) and
 *   page[8:16] (stamp); 1: pipes rd/wr, a message being {stamp, waker's CPU}.
 *   The woken side counts each wake-up by (waker's CPU, its own CPU): the
 *   "places" of the result, which the host maps to LLCs and nodes.
 *   Runs until SIGUSR1 (a C handler replaces Python's for the duration; the
 *   hand-over blocks the signal, so one sent just before is not lost).
 *   The pipe loop keeps SIGUSR1 blocked and waits in ppoll(), which unblocks
 *   it atomically: a stop that lands between the flag test and the wait
 *   interrupts the wait instead of being lost (a blocking read() there slept
 *   until the worker was SIGKILLed).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_CPUS 1024
/* Distinct (waker CPU, woken CPU) pairs a worker counts; wake-ups past them
 * are counted as lost (protocol.messages.MAX_WAKE_PLACES). */
#define MAX_PLACES 1024

static volatile sig_atomic_t stop_flag;

static void on_stop(int sig) { (void)sig; stop_flag = 1; }

static inline int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct tel {
	int64_t t0, last, max_gap, max_gap_at;
	long iterations, migrations, lat_seen, nlat, max_samples;
	int last_cpu, max_gap_cpu;
	uint64_t rng;
	int64_t *lat;
	unsigned char cpus[MAX_CPUS / 8];
	int nplaces, hint;
	long places_lost;
	struct place { int32_t waker, cpu; long n; } places[MAX_PLACES];
};

static void tel_init(struct tel *t, int64_t *lat, long max_samples)
{
	memset(t, 0, sizeof(*t));
	t->t0 = t->last = now_ns();
	t->last_cpu = t->max_gap_cpu = sched_getcpu();
	if (t->last_cpu >= 0 && t->last_cpu < MAX_CPUS)
		t->cpus[t->last_cpu / 8] |= 1 << (t->last_cpu % 8);
	t->lat = lat;
	t->max_samples = max_samples;
	t->rng = (uint64_t)getpid() * 0x9E3779B97F4A7C15ULL | 1;
}

static void tel_tick(struct tel *t, int64_t blocked)
{
	int64_t now = now_ns();
	int cpu = sched_getcpu();
	int64_t gap = now - t->last - blocked;

	if (gap > t->max_gap) {
		t->max_gap = gap;
		t->max_gap_at = t->last - t->t0;
		t->max_gap_cpu = cpu;
	}
	if (cpu != t->last_cpu) {
		t->migrations++;
		if (cpu >= 0 && cpu < MAX_CPUS)
			t->cpus[cpu / 8] |= 1 << (cpu % 8);
		t->last_cpu = cpu;
	}
	t->iterations++;
	t->last = now;
}

static void tel_latency(struct tel *t, int64_t ns)
{
	t->lat_seen++;
	if (t->nlat < t->max_samples) {
		t->lat[t->nlat++] = ns;
	} else {
		t->rng ^= t->rng << 13;
		t->rng ^= t->rng >> 7;
		t->rng ^= t->rng << 17;
		long j = (long)(t->rng % (uint64_t)t->lat_seen);
		if (j < t->max_samples)
			t->lat[j] = ns;
	}
}

/* A wake-up by a task that was on CPU waker, seen on this task's CPU now. */
static void tel_place(struct tel *t, int64_t waker)
{
	int cpu = sched_getcpu();

	if (waker < 0 || waker >= MAX_CPUS || cpu < 0) {
		t->places_lost++;
		return;
	}
	struct place *p = &t->places[t->hint];
	if (t->nplaces && p->waker == waker && p->cpu == cpu) {
		p->n++;
		return;
	}
	for (int i = 0; i < t->nplaces; i++) {
		if (t->places[i].waker == waker && t->places[i].cpu == cpu) {
			t->places[i].n++;
			t->hint = i;
			return;
		}
	}
	if (t->nplaces == MAX_PLACES) {
		t->places_lost++;
		return;
	}
	t->places[t->nplaces] = (struct place){ (int32_t)waker, cpu, 1 };
	t->hint = t->nplaces++;
}

static void futex_loop(struct tel *t, volatile int32_t *turn, volatile int32_t *waker,
		       volatile int64_t *stamp, int me)
{
	int other = 1 - me;
	struct timespec to = { 0, 100000000 };

	while (!stop_flag) {
		int64_t start = now_ns();
		while (__atomic_load_n(turn, __ATOMIC_ACQUIRE) != me && !stop_flag)
			syscall(SYS_futex, turn, FUTEX_WAIT, other, &to, NULL, 0);
		if (stop_flag)
			break;
		int64_t woke = now_ns();
		if (*stamp) {
			tel_latency(t, woke - *stamp);
			tel_place(t, *waker);
		}
		*waker = sched_getcpu();
		*stamp = now_ns();
		__atomic_store_n(turn, other, __ATOMIC_RELEASE);
		syscall(SYS_futex, turn, FUTEX_WAKE, 1, NULL, NULL, 0);
		tel_tick(t, woke - start);
	}
}

/* Wait until rd is readable, or a stop arrives (-1): the signal is blocked
 * except inside ppoll(), so it cannot slip in between the test and the wait. */
static int wait_readable(int rd, const sigset_t *waitmask)
{
	struct pollfd p = { .fd = rd, .events = POLLIN };

	for (;;) {
		if (stop_flag)
			return -1;
		int n = ppoll(&p, 1, NULL, waitmask);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -1;
	}
}

/* A pipe message: when it was sent, and from which CPU. */
struct msg { int64_t stamp, cpu; };

static int send_msg(int wr)
{
	struct msg m = { now_ns(), sched_getcpu() };
	return write(wr, &m, sizeof(m)) == (ssize_t)sizeof(m) ? 0 : -1;
}

static int receive(struct tel *t, int rd, const sigset_t *waitmask, int64_t *blocked)
{
	int64_t start = now_ns();
	struct msg m;
	if (wait_readable(rd, waitmask))
		return -1;
	ssize_t n = read(rd, &m, sizeof(m));
	int64_t woke = now_ns();

	if (n != (ssize_t)sizeof(m))
		return -1;
	tel_latency(t, woke - m.stamp);
	tel_place(t, m.cpu);
	*blocked = woke - start;
	return 0;
}

/* A stop sent while the loop ran stays pending: ppoll() delivers it only
 * when it has to wait, and a partner on another CPU can keep the pipe
 * readable every time. So every STOP_CHECK_NS the loop looks, and takes it
 * (tests/unit/test_workers_local.py: a pipe that never runs dry). */
#define STOP_CHECK_NS 10000000LL

static int take_pending_stop(void)
{
	sigset_t pending, only;
	struct timespec zero = { 0, 0 };

	if (sigpending(&pending) || !sigismember(&pending, SIGUSR1))
		return 0;
	sigemptyset(&only);
	sigaddset(&only, SIGUSR1);
	sigtimedwait(&only, NULL, &zero); /* consumed here, not by Python later */
	stop_flag = 1;
	return 1;
}

static void pipe_loop(struct tel *t, int rd, int wr, int me, const sigset_t *waitmask)
{
	int64_t checked = now_ns();

	while (!stop_flag) {
		int64_t blocked = 0;
		if (me == 0 && send_msg(wr))
			break;
		if (receive(t, rd, waitmask, &blocked))
			break;
		if (me == 1 && send_msg(wr))
			break;
		tel_tick(t, blocked);
		if (t->last - checked >= STOP_CHECK_NS) { /* t->last: tel_tick's clock read */
			checked = t->last;
			if (take_pending_stop())
				break;
		}
	}
}

static PyObject *build_result(struct tel *t)
{
	PyObject *cpus = PyList_New(0), *lat = PyList_New(t->nlat);
	PyObject *places = PyList_New(t->nplaces);
	if (!cpus || !lat || !places)
		goto fail;
	for (int i = 0; i < t->nplaces; i++) {
		struct place *p = &t->places[i];
		PyObject *v = Py_BuildValue("(iil)", (int)p->waker, (int)p->cpu, p->n);
		if (!v)
			goto fail;
		PyList_SET_ITEM(places, i, v);
	}
	for (int c = 0; c < MAX_CPUS; c++) {
		if (t->cpus[c / 8] & (1 << (c % 8))) {
			PyObject *v = PyLong_FromLong(c);
			if (!v || PyList_Append(cpus, v)) {
				Py_XDECREF(v);
				goto fail;
			}
			Py_DECREF(v);
		}
	}
	for (long i = 0; i < t->nlat; i++)
		PyList_SET_ITEM(lat, i, PyLong_FromLongLong(t->lat[i]));
	PyObject *r = Py_BuildValue(
		"{s:l,s:L,s:L,s:i,s:l,s:N,s:N,s:l,s:L,s:N,s:l}", "iterations", t->iterations,
		"max_gap_ns", (long long)t->max_gap, "max_gap_at_ns", (long long)t->max_gap_at,
		"max_gap_cpu", t->max_gap_cpu, "migrations", t->migrations, "cpus", cpus,
		"lat_ns", lat, "lat_seen", t->lat_seen, "t0_ns", (long long)t->t0,
		"places", places, "places_lost", t->places_lost);
	return r;
fail:
	Py_XDECREF(cpus);
	Py_XDECREF(lat);
	Py_XDECREF(places);
	return NULL;
}

static PyObject *pingpong(PyObject *self, PyObject *args)
{
	int kind, role, rd, wr;
	long max_samples;
	Py_buffer page = { 0 };
	struct sigaction sa = { 0 }, old;
	sigset_t block, prev;
	struct tel t;

	(void)self;
	if (!PyArg_ParseTuple(args, "iiiiw*l", &kind, &role, &rd, &wr, &page, &max_samples))
		return NULL;
	if (kind == 0 && page.len < 16) {
		PyBuffer_Release(&page);
		return PyErr_Format(PyExc_ValueError, "futex page must be >= 16 bytes");
	}
	int64_t *lat = PyMem_Malloc(sizeof(int64_t) * (size_t)(max_samples > 0 ? max_samples : 1));
	if (!lat) {
		PyBuffer_Release(&page);
		return PyErr_NoMemory();
	}
	/* Hand SIGUSR1 from Python's handler to ours without losing one. */
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, &prev);
	stop_flag = 0;
	sa.sa_handler = on_stop;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, &old); /* no SA_RESTART: blocking calls return EINTR */
	if (PyErr_CheckSignals()) { /* one delivered to Python before the hand-over */
		sigaction(SIGUSR1, &old, NULL);
		sigprocmask(SIG_SETMASK, &prev, NULL);
		PyMem_Free(lat);
		PyBuffer_Release(&page);
		return NULL;
	}
	tel_init(&t, lat, max_samples);
	sigset_t waitmask = prev;
	sigdelset(&waitmask, SIGUSR1);
	Py_BEGIN_ALLOW_THREADS
	if (kind == 0) {
		/* FUTEX_WAIT times out every 100 ms, so a stop is seen anyway */
		sigprocmask(SIG_UNBLOCK, &block, NULL);
		futex_loop(&t, (volatile int32_t *)page.buf,
			   (volatile int32_t *)((char *)page.buf + 4),
			   (volatile int64_t *)((char *)page.buf + 8), role);
		sigprocmask(SIG_BLOCK, &block, NULL);
	} else {
		pipe_loop(&t, rd, wr, role, &waitmask);
	}
	Py_END_ALLOW_THREADS
	sigaction(SIGUSR1, &old, NULL);
	sigprocmask(SIG_SETMASK, &prev, NULL);
	PyBuffer_Release(&page);
	PyObject *r = build_result(&t);
	PyMem_Free(lat);
	return r;
}

static PyMethodDef methods[] = {
	{ "pingpong", pingpong, METH_VARARGS,
	  "pingpong(kind, role, rd, wr, page, max_samples) -> dict; runs until SIGUSR1" },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "ktstr._native", "ktstr's native hot loops", -1, methods,
	NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
