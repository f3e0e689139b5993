/*
 * ksmwork: a KSM test workload driven by line commands on stdin.
 *
 * Every command line gets exactly one reply line on stdout, "ok ..." or "err ...", flushed at
 * once, so a harness can check KSM counters between phases. Data corruption always yields a
 * reply starting with "err corrupt" and makes the final exit status 1.
 *
 * Page content is a pure function of a 64-bit key: the page is the low 4096 bytes of
 * key * R, R a fixed odd 32768-bit constant (words R[i] = mix64(RBASE + (i+1)*GOLDEN), bit 0 of
 * R[0] set). Distinct keys give distinct pages, and the Python worker makes byte-identical pages
 * with one big-int multiply, so both workloads can merge with each other.
 *   seedkey(S)      = mix64(S ^ SEEDC)                 (same:S pages, half:S first half)
 *   unique key p    = mix64(seedkey + GOLDEN*(p+1))    (unique:S, half:S second half)
 *   lastbyte tail p = mix64((seedkey ^ TAILC) + GOLDEN*(p+1)) replaces the last 8 bytes
 * A key of 0 is bumped to 1. The same seed in two regions (or processes) gives the same pages.
 *
 * Commands (NAME: region name; [FIRST COUNT]: optional page range, default the whole region):
 *   alloc NAME PAGES PATTERN [node=N] [thp|nothp] [shared]
 *        PATTERN: same:SEED | unique:SEED | zero | lastbyte:SEED | half:SEED.
 *        node=N binds with mbind(MPOL_BIND) before touching; thp aligns to 2 MiB and
 *        madvises MADV_HUGEPAGE before filling; nothp madvises MADV_NOHUGEPAGE before
 *        filling (since 6.12 splitting a THP maps its zero-filled subpages to the zero page
 *        itself, which KSM's zero-page counters do not see); shared maps MAP_SHARED (shmem,
 *        KSM ignores it).
 *        -> ok NAME addr=0x... pages=N bytes=B ms=T
 *   madvise NAME merge|unmerge|hugepage|nohugepage|pageout|cold|willneed|hwpoison|soft_offline
 *        [FIRST COUNT] (hwpoison, soft_offline: memory-failure.c, root; poison stays)
 *   verify [NAME]          -> ok verified N pages ms=T
 *                          | err corrupt NAME page P offset O expected 0xXX got 0xYY pages=K
 *                            (first bad byte; pages=K bad pages; without NAME also total=)
 *   write NAME PAGE [same:SEED]  new content (unique, or same:SEED's), expectation updated
 *   corrupt NAME PAGE [OFFSET]   flip one byte WITHOUT updating the expectation
 *   touch NAME             rewrite every page with its expected content
 *   churn NAME MS          "touch" in a loop for MS ms (races COW breaks with ksmd's merges;
 *                          "children churn" runs it in every child at once)
 *                          -> ok churned NAME passes=P writes=W ms=T
 *   mlock NAME | munlock NAME | mlockall [future] | munlockall
 *   fork N                 N children holding copies of all regions -> ok pids=a,b
 *   children CMD...        forward CMD to every child (not fork/children); one reply:
 *                          ok children=N TEXT (or per child "pid:TEXT | ..." when they differ)
 *                          err ... child=PID failed=F/N (a corrupt reply is preferred)
 *   children exit          children exit and are reaped -> ok children=N exited status=0,0
 *   pids                   -> ok parent=P children=a,b
 *   move NAME NODE [all] [FIRST COUNT]
 *        move_pages(2), MPOL_MF_MOVE (MPOL_MF_MOVE_ALL with "all"). move_pages stops at the
 *        first batch that fails to migrate, leaving later statuses untouched: "unattempted".
 *        -> ok moved=M already=A failed=F unattempted=U notmoved=RET [EBUSY=n EACCES=n ...]
 *   nodes NAME [FIRST COUNT]  -> ok node0=N node1=M other=K [ENOENT=n ...]
 *   policy NAME            get_mempolicy of the first page -> ok mode=bind nodes=0,1
 *   migrate FROM TO        migrate_pages(2) of this process -> ok notmoved=N
 *   mbind NAME NODE [all]  mbind(2) MPOL_BIND to NODE, MPOL_MF_MOVE (and MPOL_MF_MOVE_ALL
 *                          with "all": KSM pages move only then) -> ok mbind NAME node=N
 *   moved NAME             the region's PFNs now against "kpf NAME save"'s (root)
 *                          -> ok same=S changed=C gone=G ksm=K changed_ksm=B unreadable=U
 *                             ksm_by=.. (as pageflags)
 *   punch NAME STRIDE      MADV_DONTNEED all but every STRIDE-th page of a zero region
 *   smaps NAME             -> ok vmas=V rss_kb=.. anon_kb=.. anonhuge_kb=.. swap_kb=..
 *                             locked_kb=.. mergeable=M (VMAs with the "mg" flag)
 *                             ksm_kb=K ("KSM:", 6.6+; -1 before)
 *   pageflags NAME [FIRST COUNT]
 *        what backs each page, from /proc/self/pagemap and /proc/kpageflags (root: PFNs):
 *        -> ok present=P swapped=S ksm=K ksmpfns=D thp=T zero=Z nopfn=N ksm_by=HOW
 *              ksm_maps=M ksm_smaps=V [ksm_unknown=KEYS]
 *           ksm: pages mapping a KSM page, ksmpfns: distinct KSM pages among them, thp: pages
 *           in a transparent huge page, zero: pages mapping the zero page, nopfn: present
 *           pages whose PFN was hidden (no CAP_SYS_ADMIN) or unreadable in kpageflags.
 *           Which pages are KSM pages (ksmwork_ksmpages.c): ksm_by=kpageflags,checked:...
 *           where KPF_KSM is believed, else maps+smaps (each page proven by its mappings,
 *           all of them by smaps' count) or smaps (only the count, of whole VMAs); ksm_maps:
 *           pages proven by their mappings, ksm_smaps: smaps' KSM pages of the VMAs around
 *           (-1: before 6.6); ksm_unknown: the keys no method could tell (left out). The
 *           methods contradicting each other is an error ("the methods disagree").
 *   kpf NAME save          remember the PFNs of the region's present pages (and which map a
 *                          KSM page) -> ok saved=N ksm_by=.. ksm_maps=.. ksm_smaps=..
 *   kpf NAME               /proc/kpageflags of those PFNs now, mapped or not (e.g. a KSM page
 *                          swapped out but still in swapcache) -> ok saved=N ksm=K
 *                          swapcache=S ksm_swapcache=B mapped=M unreadable=U ksm_by=HOW
 *                          (where KPF_KSM lies, ksm_by=saved: a KSM page when saved, still
 *                          an anonymous page now)
 *   kpftrust [no]          read KPF_KSM even on a kernel where it lies (the test of that
 *                          ABI) -> ok trusted; "no": never (the other methods alone)
 *   idle NAME PAGE         mark the page's PFN idle in /sys/kernel/mm/page_idle/bitmap and
 *                          read the bit back (root) -> ok idle pfn=P idle=0|1 lru=L ksm=K
 *                          (kpageflags after, -1 unreadable; pfn=0: not present, no-op)
 *   peek NAME PAGE OFFSET LEN   -> ok hex=... (LEN <= 64 bytes, for debugging)
 *   killwrite PATH VALUE probe=PID:ADDR:PAGES [ms=LIMIT]
 *        a helper writes VALUE to PATH; SIGKILL to it the moment the probe (as for race)
 *        reads p, or after LIMIT ms (default 60000) -> ok killwrite killed=0|1
 *        status=exit:N|signal:N state=S polls=N probe_by=.. t0=.. tkill=..
 *   race PATH VALUE fork MAXKEPT [probe=PID:ADDR:PAGES] [delay=MS]
 *        a race with guest-side timestamps (CLOCK_MONOTONIC, microseconds): a helper spawned
 *        without copying this mm ("ksmwork write PATH VALUE", e.g. KSM's run=2) writes VALUE
 *        to PATH while this process forks in a loop until the write returns: up to MAXKEPT
 *        children are kept (like "fork"; with a probe only those forked in state p, else
 *        the first ones), the others exit at once. delay=MS: wait
 *        for the write to return first, then fork once (a race forced off, for tests).
 *        Before each fork the probe reads the first and last page of PAGES pages at ADDR in
 *        process PID (pagemap + kpageflags; where KPF_KSM lies, /proc/kpagecount > 1: PID
 *        must have no fork children): k = both KSM, p = first no longer KSM but last
 *        still KSM (that mm is being unmerged right now), u = neither, s = other.
 *        -> ok race rc=R t0=.. t1=.. forks=N kept=K inside=I inside_p=P inside_k=Q
 *           kept_inside_ksm=C first=.. last=.. probe_by=kpageflags|kpagecount
 *           probes=kkpu... pids=a,b
 *           (rc: the write's errno, 0 = done; inside: forks that started after t0 and
 *           returned before t1; _p/_k: with that probe state; kept_inside_ksm: kept children
 *           forked inside while the probed pages were still KSM, k or p)
 *   crash                  die of SIGSEGV on purpose (tests a harness's crash handling)
 *   poke hole hugetlb uffd collapse kpcg prctl: one-byte edits, holes, hugetlb regions,
 *                          userfaultfd, MADV_COLLAPSE, /proc/kpagecgroup, PR_SET_MEMORY_MERGE;
 *                          documented in their block ("comparator edges, madvise ABI, ...")
 *   free NAME | sleep MS | pid | regions | help
 *   exit                   -> ok bye status=S [children: <children exit reply>], then
 *                          exit S (children are told to exit first; EOF: the same, no reply)
 *
 * One-shot use (no command loop), each bracketing one syscall with CLOCK_MONOTONIC microseconds:
 *   ksmwork write PATH VALUE   -> t0=.. t1=.. rc=0|ERRNO (t0, open+write(2), t1)
 *   ksmwork swapoff DEV        -> t0=.. t1=.. rc=0|ERRNO
 *   ksmwork waitexit PID       -> "armed" once watching, then t=.. when PID has exited
 *                                 (pidfd_open + poll), rc=0|ERRNO
 *   ksmwork now                -> t=..
 *   exit status 0 when rc=0, else 1.
 *
 * The sources: ksmwork.h (shared state, helpers, the list of files) and one ksmwork_*.c per
 * command family; this file has main(), the command table and the command loop.
 *
 * Exit status: 0, or 1 if any verify (own or a child's) found corruption. A fatal SIGSEGV or
 * SIGBUS prints "err crashed signal N (NAME) addr=0x..." before dying of that signal.
 */
