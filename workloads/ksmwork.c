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
 *   madvise NAME merge|unmerge|hugepage|nohugepage|pageout|cold|willneed [FIRST COUNT]
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
 *   punch NAME STRIDE      MADV_DONTNEED all but every STRIDE-th page of a zero region
 *   smaps NAME             -> ok vmas=V rss_kb=.. anon_kb=.. anonhuge_kb=.. swap_kb=..
 *                             locked_kb=.. mergeable=M (VMAs with the "mg" flag)
 *   pageflags NAME [FIRST COUNT]
 *        what backs each page, from /proc/self/pagemap and /proc/kpageflags (root: PFNs):
 *        -> ok present=P swapped=S ksm=K ksmpfns=D thp=T zero=Z nopfn=N
 *           ksm: pages mapping a KSM page, ksmpfns: distinct KSM pages among them, thp: pages
 *           in a transparent huge page, zero: pages mapping the zero page, nopfn: present
 *           pages whose PFN was hidden (no CAP_SYS_ADMIN) or unreadable in kpageflags
 *   kpf NAME save          remember the PFNs of the region's present pages -> ok saved=N
 *   kpf NAME               /proc/kpageflags of those PFNs now, mapped or not (e.g. a KSM page
 *                          swapped out but still in swapcache) -> ok saved=N ksm=K
 *                          swapcache=S ksm_swapcache=B mapped=M unreadable=U
 *   (pageflags, kpf and moved end with kpf_ksm_lies=1, and race's probe answers "err ...:
 *    kpageflags-ksm-unreliable: ...", on a kernel whose kpageflags flags every anonymous
 *    page KSM: see kpf_ksm_lies_on)
 *   kpftrust               read KPF_KSM even so (the test of that ABI) -> ok trusted
 *   peek NAME PAGE OFFSET LEN   -> ok hex=... (LEN <= 64 bytes, for debugging)
 *   race PATH VALUE fork MAXKEPT [probe=PID:ADDR:PAGES] [delay=MS]
 *        a race with guest-side timestamps (CLOCK_MONOTONIC, microseconds): a helper spawned
 *        without copying this mm ("ksmwork write PATH VALUE", e.g. KSM's run=2) writes VALUE
 *        to PATH while this process forks in a loop until the write returns: up to MAXKEPT
 *        children are kept (like "fork"; with a probe only those forked in state p, else
 *        the first ones), the others exit at once. delay=MS: wait
 *        for the write to return first, then fork once (a race forced off, for tests).
 *        Before each fork the probe reads the first and last page of PAGES pages at ADDR in
 *        process PID (pagemap + kpageflags): k = both KSM, p = first no longer KSM but last
 *        still KSM (that mm is being unmerged right now), u = neither, s = other.
 *        -> ok race rc=R t0=.. t1=.. forks=N kept=K inside=I inside_p=P inside_k=Q
 *           kept_inside_ksm=C first=.. last=.. probes=kkpu... pids=a,b
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
 * Exit status: 0, or 1 if any verify (own or a child's) found corruption. A fatal SIGSEGV or
 * SIGBUS prints "err crashed signal N (NAME) addr=0x..." before dying of that signal.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Older libc headers may lack these; values are the kernel UAPI's. */
#ifndef MADV_MERGEABLE
#define MADV_MERGEABLE 12
#endif
#ifndef MADV_UNMERGEABLE
#define MADV_UNMERGEABLE 13
#endif
#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif
#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15
#endif
#ifndef MADV_COLD
#define MADV_COLD 20
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
/* <numaif.h> is libnuma's: spell out the mempolicy UAPI instead. */
#define MPOL_DEFAULT 0
#define MPOL_PREFERRED 1
#define MPOL_BIND 2
#define MPOL_INTERLEAVE 3
#define MPOL_LOCAL 4
#define MPOL_F_ADDR (1 << 1)
#define MPOL_MF_MOVE (1 << 1)
#define MPOL_MF_MOVE_ALL (1 << 2)

#define GOLDEN 0x9e3779b97f4a7c15ULL
#define RBASE 0x4b534d574f524b00ULL /* "KSMWORK\0" */
#define SEEDC 0x5345454400000000ULL
#define TAILC 0x5441494c00000000ULL
#define WRITEC 0x5752495445000000ULL

#define MAX_REGIONS 64
#define MAX_CHILDREN 256
#define MAX_ARGS 16
#define NODEMASK_BITS 1024 /* >= MAX_NUMNODES of any distro kernel */
#define NODEMASK_LONGS (NODEMASK_BITS / (8 * sizeof(unsigned long)))
#define REPLY_MAX 65536
#define MAX_ERRNO 256
#define HUGE_ALIGN (2UL << 20)
#define POKE_HOLE 0xffffffffU

enum kind { PAT_SAME, PAT_UNIQUE, PAT_ZERO, PAT_LASTBYTE, PAT_HALF };
static const char *const kind_names[] = {"same", "unique", "zero", "lastbyte", "half"};

struct region {
	char name[32];
	unsigned char *addr;
	size_t pages;
	void *map;     /* what mmap returned (differs from addr when aligned for THP) */
	size_t maplen;
	enum kind kind;
	uint64_t seed;
	uint64_t seedkey;
	uint64_t *override; /* per-page key set by "write", 0 = pattern's */
	uint64_t *saved_pfns; /* "kpf NAME save": PFNs of the present pages, 0 = none */
	uint32_t *poke; /* "poke"/"hole": per page 0, POKE_HOLE or (OFFSET << 8 | XOR) */
	int used;
};

struct child {
	pid_t pid;
	int cmd_fd;
	FILE *rep;
};

/* What one page must hold. */
struct pexp {
	int zero;
	uint64_t key;
	int has_tail;
	uint64_t tail;
	int hole;          /* unmapped by "hole": never read or written */
	uint32_t poke;     /* (OFFSET << 8 | XOR): one byte differs from the key's page */
};

static struct region regions[MAX_REGIONS];
static struct child children[MAX_CHILDREN];
static int nchildren;
static int is_child;
static int out_fd = 1;
static int corruption_seen;
static uint64_t write_counter;
static size_t page_size;
static size_t page_words;
static uint64_t *rconst;    /* the multiplier R, page_words words */
static uint64_t *scratch;   /* expected page cache for scratch_key */
static uint64_t scratch_key;
static unsigned char *zero_page;
static char reply[REPLY_MAX];
static size_t reply_len;

/* ---- replies ---- */

static void vapp(const char *fmt, va_list ap)
{
	if (reply_len >= sizeof(reply) - 1)
		return;
	int n = vsnprintf(reply + reply_len, sizeof(reply) - reply_len, fmt, ap);
	if (n > 0)
		reply_len += (size_t)n;
	if (reply_len >= sizeof(reply))
		reply_len = sizeof(reply) - 1;
}

__attribute__((format(printf, 1, 2))) static void app(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vapp(fmt, ap);
	va_end(ap);
}

__attribute__((format(printf, 1, 2))) static int ok(const char *fmt, ...)
{
	va_list ap;
	reply_len = 0;
	app("ok ");
	va_start(ap, fmt);
	vapp(fmt, ap);
	va_end(ap);
	return 0;
}

__attribute__((format(printf, 1, 2))) static int err(const char *fmt, ...)
{
	va_list ap;
	reply_len = 0;
	app("err ");
	va_start(ap, fmt);
	vapp(fmt, ap);
	va_end(ap);
	return -1;
}

static const char *errno_name(int e)
{
	switch (e) {
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case ESRCH: return "ESRCH";
	case EINTR: return "EINTR";
	case EIO: return "EIO";
	case E2BIG: return "E2BIG";
	case EBADF: return "EBADF";
	case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST";
	case ENODEV: return "ENODEV";
	case EINVAL: return "EINVAL";
	case ENOSPC: return "ENOSPC";
	case EPIPE: return "EPIPE";
	case ERANGE: return "ERANGE";
	case ENOSYS: return "ENOSYS";
	case EHWPOISON: return "EHWPOISON";
	default: return NULL;
	}
}

/* "Cannot allocate memory (ENOMEM)" */
static const char *errstr(int e)
{
	static char buf[128];
	const char *n = errno_name(e);
	if (n)
		snprintf(buf, sizeof(buf), "%s (%s)", strerror(e), n);
	else
		snprintf(buf, sizeof(buf), "%s (errno %d)", strerror(e), e);
	return buf;
}

static void app_errno_counts(const size_t *counts)
{
	for (int e = 1; e < MAX_ERRNO; e++) {
		if (!counts[e])
			continue;
		const char *n = errno_name(e);
		if (n)
			app(" %s=%zu", n, counts[e]);
		else
			app(" E%d=%zu", e, counts[e]);
	}
}

static long long now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* ---- page content ---- */

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t nonzero(uint64_t k)
{
	return k ? k : 1;
}

static uint64_t seedkey(uint64_t seed)
{
	return nonzero(mix64(seed ^ SEEDC));
}

static struct pexp page_expect(const struct region *r, size_t p)
{
	struct pexp e = {0, 0, 0, 0, 0, 0};
	if (r->poke && r->poke[p] == POKE_HOLE)
		e.hole = 1;
	else if (r->poke && !r->override[p])
		e.poke = r->poke[p];
	if (r->override[p]) {
		e.key = r->override[p];
		return e;
	}
	switch (r->kind) {
	case PAT_ZERO:
		e.zero = 1;
		break;
	case PAT_SAME:
		e.key = r->seedkey;
		break;
	case PAT_UNIQUE:
		e.key = nonzero(mix64(r->seedkey + GOLDEN * (p + 1)));
		break;
	case PAT_LASTBYTE:
		e.key = r->seedkey;
		e.has_tail = 1;
		e.tail = mix64((r->seedkey ^ TAILC) + GOLDEN * (p + 1));
		break;
	case PAT_HALF:
		e.key = p < r->pages / 2 ? r->seedkey : nonzero(mix64(r->seedkey + GOLDEN * (p + 1)));
		break;
	}
	return e;
}

/* scratch = low page_words words of key * R (little-endian), cached per key. */
static const uint64_t *key_page(uint64_t key)
{
	if (key == scratch_key)
		return scratch;
	unsigned __int128 carry = 0;
	for (size_t i = 0; i < page_words; i++) {
		unsigned __int128 t = (unsigned __int128)key * rconst[i] + carry;
		scratch[i] = (uint64_t)t;
		carry = t >> 64;
	}
	scratch_key = key;
	return scratch;
}

static void fill_page(unsigned char *dst, struct pexp e)
{
	if (e.hole)
		return;
	if (e.zero) {
		memset(dst, 0, page_size);
		return;
	}
	memcpy(dst, key_page(e.key), page_size);
	if (e.has_tail)
		memcpy(dst + page_size - 8, &e.tail, 8);
	if (e.poke)
		dst[e.poke >> 8] ^= (unsigned char)e.poke;
}

/* Returns -1 when the page is intact, else the first bad offset (and the expected byte). */
static long check_page(const unsigned char *pg, struct pexp e, unsigned char *expected)
{
	const unsigned char *want = e.zero ? zero_page : (const unsigned char *)key_page(e.key);
	size_t body = e.has_tail ? page_size - 8 : page_size;
	if (e.hole)
		return -1;
	if (!e.poke && memcmp(pg, want, body) == 0 &&
	    (!e.has_tail || memcmp(pg + body, &e.tail, 8) == 0))
		return -1;
	for (size_t o = 0; o < page_size; o++) {
		unsigned char w = o < body ? want[o] : ((const unsigned char *)&e.tail)[o - body];
		if (e.poke && o == (e.poke >> 8))
			w ^= (unsigned char)e.poke;
		if (pg[o] != w) {
			*expected = w;
			return (long)o;
		}
	}
	return -1; /* unreachable: memcmp saw a difference */
}

static void init_content(void)
{
	long ps = sysconf(_SC_PAGESIZE);
	page_size = ps > 0 ? (size_t)ps : 4096;
	page_words = page_size / 8;
	rconst = malloc(page_size);
	scratch = malloc(page_size);
	zero_page = calloc(1, page_size);
	if (!rconst || !scratch || !zero_page) {
		fprintf(stderr, "ksmwork: out of memory at start\n");
		exit(2);
	}
	for (size_t i = 0; i < page_words; i++)
		rconst[i] = mix64(RBASE + GOLDEN * (i + 1));
	rconst[0] |= 1; /* odd R: key -> page is injective */
	scratch_key = 0;
	memset(scratch, 0, page_size); /* key 0 is the zero page */
}

/* ---- argument parsing ---- */

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	if (!s || !*s || *s == '-')
		return -1;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || *end)
		return -1;
	*out = v;
	return 0;
}

