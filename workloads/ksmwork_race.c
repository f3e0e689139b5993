/* ksmwork: races with guest-side timestamps (CLOCK_MONOTONIC microseconds), and exits at a
 * chosen moment. */
#include "ksmwork.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char probe_state(int pmfd, int kfd, int cfd, uintptr_t addr, uint64_t pages)
{
	if (pmfd < 0 || kfd < 0)
		return '-';
	int first = probe_is_ksm(pmfd, kfd, cfd, addr);
	int last = probe_is_ksm(pmfd, kfd, cfd, addr + (pages - 1) * page_size);
	if (first == 1 && last == 1)
		return 'k';
	if (first == 0 && last == 1)
		return 'p';
	if (first == 0 && last == 0)
		return 'u';
	return 's';
}

/* "probe=PID:ADDR:PAGES" -> its three numbers (PAGES > 0). */
static int parse_probe(const char *who, char *arg, uint64_t *pid, uint64_t *addr, uint64_t *pages)
{
	char *a = arg + 6, *b = strchr(a, ':'), *c = b ? strchr(b + 1, ':') : NULL;
	if (strncmp(arg, "probe=", 6) != 0 || !b || !c)
		return err("%s: bad probe '%s' (want probe=PID:ADDR:PAGES)", who, arg);
	*b = *c = 0;
	if (parse_u64(a, pid) || parse_u64(b + 1, addr) || parse_u64(c + 1, pages) || *pages == 0)
		return err("%s: bad probe numbers", who);
	return 0;
}

/* Opens what probe_state() reads for process PID; *by names the KSM test used. */
static int open_probe(const char *who, uint64_t pid, int *pmfd, int *kfd, int *cfd,
		      const char **by)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%llu/pagemap", (unsigned long long)pid);
	*pmfd = open(path, O_RDONLY);
	*kfd = open("/proc/kpageflags", O_RDONLY);
	*cfd = -1;
	if (*pmfd < 0 || *kfd < 0) {
		int e = errno;
		if (*pmfd >= 0)
			close(*pmfd);
		if (*kfd >= 0)
			close(*kfd);
		return err("%s: probe %s: %s", who, *pmfd < 0 ? path : "/proc/kpageflags", errstr(e));
	}
	/* where KPF_KSM lies: /proc/kpagecount > 1 (PID has no fork children) */
	*by = kpf_ksm_lies_on(*kfd) ? "kpagecount" : "kpageflags";
	if (kpf_ksm_lies_on(*kfd) && (*cfd = open("/proc/kpagecount", O_RDONLY)) < 0) {
		int e = errno;
		close(*pmfd);
		close(*kfd);
		return err("%s: probe: kpageflags-ksm-unreliable, /proc/kpagecount: %s", who, errstr(e));
	}
	return 0;
}

/* Spawns "ksmwork write PATH VALUE" (vfork-style: this mm is not copied); its stdout -> *out. */
static pid_t spawn_writer(const char *path, const char *value, int *out)
{
	int p[2];
	pid_t pid;
	char *args[] = {"ksmwork", "write", (char *)path, (char *)value, NULL};
	posix_spawn_file_actions_t fa;
	if (pipe(p) != 0)
		return -1;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[1], 1);
	posix_spawn_file_actions_addclose(&fa, p[0]);
	int e = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, args, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(p[1]);
	if (e != 0) {
		close(p[0]);
		errno = e;
		return -1;
	}
	*out = p[0];
	return pid;
}

#define RACE_MAX_FORKS 4096