#include "ksmwork.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int corruption_seen;

/* ---- misc ---- */

static int cmd_sleep(int argc, char **argv)
{
	uint64_t ms;
	if (argc != 2 || parse_u64(argv[1], &ms) || ms > 3600000)
		return err("usage: sleep MS (<= 3600000)");
	struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
	return ok("slept %llu ms", (unsigned long long)ms);
}

static int cmd_pid(int argc, char **argv)
{
	(void)argv;
	if (argc != 1)
		return err("usage: pid");
	return ok("pid=%d", (int)getpid());
}

static int cmd_help(int argc, char **argv);

/* Dies of SIGSEGV on purpose, so a harness can prove it notices a crashed workload. */
static int cmd_crash(int argc, char **argv)
{
	(void)argv;
	if (argc != 1)
		return err("usage: crash");
	volatile int *volatile bad = NULL; /* volatile: the compiler cannot see the fault coming */
	*bad = 1;
	return err("crash: still alive");
}

int exit_status(void)
{
	return corruption_seen ? 1 : 0;
}

/* Children get "exit" and are reaped, so their verdict counts in ours; note gets the
 * aggregated children reply ("" without children). */
static void reap_children(char *note, size_t len)
{
	note[0] = 0;
	if (nchildren == 0)
		return;
	char *argv[] = {"children", "exit"};
	cmd_children(2, argv);
	size_t n = reply_len < len - 1 ? reply_len : len - 1;
	memcpy(note, reply, n);
	note[n] = 0;
	reply_len = 0;
}