static struct region *find_region(const char *name)
{
	for (int i = 0; i < MAX_REGIONS; i++)
		if (regions[i].used && strcmp(regions[i].name, name) == 0)
			return &regions[i];
	return NULL;
}

static struct region *need_region(const char *cmd, const char *name)
{
	struct region *r = find_region(name);
	if (!r)
		err("%s: no region '%s'", cmd, name);
	return r;
}

/* Optional "FIRST COUNT" at argv[i], argv[i+1]; default the whole region. */
static int parse_range(const char *cmd, const struct region *r, int argc, char **argv, int i,
		       size_t *first, size_t *count)
{
	uint64_t f = 0, c = r->pages;
	if (argc > i) {
		if (argc != i + 2 || parse_u64(argv[i], &f) || parse_u64(argv[i + 1], &c))
			return err("%s: bad page range (want FIRST COUNT)", cmd);
		if (f >= r->pages || c == 0 || c > r->pages - f)
			return err("%s: page range %llu+%llu outside region '%s' of %zu pages", cmd,
				   (unsigned long long)f, (unsigned long long)c, r->name, r->pages);
	}
	*first = f;
	*count = c;
	return 0;
}

static int parse_page(const char *cmd, const struct region *r, const char *s, size_t *page)
{
	uint64_t p;
	if (parse_u64(s, &p) || p >= r->pages)
		return err("%s: bad page '%s' (region '%s' has %zu pages)", cmd, s, r->name, r->pages);
	*page = p;
	return 0;
}

static int parse_node(const char *cmd, const char *s, int *node)
{
	uint64_t n;
	if (parse_u64(s, &n) || n >= NODEMASK_BITS)
		return err("%s: bad node '%s'", cmd, s);
	*node = (int)n;
	return 0;
}

static void nodemask_set(unsigned long *mask, int node)
{
	memset(mask, 0, NODEMASK_LONGS * sizeof(unsigned long));
	mask[node / (8 * sizeof(unsigned long))] |= 1UL << (node % (8 * sizeof(unsigned long)));
}

/* ---- region commands ---- */