int cmd_race(int argc, char **argv)
{
	static long long fstart[RACE_MAX_FORKS], fend[RACE_MAX_FORKS];
	static char probes[RACE_MAX_FORKS + 1], iskept[RACE_MAX_FORKS];
	uint64_t maxkept = 0, ppid = 0, paddr = 0, ppages = 0, delay = 0;
	int have_probe = 0;
	if (is_child)
		return err("race: not supported in a child");
	if (argc < 5 || strcmp(argv[3], "fork") != 0 || parse_u64(argv[4], &maxkept) ||
	    maxkept > (uint64_t)(MAX_CHILDREN - nchildren))
		return err("usage: race PATH VALUE fork MAXKEPT (<= %d) [probe=PID:ADDR:PAGES] "
			   "[delay=MS]", MAX_CHILDREN - nchildren);
	for (int i = 5; i < argc; i++) {
		if (strncmp(argv[i], "probe=", 6) == 0) {
			if (parse_probe("race", argv[i], &ppid, &paddr, &ppages))
				return -1;
			have_probe = 1;
		} else if (strncmp(argv[i], "delay=", 6) == 0) {
			if (parse_u64(argv[i] + 6, &delay))
				return err("race: bad delay '%s'", argv[i]);
		} else {
			return err("race: unknown option '%s'", argv[i]);
		}
	}
	int pmfd = -1, kfd = -1, cfd = -1;
	const char *probe_by = "-";
	if (have_probe && open_probe("race", ppid, &pmfd, &kfd, &cfd, &probe_by))
		return -1;
	int outfd = -1, st = 0, first_kept = nchildren, nforks = 0, kept = 0;
	pid_t parent = getpid();
	/* Already forking when the write starts: one fork (exiting at once) before the writer. */
	probes[0] = probe_state(pmfd, kfd, cfd, (uintptr_t)paddr, ppages);
	iskept[0] = 0;
	fstart[0] = now_us();
	fflush(NULL);
	pid_t first = fork();
	if (first == 0)
		_exit(0);
	if (first > 0)
		waitpid(first, NULL, 0);
	fend[0] = now_us();
	nforks = first > 0;
	pid_t writer = spawn_writer(argv[1], argv[2], &outfd);
	if (writer < 0) {
		int e = errno;
		if (pmfd >= 0)
			close(pmfd), close(kfd);
		if (cfd >= 0)
			close(cfd);
		return err("race: spawning the writer: %s", errstr(e));
	}
	int running = 1;
	if (delay) { /* the race forced off: the write is over before the first fork */
		waitpid(writer, &st, 0);
		running = 0;
		struct timespec ts = {(time_t)(delay / 1000), (long)(delay % 1000) * 1000000L};
		nanosleep(&ts, NULL);
	}
	do {
		if (running && waitpid(writer, &st, WNOHANG) == writer)
			running = 0;
		if (nforks >= RACE_MAX_FORKS)
			break;
		probes[nforks] = probe_state(pmfd, kfd, cfd, (uintptr_t)paddr, ppages);
		fstart[nforks] = now_us();
		/* With a probe, keep the children forked while the probed mm is part-unmerged. */
		iskept[nforks] = (uint64_t)kept < maxkept && (!have_probe || probes[nforks] == 'p');
		if (iskept[nforks]) {
			if (fork_one(parent) < 0)
				break;
			kept++;
		} else {
			fflush(NULL);
			pid_t pid = fork();
			if (pid == 0)
				_exit(0);
			if (pid < 0)
				break;
			waitpid(pid, NULL, 0);
		}
		fend[nforks] = now_us();
		nforks++;
	} while (running);
	if (running)
		waitpid(writer, &st, 0);
	probes[nforks] = 0;
	if (pmfd >= 0)
		close(pmfd), close(kfd);
	if (cfd >= 0)
		close(cfd);
	char wout[256] = "";
	ssize_t n = read(outfd, wout, sizeof(wout) - 1);
	close(outfd);
	wout[n > 0 ? n : 0] = 0;
	long long t0 = -1, t1 = -1;
	char rc[32] = "?";
	const char *p0 = strstr(wout, "t0="), *p1 = strstr(wout, "t1="), *pr = strstr(wout, "rc=");
	if (p0)
		t0 = atoll(p0 + 3);
	if (p1)
		t1 = atoll(p1 + 3);
	if (pr)
		sscanf(pr + 3, "%31s", rc);
	int inside = 0, inside_p = 0, inside_k = 0, kept_inside_ksm = 0;
	for (int i = 0; i < nforks; i++) {
		if (t0 < 0 || fstart[i] < t0 || fend[i] > t1)
			continue;
		inside++;
		inside_p += probes[i] == 'p';
		inside_k += probes[i] == 'k';
		kept_inside_ksm += iskept[i] && (probes[i] == 'k' || probes[i] == 'p');
	}
	ok("race rc=%s t0=%lld t1=%lld forks=%d kept=%d inside=%d inside_p=%d inside_k=%d "
	   "kept_inside_ksm=%d first=%lld last=%lld probe_by=%s probes=%s pids=", rc, t0, t1, nforks, kept,
	   inside, inside_p, inside_k, kept_inside_ksm, nforks ? fstart[0] : -1, nforks ? fend[nforks - 1] : -1,
	   probe_by, nforks ? probes : "-");
	for (int i = first_kept; i < nchildren; i++)
		app("%s%d", i == first_kept ? "" : ",", (int)children[i].pid);
	if (!WIFEXITED(st))
		app(" writer_status=0x%x", st);
	return 0;
}

