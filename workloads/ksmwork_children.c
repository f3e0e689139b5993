/* ksmwork: forked children, each serving commands on its own pipes. */
#include "ksmwork.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

struct child children[MAX_CHILDREN];
int nchildren;
int is_child;

static void describe_status(int st, char *buf, size_t len)
{
	if (WIFEXITED(st))
		snprintf(buf, len, "exit %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(buf, len, "signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
	else
		snprintf(buf, len, "status 0x%x", st);
}

void drop_child(int i)
{
	close(children[i].cmd_fd);
	fclose(children[i].rep);
	children[i] = children[--nchildren];
}

/* Forks one child that serves commands on its own pipes (kept in children[]); returns its pid,
 * or -1 with the reply filled. */
pid_t fork_one(pid_t parent)
{
	int cmd[2], rep[2];
	if (pipe(cmd) != 0)
		return err("fork: pipe: %s", errstr(errno));
	if (pipe(rep) != 0) {
		int e = errno;
		close(cmd[0]), close(cmd[1]);
		return err("fork: pipe: %s", errstr(e));
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(cmd[0]), close(cmd[1]), close(rep[0]), close(rep[1]);
		return err("fork: %s", errstr(e));
	}
	if (pid == 0) {
		/* A child must never outlive its parent (nor keep its SSH channel open). */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(3);
		for (int i = 0; i < nchildren; i++) {
			close(children[i].cmd_fd);
			fclose(children[i].rep);
		}
		nchildren = 0;
		is_child = 1;
		close(cmd[1]);
		close(rep[0]);
		int devnull = open("/dev/null", O_RDWR);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
			close(devnull);
		}
		out_fd = rep[1];
		FILE *in = fdopen(cmd[0], "r");
		_exit(in ? serve(in) : 3);
	}
	close(cmd[0]);
	close(rep[1]);
	children[nchildren].pid = pid;
	children[nchildren].cmd_fd = cmd[1];
	children[nchildren].rep = fdopen(rep[0], "r");
	if (!children[nchildren].rep)
		return err("fork: fdopen: %s", errstr(errno));
	nchildren++;
	return pid;
}

int cmd_fork(int argc, char **argv)
{
	uint64_t n;
	if (is_child)
		return err("fork: not supported in a child");
	if (argc != 2 || parse_u64(argv[1], &n) || n == 0 || n > (uint64_t)(MAX_CHILDREN - nchildren))
		return err("usage: fork N (1..%d more children)", MAX_CHILDREN - nchildren);
	pid_t parent = getpid();
	int first = nchildren;
	for (uint64_t k = 0; k < n; k++) {
		if (fork_one(parent) < 0) {
			app(" (after %d children)", nchildren - first);
			return -1;
		}
	}
	ok("pids=");
	for (int i = first; i < nchildren; i++)
		app("%s%d", i == first ? "" : ",", (int)children[i].pid);
	return 0;
}

/* Reads child i's reply to the command just sent; a dead child yields an "err child" text. */
int child_reply(int i, int sent, char *buf, size_t len, int *st, int *reaped)
{
	char *got = NULL;
	size_t cap = 0;
	if (sent && getline(&got, &cap, children[i].rep) > 0) {
		got[strcspn(got, "\n")] = 0;
		snprintf(buf, len, "%s", got);
		free(got);
		return 0;
	}
	free(got);
	char how[96] = "unknown status";
	*reaped = waitpid(children[i].pid, st, 0) == children[i].pid;
	if (*reaped)
		describe_status(*st, how, sizeof(how));
	snprintf(buf, len, "err child %d died (%s)", (int)children[i].pid, how);
	return -1;
}

static int is_corrupt(const char *reply_text)
{
	return strncmp(reply_text, "err corrupt", 11) == 0;
}

int cmd_children(int argc, char **argv)
{
	static char replies[MAX_CHILDREN][1024];
	pid_t pids[MAX_CHILDREN];
	int st[MAX_CHILDREN], reaped[MAX_CHILDREN], gone[MAX_CHILDREN], sent[MAX_CHILDREN];
	char line[4096] = "";
	int n = nchildren, failed = 0, worst = -1, same = 1;
	if (argc < 2)
		return err("usage: children CMD...");
	if (n == 0)
		return err("children: no children (use fork N)");
	for (int i = 1; i < argc; i++) {
		strncat(line, argv[i], sizeof(line) - strlen(line) - 3);
		strcat(line, i + 1 < argc ? " " : "\n");
	}
	int exiting = strcmp(argv[1], "exit") == 0;
	size_t len = strlen(line);
	/* Send to all first so the children work in parallel, then collect. */
	for (int i = 0; i < n; i++) {
		pids[i] = children[i].pid;
		sent[i] = write(children[i].cmd_fd, line, len) == (ssize_t)len;
	}
	for (int i = 0; i < n; i++) {
		reaped[i] = 0;
		gone[i] = child_reply(i, sent[i], replies[i], sizeof(replies[i]), &st[i], &reaped[i]);
		if (exiting && !gone[i])
			reaped[i] = waitpid(pids[i], &st[i], 0) == pids[i];
		/* Exit status 1 is a verdict (corruption, already reported), not a failure. */
		int bad = strncmp(replies[i], "ok", 2) != 0 ||
			  (reaped[i] && !(WIFEXITED(st[i]) && WEXITSTATUS(st[i]) <= 1));
		if (reaped[i] && WIFEXITED(st[i]) && WEXITSTATUS(st[i]) == 1)
			corruption_seen = 1; /* the child found corruption earlier */
		if (is_corrupt(replies[i]))
			corruption_seen = 1;
		if (bad) {
			failed++;
			if (worst < 0 || (is_corrupt(replies[i]) && !is_corrupt(replies[worst])))
				worst = i;
		}
		same &= strcmp(replies[i], replies[0]) == 0;
	}
	char statuses[MAX_CHILDREN * 12] = "";
	for (int i = 0; i < n && exiting; i++) {
		size_t l = strlen(statuses);
		snprintf(statuses + l, sizeof(statuses) - l, "%s%d", i ? "," : "",
			 !reaped[i] ? -1 : WIFEXITED(st[i]) ? WEXITSTATUS(st[i]) : 128 + WTERMSIG(st[i]));
	}
	/* Forget reaped children, last to first so lower indexes stay valid. */
	for (int i = n - 1; i >= 0; i--)
		if (reaped[i] || gone[i])
			drop_child(i);
	if (worst >= 0) {
		const char *text = replies[worst];
		if (strncmp(text, "err ", 4) == 0)
			return err("%s child=%d failed=%d/%d", text + 4, (int)pids[worst], failed, n);
		return err("children: child=%d replied '%s' but exited with status=%s failed=%d/%d",
			   (int)pids[worst], text, statuses, failed, n);
	}
	if (exiting)
		return ok("children=%d exited status=%s", n, statuses);
	if (same)
		return ok("children=%d %s", n, replies[0] + (replies[0][2] == ' ' ? 3 : 2));
	ok("children=%d", n);
	for (int i = 0; i < n; i++)
		app(" %s%d:%s", i ? "| " : "", (int)pids[i], replies[i] + 3);
	return 0;
}

int cmd_pids(int argc, char **argv)
{
	(void)argv;
	if (argc != 1)
		return err("usage: pids");
	ok("parent=%d children=", (int)getpid());
	for (int i = 0; i < nchildren; i++)
		app("%s%d", i ? "," : "", (int)children[i].pid);
	return 0;
}