static int cmd_alloc(int argc, char **argv)
{
	uint64_t pages, seed = 0;
	int node = -1, thp = 0, nothp = 0, shared = 0;
	enum kind kind;
	if (argc < 4)
		return err("usage: alloc NAME PAGES PATTERN [node=N] [thp|nothp] [shared]");
	if (strlen(argv[1]) >= sizeof(regions[0].name))
		return err("alloc: name too long");
	if (find_region(argv[1]))
		return err("alloc: region '%s' exists", argv[1]);
	if (parse_u64(argv[2], &pages) || pages == 0 || pages > (1ULL << 40) / page_size)
		return err("alloc: bad page count '%s'", argv[2]);
	const char *pat = argv[3], *colon = strchr(pat, ':');
	size_t plen = colon ? (size_t)(colon - pat) : strlen(pat);
	for (kind = PAT_SAME; kind <= PAT_HALF; kind++)
		if (strlen(kind_names[kind]) == plen && strncmp(pat, kind_names[kind], plen) == 0)
			break;
	if (kind > PAT_HALF || (kind == PAT_ZERO) != !colon ||
	    (colon && parse_u64(colon + 1, &seed)))
		return err("alloc: bad pattern '%s' (same:SEED unique:SEED zero lastbyte:SEED half:SEED)",
			   pat);
	for (int i = 4; i < argc; i++) {
		if (strncmp(argv[i], "node=", 5) == 0) {
			if (parse_node("alloc", argv[i] + 5, &node))
				return -1;
		} else if (strcmp(argv[i], "thp") == 0) {
			thp = 1;
		} else if (strcmp(argv[i], "nothp") == 0) {
			nothp = 1;
		} else if (strcmp(argv[i], "shared") == 0) {
			shared = 1;
		} else {
			return err("alloc: unknown option '%s'", argv[i]);
		}
	}
	struct region *r = NULL;
	for (int i = 0; i < MAX_REGIONS && !r; i++)
		if (!regions[i].used)
			r = &regions[i];
	if (!r)
		return err("alloc: too many regions (max %d)", MAX_REGIONS);

	long t0 = now_ms();
	size_t len = pages * page_size;
	size_t maplen = len + (thp ? HUGE_ALIGN : 0); /* THP needs a 2 MiB aligned start */
	int flags = MAP_ANONYMOUS | (shared ? MAP_SHARED : MAP_PRIVATE);
	void *map = mmap(NULL, maplen, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (map == MAP_FAILED)
		return err("alloc: mmap %zu bytes: %s", maplen, errstr(errno));
	unsigned char *addr = map;
	if (thp) {
		uintptr_t a = ((uintptr_t)map + HUGE_ALIGN - 1) & ~(HUGE_ALIGN - 1);
		size_t head = a - (uintptr_t)map, tail = maplen - head - len;
		if (head)
			munmap(map, head);
		if (tail)
			munmap((unsigned char *)a + len, tail);
		addr = (unsigned char *)a;
		map = addr;
		maplen = len;
	}
	uint64_t *override = calloc(pages, sizeof(uint64_t));
	if (!override) {
		munmap(map, maplen);
		return err("alloc: no memory for %llu page expectations", (unsigned long long)pages);
	}
	if (node >= 0) {
		unsigned long mask[NODEMASK_LONGS];
		nodemask_set(mask, node);
		if (syscall(SYS_mbind, addr, len, MPOL_BIND, mask, NODEMASK_BITS + 1, 0) != 0) {
			int e = errno;
			munmap(map, maplen);
			free(override);
			return err("alloc: mbind node %d: %s", node, errstr(e));
		}
	}
	if ((thp || nothp) && madvise(addr, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) != 0) {
		int e = errno;
		munmap(map, maplen);
		free(override);
		return err("alloc: madvise %s: %s", thp ? "hugepage" : "nohugepage", errstr(e));
	}
	snprintf(r->name, sizeof(r->name), "%s", argv[1]);
	r->addr = addr;
	r->pages = pages;
	r->map = map;
	r->maplen = maplen;
	r->kind = kind;
	r->seed = seed;
	r->seedkey = seedkey(seed);
	r->override = override;
	r->used = 1;
	for (size_t p = 0; p < pages; p++)
		fill_page(addr + p * page_size, page_expect(r, p));
	return ok("%s addr=%p pages=%zu bytes=%zu ms=%ld", r->name, (void *)addr, pages, len,
		  now_ms() - t0);
}

static int cmd_free(int argc, char **argv)
{
	if (argc != 2)
		return err("usage: free NAME");
	struct region *r = need_region("free", argv[1]);
	if (!r)
		return -1;
	if (munmap(r->map, r->maplen) != 0)
		return err("free: munmap: %s", errstr(errno));
	free(r->override);
	free(r->saved_pfns);
	free(r->poke);
	memset(r, 0, sizeof(*r));
	return ok("freed %s", argv[1]);
}

static int cmd_madvise(int argc, char **argv)
{
	static const struct { const char *name; int advice; } advs[] = {
		{"merge", MADV_MERGEABLE},	{"unmerge", MADV_UNMERGEABLE},
		{"hugepage", MADV_HUGEPAGE},	{"nohugepage", MADV_NOHUGEPAGE},
		{"pageout", MADV_PAGEOUT},	{"cold", MADV_COLD},
		{"willneed", MADV_WILLNEED},
	};
	size_t first = 0, count = 0;
	if (argc < 3)
		return err("usage: madvise NAME merge|unmerge|hugepage|nohugepage|pageout|cold|willneed"
			   " [FIRST COUNT]");
	struct region *r = need_region("madvise", argv[1]);
	if (!r || parse_range("madvise", r, argc, argv, 3, &first, &count))
		return -1;
	for (size_t i = 0; i < sizeof(advs) / sizeof(advs[0]); i++) {
		if (strcmp(argv[2], advs[i].name) != 0)
			continue;
		long t0 = now_ms();
		if (madvise(r->addr + first * page_size, count * page_size, advs[i].advice) != 0)
			return err("madvise %s %s: %s", r->name, argv[2], errstr(errno));
		return ok("madvised %s %s pages=%zu ms=%ld", r->name, argv[2], count, now_ms() - t0);
	}
	return err("madvise: unknown advice '%s'", argv[2]);
}

/* Verifies one region; on the first corrupt region fills the reply (and returns its count). */
static size_t verify_region(const struct region *r, int *reported)
{
	size_t bad = 0, first_page = 0;
	long first_off = -1;
	unsigned char want = 0, got = 0;
	for (size_t p = 0; p < r->pages; p++) {
		const unsigned char *pg = r->addr + p * page_size;
		unsigned char w;
		long off = check_page(pg, page_expect(r, p), &w);
		if (off < 0)
			continue;
		if (!bad++) {
			first_page = p;
			first_off = off;
			want = w;
			got = pg[off];
		}
	}
	if (bad && !*reported) {
		*reported = 1;
		err("corrupt %s page %zu offset %ld expected 0x%02x got 0x%02x pages=%zu", r->name,
		    first_page, first_off, want, got, bad);
	}
	return bad;
}

static int cmd_verify(int argc, char **argv)
{
	size_t pages = 0, bad = 0;
	int reported = 0;
	long t0 = now_ms();
	if (argc > 2)
		return err("usage: verify [NAME]");
	if (argc == 2) {
		struct region *r = need_region("verify", argv[1]);
		if (!r)
			return -1;
		bad = verify_region(r, &reported);
		pages = r->pages;
	} else {
		for (int i = 0; i < MAX_REGIONS; i++) {
			if (!regions[i].used)
				continue;
			bad += verify_region(&regions[i], &reported);
			pages += regions[i].pages;
		}
	}
	if (bad) {
		corruption_seen = 1;
		if (argc == 1)
			app(" total=%zu", bad); /* corrupt pages over all regions */
		return -1;
	}
	return ok("verified %zu pages ms=%ld", pages, now_ms() - t0);
}

static int cmd_write(int argc, char **argv)
{
	size_t p = 0;
	uint64_t seed, key;
	if (argc != 3 && argc != 4)
		return err("usage: write NAME PAGE [same:SEED]");
	struct region *r = need_region("write", argv[1]);
	if (!r || parse_page("write", r, argv[2], &p))
		return -1;
	if (argc == 4) {
		if (strncmp(argv[3], "same:", 5) != 0 || parse_u64(argv[3] + 5, &seed))
			return err("write: bad content '%s' (want same:SEED)", argv[3]);
		key = seedkey(seed);
	} else {
		key = nonzero(mix64((r->seedkey ^ WRITEC) + GOLDEN * ++write_counter));
	}
	r->override[p] = key;
	if (r->poke && r->poke[p] != POKE_HOLE)
		r->poke[p] = 0;
	fill_page(r->addr + p * page_size, page_expect(r, p));
	return ok("wrote %s page %zu", r->name, p);
}

static int cmd_corrupt(int argc, char **argv)
{
	size_t p = 0;
	uint64_t off = 100;
	if (argc != 3 && argc != 4)
		return err("usage: corrupt NAME PAGE [OFFSET]");
	struct region *r = need_region("corrupt", argv[1]);
	if (!r || parse_page("corrupt", r, argv[2], &p))
		return -1;
	if (argc == 4 && (parse_u64(argv[3], &off) || off >= page_size))
		return err("corrupt: bad offset '%s'", argv[3]);
	unsigned char *b = r->addr + p * page_size + off;
	unsigned char was = *b;
	*b = (unsigned char)~was;
	/* "corrupted", not "corrupt": only detected corruption starts with "err corrupt". */
	return ok("corrupted %s page %zu offset %llu was 0x%02x now 0x%02x", r->name, p,
		  (unsigned long long)off, was, *b);
}

static int cmd_touch(int argc, char **argv)
{
	if (argc != 2)
		return err("usage: touch NAME");
	struct region *r = need_region("touch", argv[1]);
	if (!r)
		return -1;
	long t0 = now_ms();
	for (size_t p = 0; p < r->pages; p++)
		fill_page(r->addr + p * page_size, page_expect(r, p));
	return ok("touched %s pages=%zu ms=%ld", r->name, r->pages, now_ms() - t0);
}

/* Rewrites the expected content over and over for MS ms: every write to a merged page breaks
 * its KSM page (COW) while ksmd merges it back, so the two race; the data must survive. */
static int cmd_churn(int argc, char **argv)
{
	uint64_t ms, passes = 0, writes = 0;
	if (argc != 3 || parse_u64(argv[2], &ms) || ms > 3600000)
		return err("usage: churn NAME MS (<= 3600000)");
	struct region *r = need_region("churn", argv[1]);
	if (!r)
		return -1;
	long t0 = now_ms(), end = t0 + (long)ms;
	do {
		for (size_t p = 0; p < r->pages; p++, writes++) {
			fill_page(r->addr + p * page_size, page_expect(r, p));
			if ((p & 255) == 255 && now_ms() >= end)
				break;
		}
		passes++;
	} while (now_ms() < end);
	return ok("churned %s passes=%llu writes=%llu ms=%ld", r->name,
		  (unsigned long long)passes, (unsigned long long)writes, now_ms() - t0);
}

static int cmd_mlock(int argc, char **argv)
{
	int lock = strcmp(argv[0], "mlock") == 0;
	if (argc != 2)
		return err("usage: %s NAME", argv[0]);
	struct region *r = need_region(argv[0], argv[1]);
	if (!r)
		return -1;
	size_t len = r->pages * page_size;
	if ((lock ? mlock(r->addr, len) : munlock(r->addr, len)) != 0)
		return err("%s %s: %s", argv[0], r->name, errstr(errno));
	return ok("%sed %s", argv[0], r->name);
}

static int cmd_mlockall(int argc, char **argv)
{
	if (strcmp(argv[0], "munlockall") == 0) {
		if (argc != 1)
			return err("usage: munlockall");
		if (munlockall() != 0)
			return err("munlockall: %s", errstr(errno));
		return ok("munlocked all");
	}
	if (argc > 2 || (argc == 2 && strcmp(argv[1], "future") != 0))
		return err("usage: mlockall [future]");
	if (mlockall(MCL_CURRENT | (argc == 2 ? MCL_FUTURE : 0)) != 0)
		return err("mlockall: %s", errstr(errno));
	return ok("locked all");
}

static int cmd_peek(int argc, char **argv)
{
	size_t p = 0;
	uint64_t off, len;
	if (argc != 5)
		return err("usage: peek NAME PAGE OFFSET LEN (LEN <= 64)");
	struct region *r = need_region("peek", argv[1]);
	if (!r || parse_page("peek", r, argv[2], &p))
		return -1;
	if (parse_u64(argv[3], &off) || parse_u64(argv[4], &len) || len == 0 || len > 64 ||
	    off >= page_size || len > page_size - off)
		return err("peek: bad OFFSET/LEN '%s %s'", argv[3], argv[4]);
	const unsigned char *b = r->addr + p * page_size + off;
	ok("hex=");
	for (uint64_t i = 0; i < len; i++)
		app("%02x", b[i]);
	return 0;
}

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

/* ---- NUMA ---- */

static int page_array(const struct region *r, size_t first, size_t count, void ***pages,
		      int **status)
{
	*pages = malloc(count * sizeof(void *));
	*status = malloc(count * sizeof(int));
	if (!*pages || !*status) {
		free(*pages);
		free(*status);
		return err("no memory for %zu page pointers", count);
	}
	for (size_t i = 0; i < count; i++)
		(*pages)[i] = r->addr + (first + i) * page_size;
	return 0;
}

static int cmd_nodes(int argc, char **argv)
{
	size_t first = 0, count = 0, n0 = 0, n1 = 0, other = 0, errs[MAX_ERRNO] = {0};
	void **pages;
	int *status;
	if (argc != 2 && argc != 4)
		return err("usage: nodes NAME [FIRST COUNT]");
	struct region *r = need_region("nodes", argv[1]);
	if (!r || parse_range("nodes", r, argc, argv, 2, &first, &count) ||
	    page_array(r, first, count, &pages, &status))
		return -1;
	/* nodes == NULL: move_pages only reports where each page is. */
	if (syscall(SYS_move_pages, 0, count, pages, NULL, status, 0) < 0) {
		int e = errno;
		free(pages);
		free(status);
		return err("nodes %s: move_pages: %s", r->name, errstr(e));
	}
	for (size_t i = 0; i < count; i++) {
		int s = status[i];
		if (s == 0)
			n0++;
		else if (s == 1)
			n1++;
		else if (s > 1)
			other++;
		else
			errs[-s < MAX_ERRNO ? -s : 0]++;
	}
	free(pages);
	free(status);
	ok("node0=%zu node1=%zu other=%zu", n0, n1, other);
	app_errno_counts(errs);
	return 0;
}

static int cmd_move(int argc, char **argv)
{
	size_t first = 0, count = 0, moved = 0, already = 0, failed = 0, unattempted = 0, elsewhere = 0;
	size_t errs[MAX_ERRNO] = {0};
	int node = 0, all = 0, ai = 3;
	void **pages;
	int *status, *before, *nodes;
	if (argc < 3)
		return err("usage: move NAME NODE [all] [FIRST COUNT]");
	struct region *r = need_region("move", argv[1]);
	if (!r || parse_node("move", argv[2], &node))
		return -1;
	if (argc > 3 && strcmp(argv[3], "all") == 0) {
		all = 1;
		ai = 4;
	}
	if (parse_range("move", r, argc, argv, ai, &first, &count) ||
	    page_array(r, first, count, &pages, &status))
		return -1;
	before = malloc(count * sizeof(int));
	nodes = malloc(count * sizeof(int));
	if (!before || !nodes) {
		free(pages), free(status), free(before), free(nodes);
		return err("move: no memory for %zu pages", count);
	}
	long t0 = now_ms();
	if (syscall(SYS_move_pages, 0, count, pages, NULL, before, 0) < 0)
		for (size_t i = 0; i < count; i++)
			before[i] = -1;
	for (size_t i = 0; i < count; i++) {
		nodes[i] = node;
		status[i] = INT_MIN; /* move_pages leaves it alone for pages it never tried */
	}
	long ret = syscall(SYS_move_pages, 0, count, pages, nodes, status,
			   all ? MPOL_MF_MOVE_ALL : MPOL_MF_MOVE);
	int e = errno;
	if (ret < 0) {
		free(pages), free(status), free(before), free(nodes);
		return err("move %s to node %d: move_pages: %s", r->name, node, errstr(e));
	}
	for (size_t i = 0; i < count; i++) {
		int s = status[i];
		if (s == INT_MIN)
			unattempted++;
		else if (s == node && before[i] == node)
			already++;
		else if (s == node)
			moved++;
		else if (s >= 0)
			elsewhere++;
		else {
			failed++;
			errs[-s < MAX_ERRNO ? -s : 0]++;
		}
	}
	free(pages), free(status), free(before), free(nodes);
	ok("moved=%zu already=%zu failed=%zu unattempted=%zu notmoved=%ld", moved, already, failed,
	   unattempted, ret);
	if (elsewhere)
		app(" elsewhere=%zu", elsewhere);
	app_errno_counts(errs);
	app(" ms=%ld", now_ms() - t0);
	return 0;
}

static int cmd_migrate(int argc, char **argv)
{
	int from = 0, to = 0;
	unsigned long oldm[NODEMASK_LONGS], newm[NODEMASK_LONGS];
	if (argc != 3)
		return err("usage: migrate FROM TO");
	if (parse_node("migrate", argv[1], &from) || parse_node("migrate", argv[2], &to))
		return -1;
	nodemask_set(oldm, from);
	nodemask_set(newm, to);
	long t0 = now_ms();
	long ret = syscall(SYS_migrate_pages, 0, NODEMASK_BITS + 1, oldm, newm);
	if (ret < 0)
		return err("migrate %d %d: migrate_pages: %s", from, to, errstr(errno));
	return ok("notmoved=%ld ms=%ld", ret, now_ms() - t0);
}

static int cmd_policy(int argc, char **argv)
{
	static const char *const modes[] = {"default", "preferred", "bind", "interleave", "local"};
	unsigned long mask[NODEMASK_LONGS];
	int mode;
	if (argc != 2)
		return err("usage: policy NAME");
	struct region *r = need_region("policy", argv[1]);
	if (!r)
		return -1;
	memset(mask, 0, sizeof(mask));
	if (syscall(SYS_get_mempolicy, &mode, mask, NODEMASK_BITS + 1, r->addr, MPOL_F_ADDR) != 0)
		return err("policy %s: get_mempolicy: %s", r->name, errstr(errno));
	int m = mode & 0xff; /* high bits carry mode flags */
	ok("mode=%s nodes=", m >= 0 && m <= MPOL_LOCAL ? modes[m] : "unknown");
	const char *sep = "";
	for (int n = 0; n < NODEMASK_BITS; n++) {
		if (mask[n / (8 * sizeof(unsigned long))] & (1UL << (n % (8 * sizeof(unsigned long))))) {
			app("%s%d", sep, n);
			sep = ",";
		}
	}
	return 0;
}

/* Sums /proc/self/smaps fields over the VMAs that overlap the region. */
static int cmd_smaps(int argc, char **argv)
{
	if (argc != 2)
		return err("usage: smaps NAME");
	struct region *r = need_region("smaps", argv[1]);
	if (!r)
		return -1;
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f)
		return err("smaps: /proc/self/smaps: %s", errstr(errno));
	uintptr_t lo = (uintptr_t)r->addr, hi = lo + r->pages * page_size;
	unsigned long rss = 0, anon = 0, huge = 0, swap = 0, locked = 0, val;
	int in = 0, vmas = 0, mergeable = 0;
	char line[512];
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = s < hi && e > lo;
			vmas += in;
			continue;
		}
		if (!in)
			continue;
		if (sscanf(line, "Rss: %lu kB", &val) == 1)
			rss += val;
		else if (sscanf(line, "Anonymous: %lu kB", &val) == 1)
			anon += val;
		else if (sscanf(line, "AnonHugePages: %lu kB", &val) == 1)
			huge += val;
		else if (sscanf(line, "Swap: %lu kB", &val) == 1)
			swap += val;
		else if (sscanf(line, "Locked: %lu kB", &val) == 1)
			locked += val;
		else if (strncmp(line, "VmFlags:", 8) == 0 && strstr(line, " mg"))
			mergeable++;
	}
	fclose(f);
	return ok("vmas=%d rss_kb=%lu anon_kb=%lu anonhuge_kb=%lu swap_kb=%lu locked_kb=%lu "
		  "mergeable=%d", vmas, rss, anon, huge, swap, locked, mergeable);
}

