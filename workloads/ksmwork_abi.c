/* ksmwork: kernel ABI edges: userfaultfd, MADV_COLLAPSE, PR_SET_MEMORY_MERGE. */
#include "ksmwork.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#ifndef SYS_userfaultfd
#define SYS_userfaultfd 323
#endif
/* <linux/userfaultfd.h>'s UAPI, spelled out (no kernel headers in the build). */
#define UFFD_API_ 0xAAULL
#define UFFDIO_API_ 0xc018aa3fUL
#define UFFDIO_REGISTER_ 0xc020aa00UL
#define UFFDIO_REGISTER_MODE_MISSING_ 1ULL
struct uffdio_api_ { uint64_t api, features, ioctls; };
struct uffdio_register_ { uint64_t start, len, mode, ioctls; };

/* uffd NAME: register the region with a new userfaultfd in MISSING mode (kept open). */
int cmd_uffd(int argc, char **argv)
{
	if (argc != 2)
		return err("usage: uffd NAME");
	struct region *r = need_region("uffd", argv[1]);
	if (!r)
		return -1;
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return err("uffd: userfaultfd: %s", errstr(errno));
	struct uffdio_api_ api = {UFFD_API_, 0, 0};
	struct uffdio_register_ reg = {(uintptr_t)r->addr, r->pages * page_size,
				       UFFDIO_REGISTER_MODE_MISSING_, 0};
	if (ioctl(fd, UFFDIO_API_, &api) != 0 || ioctl(fd, UFFDIO_REGISTER_, &reg) != 0) {
		int e = errno;
		close(fd);
		return err("uffd: register %s: %s", r->name, errstr(e));
	}
	return ok("registered %s fd=%d", r->name, fd);
}

/* collapse NAME: madvise(MADV_COLLAPSE) -> ok | err ... (ERRNO) */
int cmd_collapse(int argc, char **argv)
{
	if (argc != 2)
		return err("usage: collapse NAME");
	struct region *r = need_region("collapse", argv[1]);
	if (!r)
		return -1;
	long t0 = now_ms();
	if (madvise(r->addr, r->pages * page_size, MADV_COLLAPSE) != 0)
		return err("collapse %s: %s", r->name, errstr(errno));
	return ok("collapsed %s ms=%ld", r->name, now_ms() - t0);
}

/* prctl get|set|clear: PR_GET/SET_MEMORY_MERGE (6.4+) -> ok merge=0|1 | err ... (EINVAL)
 * prctl spawn: fork + exec /bin/cat reading a pipe only this process holds (it ends when this
 * process exits); the harness reads its /proc/PID files -> ok pid=P */
int cmd_prctl(int argc, char **argv)
{
	if (argc != 2)
		return err("usage: prctl get|set|clear|spawn");
	if (strcmp(argv[1], "spawn") == 0) {
		int fds[2];
		if (pipe2(fds, O_CLOEXEC) != 0)
			return err("prctl spawn: pipe: %s", errstr(errno));
		pid_t pid = fork();
		if (pid < 0) {
			int e = errno;
			close(fds[0]), close(fds[1]);
			return err("prctl spawn: fork: %s", errstr(e));
		}
		if (pid == 0) {
			int null = open("/dev/null", O_WRONLY);
			dup2(fds[0], 0);
			if (null >= 0)
				dup2(null, 1);
			execl("/bin/cat", "cat", (char *)NULL);
			_exit(127);
		}
		close(fds[0]); /* fds[1] stays open (never written) until this process exits */
		return ok("pid=%d", (int)pid);
	}
	if (strcmp(argv[1], "set") == 0 || strcmp(argv[1], "clear") == 0) {
		if (prctl(PR_SET_MEMORY_MERGE, strcmp(argv[1], "set") == 0, 0, 0, 0) != 0)
			return err("prctl %s: %s", argv[1], errstr(errno));
	} else if (strcmp(argv[1], "get") != 0) {
		return err("usage: prctl get|set|clear|spawn");
	}
	int v = prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0);
	if (v < 0)
		return err("prctl get: %s", errstr(errno));
	return ok("merge=%d", v);
}