static const struct command cmds[] = { /* by family: see ksmwork.h */
	{"sleep", cmd_sleep}, {"pid", cmd_pid}, {"help", cmd_help}, {"crash", cmd_crash},
	{"alloc", cmd_alloc}, {"free", cmd_free}, {"madvise", cmd_madvise}, {"mlock", cmd_mlock},
	{"munlock", cmd_mlock}, {"mlockall", cmd_mlockall}, {"munlockall", cmd_mlockall},
	{"hugetlb", cmd_hugetlb}, {"regions", cmd_regions},
	{"verify", cmd_verify}, {"write", cmd_write}, {"corrupt", cmd_corrupt},
	{"touch", cmd_touch}, {"churn", cmd_churn}, {"peek", cmd_peek}, {"poke", cmd_poke},
	{"hole", cmd_hole}, {"punch", cmd_punch},
	{"nodes", cmd_nodes}, {"move", cmd_move}, {"migrate", cmd_migrate},
	{"policy", cmd_policy}, {"mbind", cmd_mbind},
	{"smaps", cmd_smaps}, {"kpftrust", cmd_kpftrust}, {"pageflags", cmd_pageflags},
	{"kpf", cmd_kpf}, {"moved", cmd_moved}, {"kpcg", cmd_kpcg},
	{"uffd", cmd_uffd}, {"collapse", cmd_collapse}, {"prctl", cmd_prctl},
	{"fork", cmd_fork}, {"children", cmd_children}, {"pids", cmd_pids},
	{"race", cmd_race}, {"killwrite", cmd_killwrite}, {"exitwhen", cmd_exitwhen},
	{"kidsexitwhen", cmd_kidsexitwhen},
	{"reserve", cmd_reserve}, {"vmop", cmd_vmop}, {"idle", cmd_idle},
};
static const size_t ncmds = sizeof(cmds) / sizeof(cmds[0]);