/* ---- what backs the pages ---- */

#define PM_PFN_MASK ((1ULL << 55) - 1)
#define PM_SWAP (1ULL << 62)
#define PM_PRESENT (1ULL << 63)
#define KPF_MMAP 11
#define KPF_SWAPCACHE 13
#define KPF_KSM 21
#define KPF_THP 22
#define KPF_ZERO_PAGE 24

/* Whether /proc/kpageflags' KPF_KSM can be believed: from 6.10 (dee3d0bef2b0, "proc: rewrite
 * stable_page_flags()") until the fix 81401cebfc15 ("fs/proc: fix KPF_KSM reported for all
 * anonymous pages", 7.2-rc) it is set on every anonymous page. Checked once, on a page of our
 * own that KSM never looked at. On such a kernel pageflags, kpf and moved still answer, with
 * kpf_ksm_lies=1 (the host then refuses to read their KSM counts), and race's probe refuses
 * ("kpftrust" believes the flag anyway, for the test of the ABI itself). -1 not checked yet,
 * 0 believed, 1 not. */
static int kpf_ksm_lies = -1;

static int kpf_ksm_lies_on(int kfd)
{
	if (kpf_ksm_lies < 0) {
		kpf_ksm_lies = 0;
		volatile char *p = mmap(NULL, page_size, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		int pmfd = open("/proc/self/pagemap", O_RDONLY);
		uint64_t pm = 0, flags = 0;
		if (p != MAP_FAILED && pmfd >= 0) {
			p[0] = 1;
			if (pread(pmfd, &pm, sizeof(pm),
				  (off_t)((uintptr_t)p / page_size * sizeof(uint64_t))) == sizeof(pm) &&
			    (pm & PM_PRESENT) && (pm & PM_PFN_MASK) &&
			    pread(kfd, &flags, sizeof(flags),
				  (off_t)((pm & PM_PFN_MASK) * sizeof(uint64_t))) == sizeof(flags))
				kpf_ksm_lies = (flags >> KPF_KSM) & 1;
		}
		if (pmfd >= 0)
			close(pmfd);
		if (p != MAP_FAILED)
			munmap((void *)p, page_size);
	}
	return kpf_ksm_lies > 0;
}

/* For a reading that is nothing without KPF_KSM (race's probe): refuse on such a kernel. */
static int kpf_ksm_usable(const char *who, int kfd)
{
	if (kpf_ksm_lies_on(kfd))
		return err("%s: kpageflags-ksm-unreliable", who);  /* the host says why */
	return 0;
}

static int cmd_kpftrust(int argc, char **argv)
{
	(void)argc, (void)argv;
	kpf_ksm_lies = 0;
	return ok("trusted");
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int cmd_pageflags(int argc, char **argv)
{
	size_t first = 0, count = 0, present = 0, swapped = 0, ksm = 0, thp = 0, zero = 0, nopfn = 0;
	if (argc != 2 && argc != 4)
		return err("usage: pageflags NAME [FIRST COUNT]");
	struct region *r = need_region("pageflags", argv[1]);
	if (!r || parse_range("pageflags", r, argc, argv, 2, &first, &count))
		return -1;
	uint64_t *pm = malloc(count * sizeof(uint64_t)), *pfns = malloc(count * sizeof(uint64_t));
	if (!pm || !pfns) {
		free(pm), free(pfns);
		return err("pageflags: no memory for %zu entries", count);
	}
	int pmfd = open("/proc/self/pagemap", O_RDONLY);
	int kfd = open("/proc/kpageflags", O_RDONLY);
	if (pmfd < 0) {
		int e = errno;
		free(pm), free(pfns);
		if (kfd >= 0)
			close(kfd);
		return err("pageflags: /proc/self/pagemap: %s", errstr(e));
	}
	off_t off = (off_t)(((uintptr_t)r->addr / page_size + first) * sizeof(uint64_t));
	ssize_t got = pread(pmfd, pm, count * sizeof(uint64_t), off);
	int e = errno;
	close(pmfd);
	if (got != (ssize_t)(count * sizeof(uint64_t))) {
		free(pm), free(pfns);
		if (kfd >= 0)
			close(kfd);
		return err("pageflags: short pagemap read (%zd): %s", got, errstr(e));
	}
	int lies = kfd >= 0 && kpf_ksm_lies_on(kfd);
	size_t nksm = 0;
	for (size_t i = 0; i < count; i++) {
		if (pm[i] & PM_SWAP)
			swapped++;
		if (!(pm[i] & PM_PRESENT))
			continue;
		present++;
		uint64_t pfn = pm[i] & PM_PFN_MASK, flags = 0;
		if (!pfn || kfd < 0 ||
		    pread(kfd, &flags, sizeof(flags), (off_t)(pfn * sizeof(uint64_t))) != sizeof(flags)) {
			nopfn++;
			continue;
		}
		if (flags & (1ULL << KPF_KSM)) {
			ksm++;
			pfns[nksm++] = pfn;
		}
		thp += (flags >> KPF_THP) & 1;
		zero += (flags >> KPF_ZERO_PAGE) & 1;
	}
	if (kfd >= 0)
		close(kfd);
	qsort(pfns, nksm, sizeof(uint64_t), cmp_u64);
	size_t distinct = 0;
	for (size_t i = 0; i < nksm; i++)
		distinct += i == 0 || pfns[i] != pfns[i - 1];
	free(pm), free(pfns);
	return ok("present=%zu swapped=%zu ksm=%zu ksmpfns=%zu thp=%zu zero=%zu nopfn=%zu "
		  "kpf_ksm_lies=%d", present, swapped, ksm, distinct, thp, zero, nopfn, lies);
}

/* The pagemap entries of pages [first, first + count) of r, malloc'ed; NULL after err() */
static uint64_t *region_pagemap(const char *who, const struct region *r, size_t first,
				size_t count)
{
	uint64_t *pm = malloc(count * sizeof(uint64_t));
	if (!pm) {
		err("%s: no memory for %zu entries", who, count);
		return NULL;
	}
	int pmfd = open("/proc/self/pagemap", O_RDONLY);
	off_t off = (off_t)(((uintptr_t)r->addr / page_size + first) * sizeof(uint64_t));
	if (pmfd < 0 || pread(pmfd, pm, count * sizeof(uint64_t), off) !=
			    (ssize_t)(count * sizeof(uint64_t))) {
		int e = errno;
		if (pmfd >= 0)
			close(pmfd);
		free(pm);
		err("%s: /proc/self/pagemap: %s", who, errstr(e));
		return NULL;
	}
	close(pmfd);
	return pm;
}

/* "kpf NAME save" remembers the PFNs of the region's present pages; "kpf NAME" reads those
 * PFNs' /proc/kpageflags again, mapped or not: whether the very pages that were mapped are now
 * KSM pages in swapcache (a page swapped out but not yet freed). */
static int cmd_kpf(int argc, char **argv)
{
	size_t saved = 0, ksm = 0, swapcache = 0, both = 0, mapped = 0, unreadable = 0;
	if (argc != 2 && !(argc == 3 && strcmp(argv[2], "save") == 0))
		return err("usage: kpf NAME [save]");
	struct region *r = need_region("kpf", argv[1]);
	if (!r)
		return -1;
	if (argc == 3) {
		uint64_t *pm = region_pagemap("kpf", r, 0, r->pages);
		if (!pm)
			return -1;
		for (size_t p = 0; p < r->pages; p++) {
			pm[p] = (pm[p] & PM_PRESENT) ? pm[p] & PM_PFN_MASK : 0;
			saved += pm[p] != 0;
		}
		free(r->saved_pfns);
		r->saved_pfns = pm;
		return ok("saved=%zu", saved);
	}
	if (!r->saved_pfns)
		return err("kpf: nothing saved for '%s' (kpf %s save)", r->name, r->name);
	int kfd = open("/proc/kpageflags", O_RDONLY);
	if (kfd < 0)
		return err("kpf: /proc/kpageflags: %s", errstr(errno));
	int lies = kpf_ksm_lies_on(kfd);
	for (size_t p = 0; p < r->pages; p++) {
		uint64_t pfn = r->saved_pfns[p], flags = 0;
		if (!pfn)
			continue;
		saved++;
		if (pread(kfd, &flags, sizeof(flags), (off_t)(pfn * sizeof(uint64_t))) !=
		    sizeof(flags)) {
			unreadable++;
			continue;
		}
		int k = (flags >> KPF_KSM) & 1, sc = (flags >> KPF_SWAPCACHE) & 1;
		ksm += k;
		swapcache += sc;
		both += k && sc;
		mapped += (flags >> KPF_MMAP) & 1;
	}
	close(kfd);
	return ok("saved=%zu ksm=%zu swapcache=%zu ksm_swapcache=%zu mapped=%zu unreadable=%zu "
		  "kpf_ksm_lies=%d", saved, ksm, swapcache, both, mapped, unreadable, lies);
}

/* ---- comparator edges, madvise ABI, THP collapse, userfaultfd, memcg, prctl ---- */

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MAP_HUGETLB
#define MAP_HUGETLB 0x40000
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

static int need_pokes(struct region *r)
{
	if (!r->poke)
		r->poke = calloc(r->pages, sizeof(uint32_t));
	return r->poke ? 0 : err("no memory for %zu page pokes", r->pages);
}

/* poke NAME PAGE OFFSET XOR: XOR one byte of the page, expectation updated (the page then
 * differs from its pattern's page in exactly that byte; the same poke again restores it). */
static int cmd_poke(int argc, char **argv)
{
	size_t p = 0;
	uint64_t off, x;
	if (argc != 5)
		return err("usage: poke NAME PAGE OFFSET XOR (XOR 1..255)");
	struct region *r = need_region("poke", argv[1]);
	if (!r || parse_page("poke", r, argv[2], &p))
		return -1;
	if (parse_u64(argv[3], &off) || off >= page_size || parse_u64(argv[4], &x) || !x || x > 255)
		return err("poke: bad OFFSET/XOR '%s %s'", argv[3], argv[4]);
	if (need_pokes(r))
		return -1;
	uint32_t was = r->poke[p];
	if (was == POKE_HOLE || r->override[p] || r->kind == PAT_ZERO)
		return err("poke: page %zu of '%s' is a hole, rewritten or zero", p, r->name);
	if (was && (was >> 8) != off)
		return err("poke: page %zu of '%s' is poked at %u already", p, r->name, was >> 8);
	uint32_t now = (uint32_t)(off << 8) | ((was ^ (uint32_t)x) & 255);
	r->poke[p] = (now & 255) ? now : 0;
	r->addr[p * page_size + off] ^= (unsigned char)x;
	return ok("poked %s page %zu offset %llu xor 0x%02llx", r->name, p,
		  (unsigned long long)off, (unsigned long long)x);
}

/* hole NAME PAGE: munmap one page of the region (verify, touch and churn skip it). */
static int cmd_hole(int argc, char **argv)
{
	size_t p = 0;
	if (argc != 3)
		return err("usage: hole NAME PAGE");
	struct region *r = need_region("hole", argv[1]);
	if (!r || parse_page("hole", r, argv[2], &p) || need_pokes(r))
		return -1;
	if (munmap(r->addr + p * page_size, page_size) != 0)
		return err("hole: munmap: %s", errstr(errno));
	r->poke[p] = POKE_HOLE;
	return ok("holed %s page %zu", r->name, p);
}

/* hugetlb NAME PAGES same:SEED: a MAP_HUGETLB region (PAGES a multiple of 2 MiB). */
static int cmd_hugetlb(int argc, char **argv)
{
	uint64_t pages, seed;
	if (argc != 4 || parse_u64(argv[2], &pages) || !pages || (pages * page_size) % HUGE_ALIGN ||
	    strncmp(argv[3], "same:", 5) || parse_u64(argv[3] + 5, &seed))
		return err("usage: hugetlb NAME PAGES same:SEED (PAGES * 4 KiB a multiple of 2 MiB)");
	if (strlen(argv[1]) >= sizeof(regions[0].name) || find_region(argv[1]))
		return err("hugetlb: bad or existing name '%s'", argv[1]);
	struct region *r = NULL;
	for (int i = 0; i < MAX_REGIONS && !r; i++)
		if (!regions[i].used)
			r = &regions[i];
	if (!r)
		return err("hugetlb: too many regions (max %d)", MAX_REGIONS);
	size_t len = pages * page_size;
	void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB,
			 -1, 0);
	if (map == MAP_FAILED)
		return err("hugetlb: mmap %zu bytes: %s", len, errstr(errno));
	uint64_t *override = calloc(pages, sizeof(uint64_t));
	if (!override) {
		munmap(map, len);
		return err("hugetlb: no memory");
	}
	snprintf(r->name, sizeof(r->name), "%s", argv[1]);
	r->addr = map;
	r->map = map;
	r->pages = pages;
	r->maplen = len;
	r->kind = PAT_SAME;
	r->seed = seed;
	r->seedkey = seedkey(seed);
	r->override = override;
	r->used = 1;
	for (size_t p = 0; p < pages; p++)
		fill_page(r->addr + p * page_size, page_expect(r, p));
	return ok("%s addr=%p pages=%zu hugetlb", r->name, map, (size_t)pages);
}

/* uffd NAME: register the region with a new userfaultfd in MISSING mode (kept open). */
static int cmd_uffd(int argc, char **argv)
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
static int cmd_collapse(int argc, char **argv)
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

/* kpcg NAME: the memory cgroups (inode numbers, /proc/kpagecgroup) charged for the region's
 * present pages -> ok present=N cgroups=INO:PAGES,INO:PAGES (at most 8 distinct) */
static int cmd_kpcg(int argc, char **argv)
{
	uint64_t ino[8], cnt[8];
	int n = 0;
	size_t present = 0;
	if (argc != 2)
		return err("usage: kpcg NAME");
	struct region *r = need_region("kpcg", argv[1]);
	if (!r)
		return -1;
	int pmfd = open("/proc/self/pagemap", O_RDONLY), cfd = open("/proc/kpagecgroup", O_RDONLY);
	if (pmfd < 0 || cfd < 0) {
		int e = errno;
		if (pmfd >= 0)
			close(pmfd);
		if (cfd >= 0)
			close(cfd);
		return err("kpcg: /proc/self/pagemap or /proc/kpagecgroup: %s", errstr(e));
	}
	for (size_t p = 0; p < r->pages; p++) {
		uint64_t pm = 0, cg = 0;
		off_t off = (off_t)(((uintptr_t)r->addr / page_size + p) * sizeof(uint64_t));
		if (pread(pmfd, &pm, sizeof(pm), off) != sizeof(pm) || !(pm & PM_PRESENT))
			continue;
		present++;
		if (pread(cfd, &cg, sizeof(cg), (off_t)((pm & PM_PFN_MASK) * sizeof(cg))) != sizeof(cg))
			cg = ~0ULL;
		int i = 0;
		while (i < n && ino[i] != cg)
			i++;
		if (i == n && n < 8)
			ino[n] = cg, cnt[n++] = 0;
		if (i < n)
			cnt[i]++;
	}
	close(pmfd);
	close(cfd);
	ok("present=%zu cgroups=", present);
	for (int i = 0; i < n; i++)
		app("%s%llu:%llu", i ? "," : "", (unsigned long long)ino[i],
		    (unsigned long long)cnt[i]);
	return 0;
}

/* prctl get|set|clear: PR_GET/SET_MEMORY_MERGE (6.4+) -> ok merge=0|1 | err ... (EINVAL)
 * prctl spawn: fork + exec /bin/cat reading a pipe only this process holds (it ends when this
 * process exits); the harness reads its /proc/PID files -> ok pid=P */
static int cmd_prctl(int argc, char **argv)
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

/* ---- migration: mbind's route, and where a region's pages went ---- */

/* mbind(2) MPOL_BIND to NODE over the region with MPOL_MF_MOVE, and MPOL_MF_MOVE_ALL with
 * "all" (without it a page mapped more than once, as a KSM page is, stays where it is). No
 * MPOL_MF_STRICT: it fails with EIO whenever one page is mapped at several addresses of the
 * range (the second one cannot be isolated again), even when the page moved: "nodes" says
 * where the pages went. */
static int cmd_mbind(int argc, char **argv)
{
	unsigned long mask[NODEMASK_LONGS];
	int node = 0, all = argc == 4 && strcmp(argv[3], "all") == 0;
	if (argc != 3 && !all)
		return err("usage: mbind NAME NODE [all]");
	struct region *r = need_region("mbind", argv[1]);
	if (!r || parse_node("mbind", argv[2], &node))
		return -1;
	nodemask_set(mask, node);
	long t0 = now_ms();
	unsigned flags = MPOL_MF_MOVE | (all ? MPOL_MF_MOVE_ALL : 0);
	if (syscall(SYS_mbind, r->addr, r->pages * page_size, MPOL_BIND, mask, NODEMASK_BITS + 1,
		    flags) != 0)
		return err("mbind %s node %d: %s", r->name, node, errstr(errno));
	return ok("mbind %s node=%d ms=%ld", r->name, node, now_ms() - t0);
}

/* "punch NAME STRIDE": MADV_DONTNEED every page but each STRIDE-th of a zero-filled region
 * (it still reads zeros, so verify holds): holes in the pageblocks the region used, free pages
 * that compaction's free scanner can migrate into. */
static int cmd_punch(int argc, char **argv)
{
	uint64_t stride;
	size_t punched = 0;
	if (argc != 3)
		return err("usage: punch NAME STRIDE");
	struct region *r = need_region("punch", argv[1]);
	if (!r)
		return -1;
	if (parse_u64(argv[2], &stride) || stride < 2)
		return err("punch: bad stride '%s' (2 or more)", argv[2]);
	for (size_t p = 0; p < r->pages; p++)
		if (!page_expect(r, p).zero)
			return err("punch: '%s' page %zu is not zero-filled", r->name, p);
	for (size_t p = 1; p < r->pages; p += stride) { /* pages p .. p+stride-2: one call */
		size_t n = r->pages - p < stride - 1 ? r->pages - p : stride - 1;
		if (madvise(r->addr + p * page_size, n * page_size, MADV_DONTNEED) != 0)
			return err("punch %s pages %zu+%zu: madvise: %s", r->name, p, n, errstr(errno));
		punched += n;
	}
	return ok("punched %s pages=%zu", r->name, punched);
}

/* "moved NAME": the region's PFNs now against those "kpf NAME save" remembered (root). Of the
 * pages present then: same (same PFN), changed (present at another PFN: migrated), gone (not
 * present now); ksm: changed or same pages whose PFN now is a KSM page; changed_ksm: both. */
static int cmd_moved(int argc, char **argv)
{
	size_t same = 0, changed = 0, gone = 0, ksm = 0, changed_ksm = 0, unreadable = 0;
	if (argc != 2)
		return err("usage: moved NAME");
	struct region *r = need_region("moved", argv[1]);
	if (!r)
		return -1;
	if (!r->saved_pfns)
		return err("moved: nothing saved for '%s' (kpf %s save)", r->name, r->name);
	uint64_t *pm = region_pagemap("moved", r, 0, r->pages);
	if (!pm)
		return -1;
	int kfd = open("/proc/kpageflags", O_RDONLY);
	if (kfd < 0) {
		int e = errno;
		free(pm);
		return err("moved: /proc/kpageflags: %s", errstr(e));
	}
	int lies = kpf_ksm_lies_on(kfd);
	for (size_t p = 0; p < r->pages; p++) {
		uint64_t was = r->saved_pfns[p], pfn = pm[p] & PM_PFN_MASK, flags = 0;
		if (!was)
			continue;
		if (!(pm[p] & PM_PRESENT)) {
			gone++;
			continue;
		}
		if (!pfn || pread(kfd, &flags, sizeof(flags), (off_t)(pfn * sizeof(uint64_t))) !=
				    sizeof(flags)) {
			unreadable++;
			continue;
		}
		int k = (flags >> KPF_KSM) & 1;
		same += pfn == was;
		changed += pfn != was;
		ksm += k;
		changed_ksm += k && pfn != was;
	}
	close(kfd);
	free(pm);
	return ok("same=%zu changed=%zu gone=%zu ksm=%zu changed_ksm=%zu unreadable=%zu "
		  "kpf_ksm_lies=%d", same, changed, gone, ksm, changed_ksm, unreadable, lies);
}

/* ---- children ---- */

static int serve(FILE *in);
static int dispatch(char *line);

static void describe_status(int st, char *buf, size_t len)
{
	if (WIFEXITED(st))
		snprintf(buf, len, "exit %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(buf, len, "signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
	else
		snprintf(buf, len, "status 0x%x", st);
}

static void drop_child(int i)
{
	close(children[i].cmd_fd);
	fclose(children[i].rep);
	children[i] = children[--nchildren];
}

/* Forks one child that serves commands on its own pipes (kept in children[]); returns its pid,
 * or -1 with the reply filled. */
static pid_t fork_one(pid_t parent)
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

static int cmd_fork(int argc, char **argv)
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

/* ---- races with guest-side timestamps ---- */

/* KSM flag of the page at addr in process pid: 1 KSM, 0 present and not KSM, -1 otherwise. */
static int page_is_ksm(int pmfd, int kfd, uintptr_t addr)
{
	uint64_t pm = 0, flags = 0;
	if (pread(pmfd, &pm, sizeof(pm), (off_t)(addr / page_size * sizeof(uint64_t))) !=
	    sizeof(pm) || !(pm & PM_PRESENT) || !(pm & PM_PFN_MASK))
		return -1;
	if (pread(kfd, &flags, sizeof(flags), (off_t)((pm & PM_PFN_MASK) * sizeof(uint64_t))) !=
	    sizeof(flags))
		return -1;
	return (flags >> KPF_KSM) & 1;
}

static char probe_state(int pmfd, int kfd, uintptr_t addr, uint64_t pages)
{
	if (pmfd < 0 || kfd < 0)
		return '-';
	int first = page_is_ksm(pmfd, kfd, addr);
	int last = page_is_ksm(pmfd, kfd, addr + (pages - 1) * page_size);
	if (first == 1 && last == 1)
		return 'k';
	if (first == 0 && last == 1)
		return 'p';
	if (first == 0 && last == 0)
		return 'u';
	return 's';
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

static int cmd_race(int argc, char **argv)
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
			char *a = argv[i] + 6, *b = strchr(a, ':'), *c = b ? strchr(b + 1, ':') : NULL;
			if (!b || !c)
				return err("race: bad probe '%s' (want PID:ADDR:PAGES)", argv[i]);
			*b = *c = 0;
			if (parse_u64(a, &ppid) || parse_u64(b + 1, &paddr) || parse_u64(c + 1, &ppages) ||
			    ppages == 0)
				return err("race: bad probe numbers");
			have_probe = 1;
		} else if (strncmp(argv[i], "delay=", 6) == 0) {
			if (parse_u64(argv[i] + 6, &delay))
				return err("race: bad delay '%s'", argv[i]);
		} else {
			return err("race: unknown option '%s'", argv[i]);
		}
	}
	int pmfd = -1, kfd = -1;
	if (have_probe) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/%llu/pagemap", (unsigned long long)ppid);
		pmfd = open(path, O_RDONLY);
		kfd = open("/proc/kpageflags", O_RDONLY);
		if (pmfd < 0 || kfd < 0) {
			int e = errno;
			if (pmfd >= 0)
				close(pmfd);
			if (kfd >= 0)
				close(kfd);
			return err("race: probe %s: %s", pmfd < 0 ? path : "/proc/kpageflags", errstr(e));
		}
		if (kpf_ksm_usable("race: probe", kfd) < 0) {
			close(pmfd);
			close(kfd);
			return -1;
		}
	}
	int outfd = -1, st = 0, first_kept = nchildren, nforks = 0, kept = 0;
	pid_t parent = getpid();
	/* Already forking when the write starts: one fork (exiting at once) before the writer. */
	probes[0] = probe_state(pmfd, kfd, (uintptr_t)paddr, ppages);
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
		probes[nforks] = probe_state(pmfd, kfd, (uintptr_t)paddr, ppages);
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
	   "kept_inside_ksm=%d first=%lld last=%lld probes=%s pids=", rc, t0, t1, nforks, kept,
	   inside, inside_p, inside_k, kept_inside_ksm, nforks ? fstart[0] : -1, nforks ? fend[nforks - 1] : -1,
	   nforks ? probes : "-");
	for (int i = first_kept; i < nchildren; i++)
		app("%s%d", i == first_kept ? "" : ",", (int)children[i].pid);
	if (!WIFEXITED(st))
		app(" writer_status=0x%x", st);
	return 0;
}

