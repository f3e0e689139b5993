/* ksmwork: one-shot use (no command loop): "ksmwork write|swapoff|swapoff-during|waitexit|now",
 * each bracketing one syscall with CLOCK_MONOTONIC microseconds (see the top of ksmwork.c). */
#include "ksmwork.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

static int report_rc(int e)
{
	const char *name = errno_name(e);
	if (!e)
		printf(" rc=0\n");
	else if (name)
		printf(" rc=%s\n", name);
	else
		printf(" rc=E%d\n", e);
	fflush(stdout);
	return e ? 1 : 0;
}

/* "ksmwork write|swapoff|waitexit|now ...": one syscall bracketed by timestamps. */
int oneshot(int argc, char **argv)
{
	if (strcmp(argv[1], "now") == 0 && argc == 2) {
		printf("t=%lld\n", now_us());
		return 0;
	}
	if (strcmp(argv[1], "write") == 0 && argc == 4) {
		long long t0 = now_us();
		int fd = open(argv[2], O_WRONLY);
		if (fd < 0) {
			int e = errno;
			printf("t0=%lld t1=%lld", t0, now_us());
			return report_rc(e);
		}
		size_t len = strlen(argv[3]);
		ssize_t w = write(fd, argv[3], len);
		int e = w == (ssize_t)len ? 0 : w < 0 ? errno : EIO;
		long long t1 = now_us();
		close(fd);
		printf("t0=%lld t1=%lld", t0, t1);
		return report_rc(e);
	}
	if (strcmp(argv[1], "swapoff") == 0 && argc == 3) {
		long long t0 = now_us();
		int e = swapoff(argv[2]) == 0 ? 0 : errno;
		long long t1 = now_us();
		printf("t0=%lld t1=%lld", t0, t1);
		return report_rc(e);
	}
	if (strcmp(argv[1], "swapoff-during") == 0 && argc == 5) {
		/* swapoff DEV begins just after a child began writing VALUE to PATH (run=2): the
		 * child signals through a pipe after taking its t0, so swapoff's t0 is later, and
		 * the write is still running unless it is shorter than a wake-up. The write's
		 * stamps are wt0/wt1/wrc, swapoff's t0/t1/rc. */
		int p[2];
		if (pipe(p) < 0)
			return report_rc(errno);
		fflush(stdout);
		pid_t child = fork();
		if (child < 0)
			return report_rc(errno);
		if (child == 0) {
			close(p[0]);
			int fd = open(argv[2], O_WRONLY);
			size_t len = strlen(argv[3]);
			long long t0 = now_us();
			if (write(p[1], "w", 1) != 1)
				_exit(3);
			ssize_t w = fd < 0 ? -1 : write(fd, argv[3], len);
			int e = w == (ssize_t)len ? 0 : w < 0 ? errno : EIO;
			long long t1 = now_us();
			const char *name = errno_name(e);
			if (!e || name)
				printf("wt0=%lld wt1=%lld wrc=%s\n", t0, t1, e ? name : "0");
			else
				printf("wt0=%lld wt1=%lld wrc=E%d\n", t0, t1, e);
			fflush(stdout);
			_exit(0);
		}
		close(p[1]);
		char c;
		ssize_t r;
		while ((r = read(p[0], &c, 1)) < 0 && errno == EINTR)
			;
		long long t0 = now_us();
		int e = r == 1 && swapoff(argv[4]) == 0 ? 0 : r == 1 ? errno : ECHILD;
		long long t1 = now_us();
		while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
			;
		printf("t0=%lld t1=%lld", t0, t1);
		return report_rc(e);
	}
	if (strcmp(argv[1], "waitexit") == 0 && argc == 3) {
		uint64_t pid;
		if (parse_u64(argv[2], &pid))
			return 2;
		int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
		if (fd < 0) {
			int e = errno;
			printf("t=-1");
			return report_rc(e);
		}
		printf("armed\n"); /* the pidfd holds the process: its exit cannot be missed now */
		fflush(stdout);
		struct pollfd pfd = {fd, POLLIN, 0};
		while (poll(&pfd, 1, -1) < 0 && errno == EINTR)
			;
		printf("t=%lld", now_us());
		close(fd);
		return report_rc(0);
	}
	fprintf(stderr, "usage: ksmwork [write PATH VALUE | swapoff DEV | "
			"swapoff-during PATH VALUE DEV | waitexit PID | now]\n");
	return 2;
}
