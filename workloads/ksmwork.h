/*
 * ksmwork's shared state and helpers: one header for all of its translation units.
 *
 * The line protocol and the page content are documented at the top of ksmwork.c. Every
 * command is "int cmd_NAME(int argc, char **argv)": it fills the one reply line with ok() or
 * err() (app() appends) and returns 0 or -1; the command loop sends the reply. The commands
 * live in one file per family:
 *   ksmwork.c          main(), the command table and loop, exit status, misc commands
 *   ksmwork_proto.c    the reply line, errno names, clocks, number and node arguments
 *   ksmwork_content.c  page content: what each page must hold, fill and check
 *   ksmwork_regions.c  the region table: alloc, free, madvise, mlock, hugetlb, regions
 *   ksmwork_data.c     what the pages hold: verify, write, corrupt, touch, churn, peek, poke,
 *                      hole, punch
 *   ksmwork_numa.c     NUMA placement: nodes, move, migrate, policy, mbind
 *   ksmwork_pageinfo.c what backs the pages: smaps, pageflags, kpf, moved, kpcg
 *   ksmwork_ksmpages.c which pages are KSM pages, on every kernel: ksm_view, kpftrust
 *   ksmwork_abi.c      userfaultfd, MADV_COLLAPSE, PR_SET_MEMORY_MERGE
 *   ksmwork_children.c forked children: fork, children, pids
 *   ksmwork_race.c     races with guest-side timestamps: race, killwrite, exitwhen, kidsexitwhen
 *   ksmwork_vma.c      address-space changes: reserve, vmop
 *   ksmwork_oneshot.c  "ksmwork write|swapoff|swapoff-during|waitexit|now" (no command loop)
 */
#ifndef KSMWORK_H
#define KSMWORK_H

#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/types.h>

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
#ifndef MAP_HUGETLB
#define MAP_HUGETLB 0x40000
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

/* /proc/PID/pagemap and /proc/kpageflags bits */
#define PM_PFN_MASK ((1ULL << 55) - 1)
#define PM_SWAP (1ULL << 62)
#define PM_PRESENT (1ULL << 63)
#define SAVED_KSM (1ULL << 63) /* in saved_pfns: above any PFN */
#define KPF_MMAP 11
#define KPF_ANON 12
#define KPF_SWAPCACHE 13
#define KPF_KSM 21
#define KPF_THP 22
#define KPF_ZERO_PAGE 24

/* Page content constants (ksm_py_worker.py has the same ones). */
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
extern const char *const kind_names[];

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
	uint64_t *saved_pfns; /* "kpf NAME save": PFNs of the present pages, 0 = none; with
			       * SAVED_KSM when the page mapped a KSM page then */
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

/* An entry of the command table (ksmwork.c). */
struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
};

/* ---- ksmwork.c: the command loop and the verdict ---- */
extern int corruption_seen;
int exit_status(void);
int serve(FILE *in);

/* ---- ksmwork_proto.c: the reply line (REPLY_MAX bytes, sent by send_reply) ---- */
extern char reply[REPLY_MAX];
extern size_t reply_len;
extern int out_fd;
__attribute__((format(printf, 1, 2))) void app(const char *fmt, ...);
__attribute__((format(printf, 1, 2))) int ok(const char *fmt, ...);
__attribute__((format(printf, 1, 2))) int err(const char *fmt, ...);
void send_reply(void);
const char *errno_name(int e);
const char *errstr(int e);
void app_errno_counts(const size_t *counts);
long long now_us(void);
long now_ms(void);
int parse_u64(const char *s, uint64_t *out);
int parse_node(const char *cmd, const char *s, int *node);
void nodemask_set(unsigned long *mask, int node);

/* ---- ksmwork_content.c ---- */
extern size_t page_size;
uint64_t mix64(uint64_t z);
uint64_t nonzero(uint64_t k);
uint64_t seedkey(uint64_t seed);
struct pexp page_expect(const struct region *r, size_t p);
void fill_page(unsigned char *dst, struct pexp e);
long check_page(const unsigned char *pg, struct pexp e, unsigned char *expected);
void init_content(void);

/* ---- ksmwork_regions.c ---- */
extern struct region regions[MAX_REGIONS];
struct region *find_region(const char *name);
struct region *need_region(const char *cmd, const char *name);
int parse_range(const char *cmd, const struct region *r, int argc, char **argv, int i,
		size_t *first, size_t *count);