/* Reads child i's reply to the command just sent; a dead child yields an "err child" text. */
static int child_reply(int i, int sent, char *buf, size_t len, int *st, int *reaped)
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

static int cmd_children(int argc, char **argv)
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

static int cmd_pids(int argc, char **argv)
{
	(void)argv;
	if (argc != 1)
		return err("usage: pids");
	ok("parent=%d children=", (int)getpid());
	for (int i = 0; i < nchildren; i++)
		app("%s%d", i ? "," : "", (int)children[i].pid);
	return 0;
}

/* ---- address-space changes and exits ----
 *   reserve NAME PAGES none|rw [merge] [lock|lockonfault]
 *        an mmap never touched (PROT_NONE or read-write), outside the regions (verify skips
 *        it), optionally MADV_MERGEABLE and mlock()ed (lockonfault: mlock2 MLOCK_ONFAULT, so a
 *        read-write one stays unpopulated) -> ok NAME addr=0x.. pages=N
 *   vmop NAME munmap|dontneed FIRST COUNT   (FIRST > 0; the region is split: NAME keeps the
 *        head, NAME.t the tail, dontneed's NAME.z the zero-filled middle)
 *   vmop NAME unmergeable|protro|protnone|protrw FIRST COUNT
 *   vmop NAME move          mremap(MREMAP_MAYMOVE|MREMAP_FIXED) of the whole region elsewhere
 *   vmop NAME shrink PAGES  mremap to PAGES pages in place
 *        -> ok vmop NAME OP t0=.. t1=.. addr=0x.. pages=N [tail=NAME.t] [zeroed=NAME.z]
 *           (t0/t1: CLOCK_MONOTONIC microseconds around the syscall)
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
#ifndef SYS_mlock2
#define SYS_mlock2 325
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif
#ifndef MREMAP_FIXED
#define MREMAP_FIXED 2
#endif
#define MAX_RESERVED 16

static void send_reply(void);
static int exit_status(void);

static struct {
	char name[32];
	void *addr;
	size_t len;
} reserved[MAX_RESERVED];

/* 1 when the VMA holding addr has FLAG (" lo", " mg") in /proc/self/smaps, 0 if not, -1. */
static int vma_has_flag(uintptr_t addr, const char *flag)
{
	char line[512];
	int in = 0, found = -1;
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = s <= addr && addr < e;
		else if (in && strncmp(line, "VmFlags:", 8) == 0)
			found = strstr(line, flag) != NULL;
	}
	fclose(f);
	return found;
}