/* ---- exits at a moment ----
 *   exitwhen FILE eq VALUE MS | exitwhen FILE moved MS
 *        polls the number in FILE every millisecond (e.g. KSM's run reading 2, or
 *        /proc/self/ksm_merging_pages moving: ksmd inside this mm) for at most MS ms, then
 *        exits at once, hit or not, without telling the children (they die of PDEATHSIG)
 *        -> ok exitwhen hit=0|1 v0=.. v=.. t=.. polls=N   (t: when the condition held)
 *   kidsexitwhen FILE eq VALUE MS | kidsexitwhen FILE moved MS   [then PATH VALUE]
 *        every child runs "exitwhen" (FILE /proc/self/... is each child's own), then is reaped;
 *        with "then", VALUE is written to PATH once every child has read its first value
 *        -> ok kids=N hits=H then=T status=s,s t=t,t reaped=r,r v0=a,a v=b,b
 *           (t: each child's hit or give-up time, reaped: when waitpid returned in the parent)
 */

static int read_number(const char *path, long long *v)
{
	char buf[64];
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	*v = strtoll(buf, NULL, 10);
	return 0;
}

/* killwrite PATH VALUE probe=PID:ADDR:PAGES [ms=LIMIT]: the write killed part-way, decided in
 * the guest. A helper writes VALUE to PATH (e.g. KSM's run=2, which unmerges one mm after
 * another); this process polls the probe and sends the helper SIGKILL the moment the probed
 * mm is part-way (state p: its first page no longer KSM, its last one still KSM). A delay
 * timed from the host could not aim: the whole write lasts ~1 s on one kernel under TCG and
 * a few ms on another. -> ok killwrite killed=0|1 status=exit:N|signal:N state=S polls=N
 * t0=.. tkill=.. (state: the probe when the kill was sent, or when the write ended first) */
int cmd_killwrite(int argc, char **argv)
{
	uint64_t ppid = 0, paddr = 0, ppages = 0, limit_ms = 60000;
	if (is_child)
		return err("killwrite: not supported in a child");
	if (argc < 4 || argc > 5)
		return err("usage: killwrite PATH VALUE probe=PID:ADDR:PAGES [ms=LIMIT]");
	if (parse_probe("killwrite", argv[3], &ppid, &paddr, &ppages))
		return -1;
	if (argc == 5 && (strncmp(argv[4], "ms=", 3) != 0 || parse_u64(argv[4] + 3, &limit_ms)))
		return err("killwrite: bad limit '%s' (want ms=N)", argv[4]);
	int pmfd, kfd, cfd, outfd = -1, st = 0, killed = 0;
	const char *probe_by;
	if (open_probe("killwrite", ppid, &pmfd, &kfd, &cfd, &probe_by))
		return -1;
	long long t0 = now_us(), tkill = -1;
	pid_t writer = spawn_writer(argv[1], argv[2], &outfd);
	if (writer < 0) {
		int e = errno;
		close(pmfd), close(kfd);
		if (cfd >= 0)
			close(cfd);
		return err("killwrite: spawning the writer: %s", errstr(e));
	}
	char state = '-';
	long polls = 0;
	for (;;) {
		state = probe_state(pmfd, kfd, cfd, (uintptr_t)paddr, ppages);
		polls++;
		if (state == 'p' || now_us() - t0 > (long long)limit_ms * 1000) {
			tkill = now_us();
			killed = kill(writer, SIGKILL) == 0;
			waitpid(writer, &st, 0);
			break;
		}
		if (waitpid(writer, &st, WNOHANG) == writer)
			break;
	}
	close(pmfd), close(kfd);
	if (cfd >= 0)
		close(cfd);
	close(outfd);
	ok("killwrite killed=%d status=%s:%d state=%c polls=%ld probe_by=%s t0=%lld tkill=%lld",
	   killed, WIFSIGNALED(st) ? "signal" : "exit",
	   WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), state, polls, probe_by, t0, tkill);
	return 0;
}

/* Parses "FILE eq VALUE MS" or "FILE moved MS" at argv[1..]. */
static int parse_when(const char *cmd, int argc, char **argv, int *moved, long long *value,
		      uint64_t *ms)
{
	*moved = argc == 4 && strcmp(argv[2], "moved") == 0;
	if (!*moved && !(argc == 5 && strcmp(argv[2], "eq") == 0))
		return err("usage: %s FILE eq VALUE MS | %s FILE moved MS", cmd, cmd);
	if (!*moved)
		*value = strtoll(argv[3], NULL, 10);
	if (parse_u64(argv[argc - 1], ms) || *ms > 3600000)
		return err("%s: bad MS '%s'", cmd, argv[argc - 1]);
	return 0;
}