/* Every command the loop knows, from the table itself (a hand list went stale). */
static int cmd_help(int argc, char **argv)
{
	(void)argc, (void)argv;
	ok("commands:");
	for (size_t i = 0; i < ncmds; i++)
		app(" %s", cmds[i].name);
	app(" exit");
	return 0;
}

static int dispatch(char *line)
{
	char *argv[MAX_ARGS + 1];
	int argc = 0;
	for (char *tok = strtok(line, " \t\r\n"); tok; tok = strtok(NULL, " \t\r\n")) {
		if (argc == MAX_ARGS)
			return err("too many arguments (max %d)", MAX_ARGS);
		argv[argc++] = tok;
	}
	if (argc == 0)
		return err("empty command");
	for (size_t i = 0; i < ncmds; i++)
		if (strcmp(argv[0], cmds[i].name) == 0)
			return cmds[i].fn(argc, argv);
	return err("unknown command '%s' (try help)", argv[0]);
}

/* The command loop, for the parent (stdin) and each child (its pipe); returns exit status. */
int serve(FILE *in)
{
	static char note[4096];
	char *line = NULL;
	size_t cap = 0;
	while (getline(&line, &cap, in) > 0) {
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (strncmp(p, "exit", 4) == 0 && (p[4] == 0 || strchr(" \t\r\n", p[4]))) {
			/* Nothing on stderr before the reply: a driver may merge it into stdout. */
			reap_children(note, sizeof(note));
			ok("bye status=%d", exit_status());
			if (note[0])
				app(" children: %s", note);
			send_reply();
			break;
		}
		dispatch(p);
		send_reply();
	}
	free(line);
	reap_children(note, sizeof(note)); /* EOF: nobody reads replies any more */
	if (note[0] == 'e')
		fprintf(stderr, "ksmwork: %s\n", note);
	if (corruption_seen && !is_child)
		fprintf(stderr, "ksmwork: exiting with status 1: data corruption detected\n");
	return exit_status();
}

/* Async-signal-safe report of a fatal fault, then die of the same signal. */
static void on_fault(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	char buf[96], *p = buf;
	const char *name = sig == SIGBUS ? "SIGBUS" : sig == SIGSEGV ? "SIGSEGV" : "SIG?";
	const char *pre = "err crashed signal ";
	while (*pre)
		*p++ = *pre++;
	if (sig >= 10)
		*p++ = (char)('0' + sig / 10);
	*p++ = (char)('0' + sig % 10);
	*p++ = ' ';
	*p++ = '(';
	while (*name)
		*p++ = *name++;
	*p++ = ')';
	const char *a = " addr=0x";
	while (*a)
		*p++ = *a++;
	uintptr_t addr = (uintptr_t)si->si_addr;
	for (int s = 60; s >= 0; s -= 4)
		*p++ = "0123456789abcdef"[(addr >> s) & 15];
	*p++ = '\n';
	if (write(out_fd, buf, (size_t)(p - buf)) < 0) {
		/* nothing left to do */
	}
	/* SA_RESETHAND: returning re-executes the access and dies of the default action. */
}

int main(int argc, char **argv)
{
	if (argc > 1)
		return oneshot(argc, argv);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_fault;
	sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	signal(SIGPIPE, SIG_IGN); /* a dead child shows as EPIPE, not as our death */
	init_content();
	return serve(stdin);
}