static int cmd_reserve(int argc, char **argv)
{
	uint64_t pages;
	int prot, merge = 0, lock = 0, onfault = 0, slot = -1;
	if (argc < 4 || parse_u64(argv[2], &pages) || pages == 0 ||
	    pages > (1ULL << 40) / page_size || strlen(argv[1]) >= sizeof(reserved[0].name))
		return err("usage: reserve NAME PAGES none|rw [merge] [lock|lockonfault]");
	if (strcmp(argv[3], "none") == 0)
		prot = PROT_NONE;
	else if (strcmp(argv[3], "rw") == 0)
		prot = PROT_READ | PROT_WRITE;
	else
		return err("reserve: bad protection '%s' (none|rw)", argv[3]);
	for (int i = 4; i < argc; i++) {
		if (strcmp(argv[i], "merge") == 0)
			merge = 1;
		else if (strcmp(argv[i], "lock") == 0)
			lock = 1;
		else if (strcmp(argv[i], "lockonfault") == 0)
			onfault = 1;
		else
			return err("reserve: unknown option '%s'", argv[i]);
	}
	for (int i = MAX_RESERVED - 1; i >= 0; i--) {
		if (reserved[i].addr && strcmp(reserved[i].name, argv[1]) == 0)
			return err("reserve: '%s' exists", argv[1]);
		if (!reserved[i].addr)
			slot = i;
	}
	if (slot < 0)
		return err("reserve: too many (max %d)", MAX_RESERVED);
	size_t len = pages * page_size;
	void *a = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED)
		return err("reserve: mmap: %s", errstr(errno));
	const char *what = NULL;
	if (merge && madvise(a, len, MADV_MERGEABLE) != 0)
		what = "madvise merge";
	else if (lock && mlock(a, len) != 0 && !(prot == PROT_NONE && errno == ENOMEM))
		what = "mlock"; /* PROT_NONE: VM_LOCKED is set, then populating fails with ENOMEM */
	else if (onfault && syscall(SYS_mlock2, a, len, MLOCK_ONFAULT) != 0)
		what = "mlock2 onfault";
	if (what) {
		int e = errno;
		munmap(a, len);
		return err("reserve: %s: %s", what, errstr(e));
	}
	snprintf(reserved[slot].name, sizeof(reserved[slot].name), "%s", argv[1]);
	reserved[slot].addr = a;
	reserved[slot].len = len;
	return ok("%s addr=%p pages=%llu locked=%d", argv[1], a, (unsigned long long)pages,
		  vma_has_flag((uintptr_t)a, " lo"));
}