int parse_page(const char *cmd, const struct region *r, const char *s, size_t *page);
int cmd_alloc(int argc, char **argv);
int cmd_free(int argc, char **argv);
int cmd_madvise(int argc, char **argv);
int cmd_mlock(int argc, char **argv);
int cmd_mlockall(int argc, char **argv);
int cmd_hugetlb(int argc, char **argv);
int cmd_regions(int argc, char **argv);

/* ---- ksmwork_data.c ---- */
int cmd_verify(int argc, char **argv);
int cmd_write(int argc, char **argv);
int cmd_corrupt(int argc, char **argv);
int cmd_touch(int argc, char **argv);
int cmd_churn(int argc, char **argv);
int cmd_peek(int argc, char **argv);
int cmd_poke(int argc, char **argv);
int cmd_hole(int argc, char **argv);
int cmd_punch(int argc, char **argv);

/* ---- ksmwork_numa.c ---- */
int cmd_nodes(int argc, char **argv);
int cmd_move(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_policy(int argc, char **argv);
int cmd_mbind(int argc, char **argv);

/* ---- ksmwork_ksmpages.c ---- */
/* Which of a range's pages map a KSM page, and how that was told (see ksmwork_ksmpages.c). */
struct ksm_view {
	size_t n;            /* pages in the range */
	uint64_t *pm;        /* their pagemap entries */
	uint64_t *flags;     /* their PFNs' kpageflags, ~0 unreadable */
	unsigned char *ksm;  /* 1: maps a KSM page (meaningful when known == 2) */
	int known;           /* 2 page by page, 1 only the count, 0 not even that */
	int trusted;         /* KPF_KSM believed */
	int settled;         /* the pagemap did not change while it was read */
	size_t count;        /* pages mapping a KSM page (known >= 1) */
	size_t proven;       /* of them proven by the maps method */
	long smaps;          /* KSM pages of the span's VMAs by smaps' "KSM:", -1 no field */
	size_t disagree;     /* pages (or counts) where the methods contradict each other */
	const char *by;      /* the method: kpageflags,checked:..., maps+smaps, smaps, maps */
};
int kpf_ksm_lies_on(int kfd);
uint64_t kpage_read(int fd, uint64_t pfn);
int ksm_view(const char *who, const struct region *r, size_t first, size_t n,
	     struct ksm_view *v);
void ksm_view_free(struct ksm_view *v);
void app_ksm_view(const struct ksm_view *v, const char *unknown_if_count, const char *unknown);
int ksm_view_refuse(const char *who, struct ksm_view *v);
int probe_is_ksm(int pmfd, int kfd, int cfd, uintptr_t addr);
int cmd_kpftrust(int argc, char **argv);

/* ---- ksmwork_pageinfo.c ---- */
int cmd_smaps(int argc, char **argv);
int cmd_pageflags(int argc, char **argv);
int cmd_kpf(int argc, char **argv);
int cmd_moved(int argc, char **argv);
int cmd_kpcg(int argc, char **argv);

/* ---- ksmwork_sites.c ---- */
int cmd_idle(int argc, char **argv);

/* ---- ksmwork_abi.c ---- */
int cmd_uffd(int argc, char **argv);
int cmd_collapse(int argc, char **argv);
int cmd_prctl(int argc, char **argv);

/* ---- ksmwork_children.c ---- */
extern struct child children[MAX_CHILDREN];
extern int nchildren;
extern int is_child;
void drop_child(int i);
pid_t fork_one(pid_t parent);
int child_reply(int i, int sent, char *buf, size_t len, int *st, int *reaped);
int cmd_fork(int argc, char **argv);
int cmd_children(int argc, char **argv);
int cmd_pids(int argc, char **argv);

/* ---- ksmwork_race.c ---- */
int cmd_race(int argc, char **argv);
int cmd_killwrite(int argc, char **argv);
int cmd_exitwhen(int argc, char **argv);
int cmd_kidsexitwhen(int argc, char **argv);

/* ---- ksmwork_vma.c ---- */
int cmd_reserve(int argc, char **argv);
int cmd_vmop(int argc, char **argv);

/* ---- ksmwork_oneshot.c ---- */
int oneshot(int argc, char **argv);

#endif