int cmd_exitwhen(int argc, char **argv)
{
	int moved = 0, hit = 0, armed = argc > 1 && strcmp(argv[argc - 1], "armed") == 0;
	long long value = 0, v0 = -1, v = -1, t;
	uint64_t ms, polls = 0;
	if (parse_when("exitwhen", argc - armed, argv, &moved, &value, &ms))
		return -1;
	if (read_number(argv[1], &v0) != 0)
		return err("exitwhen: cannot read a number from %s: %s", argv[1], errstr(errno));
	if (armed && dprintf(out_fd, "armed v0=%lld\n", v0) < 0) /* kidsexitwhen waits for it */
		_exit(exit_status());
	long long end = now_us() + (long long)ms * 1000;
	struct timespec pause = {0, 1000000L};
	for (;;) {
		polls++;
		t = now_us();
		if (read_number(argv[1], &v) == 0 && (moved ? v != v0 : v == value)) {
			hit = 1;
			break;
		}
		if (t > end)
			break;
		nanosleep(&pause, NULL);
	}
	ok("exitwhen hit=%d v0=%lld v=%lld t=%lld polls=%llu", hit, v0, v, t,
	   (unsigned long long)polls);
	send_reply();
	fflush(NULL);
	_exit(exit_status());
}

int cmd_kidsexitwhen(int argc, char **argv)
{
	static char text[MAX_CHILDREN][256];
	static long long reaped_at[MAX_CHILDREN];
	int moved = 0, n = nchildren, hits = 0, st[MAX_CHILDREN], reaped[MAX_CHILDREN];
	long long value = 0, t_then = -1;
	uint64_t ms;
	char line[512], *then_path = NULL, *then_value = NULL;
	if (is_child || n == 0)
		return err("kidsexitwhen: in the parent, with children (fork N)");
	if (argc > 3 && strcmp(argv[argc - 3], "then") == 0) {
		then_path = argv[argc - 2];
		then_value = argv[argc - 1];
		argc -= 3;
	}
	if (parse_when("kidsexitwhen", argc, argv, &moved, &value, &ms))
		return -1;
	snprintf(line, sizeof(line), "exitwhen %s %s %s%s%s armed\n", argv[1], argv[2], argv[3],
		 argc == 5 ? " " : "", argc == 5 ? argv[4] : "");
	size_t len = strlen(line);
	for (int i = 0; i < n; i++)
		if (write(children[i].cmd_fd, line, len) != (ssize_t)len)
			text[i][0] = 0;
	char failed[256] = "";
	for (int i = 0; i < n; i++) { /* every child has read its first value */
		char *got = NULL;
		size_t cap = 0;
		if ((getline(&got, &cap, children[i].rep) <= 0 || strncmp(got, "armed", 5) != 0) &&
		    !failed[0])
			snprintf(failed, sizeof(failed), "child %d did not arm", (int)children[i].pid);
		free(got);
	}
	if (then_path && !failed[0]) { /* e.g. start ksmd only now */
		int fd = open(then_path, O_WRONLY);
		ssize_t w = fd < 0 ? -1 : write(fd, then_value, strlen(then_value));
		int e = errno;
		if (fd >= 0)
			close(fd);
		if (w != (ssize_t)strlen(then_value))
			snprintf(failed, sizeof(failed), "then %s %s: %s", then_path, then_value,
				 errstr(e));
		t_then = now_us();
	}
	for (int i = 0; i < n; i++) {
		reaped[i] = 0;
		st[i] = 0;
		child_reply(i, 1, text[i], sizeof(text[i]), &st[i], &reaped[i]);
		if (!reaped[i])
			reaped[i] = waitpid(children[i].pid, &st[i], 0) == children[i].pid;
		reaped_at[i] = now_us();
		if (reaped[i] && WIFEXITED(st[i]) && WEXITSTATUS(st[i]) == 1)
			corruption_seen = 1;
		hits += strstr(text[i], "hit=1") != NULL;
	}
	ok("kids=%d hits=%d then=%lld", n, hits, t_then);
	const char *keys[] = {"status", "t", "reaped", "v0", "v"};
	for (int k = 0; k < 5; k++) {
		app(" %s=", keys[k]);
		for (int i = 0; i < n; i++) {
			const char *sep = i ? "," : "";
			if (k == 0)
				app("%s%d", sep, !reaped[i] ? -1 : WIFEXITED(st[i]) ? WEXITSTATUS(st[i])
								     : 128 + WTERMSIG(st[i]));
			else if (k == 2)
				app("%s%lld", sep, reaped_at[i]);
			else {
				char key[8], *p;
				snprintf(key, sizeof(key), " %s=", keys[k]);
				p = strstr(text[i], key);
				app("%s%lld", sep, p ? atoll(p + strlen(key)) : -1LL);
			}
		}
	}
	for (int i = n - 1; i >= 0; i--)
		drop_child(i);
	return failed[0] ? err("kidsexitwhen: %s (the children exited)", failed) : 0;
}