/* A new region for pages [first, first+count) of r (same VMA): expectations carried over as
 * per-page keys (a pattern's page index moves), or all-zero content with zero. */
static struct region *split_off(struct region *r, const char *suffix, size_t first,
				size_t count, int zero)
{
	struct region *n = NULL;
	char name[64];
	snprintf(name, sizeof(name), "%s%s", r->name, suffix);
	if (strlen(name) >= sizeof(r->name) || find_region(name))
		return err("vmop: cannot name the piece '%s'", name), NULL;
	for (int i = 0; i < MAX_REGIONS && !n; i++)
		if (!regions[i].used)
			n = &regions[i];
	uint64_t *ov = calloc(count, sizeof(uint64_t));
	if (!n || !ov) {
		free(ov);
		return err("vmop: no region slot or memory for '%s'", name), NULL;
	}
	for (size_t p = 0; p < count && !zero; p++)
		ov[p] = page_expect(r, first + p).key;
	memset(n, 0, sizeof(*n));
	snprintf(n->name, sizeof(n->name), "%s", name);
	n->addr = r->addr + first * page_size;
	n->map = n->addr;
	n->maplen = count * page_size;
	n->pages = count;
	n->kind = zero ? PAT_ZERO : r->kind;
	n->seed = r->seed;
	n->seedkey = r->seedkey;
	n->override = ov;
	n->used = 1;
	return n;
}

static int cmd_vmop(int argc, char **argv)
{
	static const struct { const char *name; int range; } ops[] = {
		{"munmap", 1}, {"dontneed", 1}, {"unmergeable", 1}, {"protro", 1},
		{"protnone", 1}, {"protrw", 1}, {"move", 0}, {"shrink", 2},
	};
	size_t first = 0, count = 0, newpages = 0;
	int op = -1, rc = 0;
	if (argc < 3)
		return err("usage: vmop NAME munmap|dontneed|unmergeable|protro|protnone|protrw "
			   "FIRST COUNT | vmop NAME move | vmop NAME shrink PAGES");
	struct region *r = need_region("vmop", argv[1]);
	if (!r)
		return -1;
	for (int i = 0; i < (int)(sizeof(ops) / sizeof(ops[0])); i++)
		if (strcmp(argv[2], ops[i].name) == 0)
			op = i;
	if (op < 0)
		return err("vmop: unknown operation '%s'", argv[2]);
	if (r->kind == PAT_LASTBYTE || r->map != r->addr || r->maplen != r->pages * page_size)
		return err("vmop: region '%s' cannot be reshaped (lastbyte or odd mapping)", r->name);
	if (ops[op].range == 1) {
		if (argc != 5 || parse_range("vmop", r, argc, argv, 3, &first, &count))
			return err("vmop %s: want FIRST COUNT inside '%s'", argv[2], r->name);
		if (first == 0 && op <= 1)
			return err("vmop %s: FIRST must be > 0 (the head keeps the name)", argv[2]);
	} else if (ops[op].range == 2) {
		uint64_t n;
		if (argc != 4 || parse_u64(argv[3], &n) || n == 0 || n >= r->pages)
			return err("vmop shrink: want PAGES below %zu", r->pages);
		newpages = n;
	} else if (argc != 3) {
		return err("usage: vmop NAME move");
	}
	unsigned char *a = r->addr + first * page_size, *dest = NULL;
	size_t len = count * page_size, all = r->pages * page_size;
	if (op == 6) { /* somewhere the region is not: a fresh reservation, replaced by mremap */
		dest = mmap(NULL, all, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (dest == MAP_FAILED)
			return err("vmop move: reserving the destination: %s", errstr(errno));
	}
	long long t0 = now_us();
	void *res = NULL;
	switch (op) {
	case 0: rc = munmap(a, len); break;
	case 1: rc = madvise(a, len, MADV_DONTNEED); break;
	case 2: rc = madvise(a, len, MADV_UNMERGEABLE); break;
	case 3: rc = mprotect(a, len, PROT_READ); break;
	case 4: rc = mprotect(a, len, PROT_NONE); break;
	case 5: rc = mprotect(a, len, PROT_READ | PROT_WRITE); break;
	case 6:
		res = mremap(r->addr, all, all, MREMAP_MAYMOVE | MREMAP_FIXED, dest);
		rc = res == MAP_FAILED ? -1 : 0;
		break;
	case 7:
		res = mremap(r->addr, all, newpages * page_size, 0);
		rc = res == MAP_FAILED ? -1 : 0;
		break;
	}
	long long t1 = now_us();
	if (rc != 0) {
		int e = errno;
		if (dest)
			munmap(dest, all);
		return err("vmop %s %s: %s", r->name, argv[2], errstr(e));
	}
	free(r->saved_pfns); /* the PFNs saved by kpf no longer describe the region */
	r->saved_pfns = NULL;
	struct region *tail = NULL, *mid = NULL;
	size_t end = first + count;
	if ((op == 0 || op == 1) && end < r->pages)
		tail = split_off(r, ".t", end, r->pages - end, 0);
	if (op == 1)
		mid = split_off(r, ".z", first, count, 1);
	if ((op == 0 || op == 1) && ((end < r->pages && !tail) || (op == 1 && !mid)))
		return -1; /* the reply says why; the mapping is changed already */
	if (op == 0 || op == 1) {
		r->pages = first;
		r->maplen = first * page_size;
	} else if (op == 6) {
		r->addr = r->map = res;
	} else if (op == 7) {
		r->pages = newpages;
		r->maplen = newpages * page_size;
	}
	ok("vmop %s %s t0=%lld t1=%lld addr=%p pages=%zu", r->name, argv[2], t0, t1,
	   (void *)r->addr, r->pages);
	if (tail)
		app(" tail=%s", tail->name);
	if (mid)
		app(" zeroed=%s", mid->name);
	return 0;
}

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

static int cmd_exitwhen(int argc, char **argv)
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

static int cmd_kidsexitwhen(int argc, char **argv)
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

static int cmd_regions(int argc, char **argv)
{
	(void)argc, (void)argv;
	ok("regions=");
	const char *sep = "";
	for (int i = 0; i < MAX_REGIONS; i++) {
		const struct region *r = &regions[i];
		if (!r->used)
			continue;
		app("%s%s:%zu:%s", sep, r->name, r->pages, kind_names[r->kind]);
		sep = ",";
	}
	return 0;
}

static int cmd_help(int argc, char **argv)
{
	(void)argc, (void)argv;
	return ok("commands: alloc madvise verify write corrupt touch mlock munlock mlockall "
		  "munlockall fork children pids move nodes policy migrate smaps free sleep pid "
		  "regions peek crash churn pageflags race kpf help exit");
}

static int exit_status(void)
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

static int dispatch(char *line)
{
	static const struct { const char *name; int (*fn)(int, char **); } cmds[] = {
		{"alloc", cmd_alloc},	    {"free", cmd_free},		{"madvise", cmd_madvise},
		{"verify", cmd_verify},	    {"write", cmd_write},	{"corrupt", cmd_corrupt},
		{"touch", cmd_touch},	    {"mlock", cmd_mlock},	{"munlock", cmd_mlock},
		{"mlockall", cmd_mlockall}, {"munlockall", cmd_mlockall}, {"fork", cmd_fork},
		{"children", cmd_children}, {"pids", cmd_pids},		{"move", cmd_move},
		{"nodes", cmd_nodes},	    {"policy", cmd_policy},	{"migrate", cmd_migrate},
		{"smaps", cmd_smaps},	    {"sleep", cmd_sleep},	{"pid", cmd_pid},
		{"regions", cmd_regions},   {"help", cmd_help},		{"peek", cmd_peek},
		{"crash", cmd_crash},	    {"churn", cmd_churn},	{"pageflags", cmd_pageflags},
		{"race", cmd_race},	    {"kpf", cmd_kpf},		{"kpftrust", cmd_kpftrust},
		{"poke", cmd_poke}, {"hole", cmd_hole}, {"hugetlb", cmd_hugetlb}, {"uffd", cmd_uffd}, {"collapse", cmd_collapse}, {"kpcg", cmd_kpcg}, {"prctl", cmd_prctl},
		{"reserve", cmd_reserve}, {"vmop", cmd_vmop}, {"exitwhen", cmd_exitwhen}, {"kidsexitwhen", cmd_kidsexitwhen},
		{"mbind", cmd_mbind},	    {"moved", cmd_moved},	{"punch", cmd_punch},
	};
	char *argv[MAX_ARGS + 1];
	int argc = 0;
	for (char *tok = strtok(line, " \t\r\n"); tok; tok = strtok(NULL, " \t\r\n")) {
		if (argc == MAX_ARGS)
			return err("too many arguments (max %d)", MAX_ARGS);
		argv[argc++] = tok;
	}
	if (argc == 0)
		return err("empty command");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(argv[0], cmds[i].name) == 0)
			return cmds[i].fn(argc, argv);
	return err("unknown command '%s' (try help)", argv[0]);
}

static void send_reply(void)
{
	reply[reply_len++] = '\n';
	for (size_t off = 0; off < reply_len;) {
		ssize_t w = write(out_fd, reply + off, reply_len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			_exit(exit_status() ? exit_status() : 4); /* nobody is listening any more */
		off += (size_t)w;
	}
	reply_len = 0;
}

/* The command loop, for the parent (stdin) and each child (its pipe); returns exit status. */
static int serve(FILE *in)
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
static int oneshot(int argc, char **argv)
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
