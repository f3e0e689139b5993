/* ksmwork: the region table and the commands that make, free and advise regions. */
#include "ksmwork.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

const char *const kind_names[] = {"same", "unique", "zero", "lastbyte", "half"};
struct region regions[MAX_REGIONS];

struct region *find_region(const char *name)
{
	for (int i = 0; i < MAX_REGIONS; i++)
		if (regions[i].used && strcmp(regions[i].name, name) == 0)
			return &regions[i];
	return NULL;
}

struct region *need_region(const char *cmd, const char *name)
{
	struct region *r = find_region(name);
	if (!r)
		err("%s: no region '%s'", cmd, name);
	return r;
}

/* Optional "FIRST COUNT" at argv[i], argv[i+1]; default the whole region. */
int parse_range(const char *cmd, const struct region *r, int argc, char **argv, int i,
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

int parse_page(const char *cmd, const struct region *r, const char *s, size_t *page)
{
	uint64_t p;
	if (parse_u64(s, &p) || p >= r->pages)
		return err("%s: bad page '%s' (region '%s' has %zu pages)", cmd, s, r->name, r->pages);
	*page = p;
	return 0;
}

/* ---- region commands ---- */

int cmd_alloc(int argc, char **argv)
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

int cmd_free(int argc, char **argv)
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

#ifndef MADV_HWPOISON
#define MADV_HWPOISON 100
#endif
#ifndef MADV_SOFT_OFFLINE
#define MADV_SOFT_OFFLINE 101
#endif

int cmd_madvise(int argc, char **argv)
{
	static const struct { const char *name; int advice; } advs[] = {
		{"merge", MADV_MERGEABLE},	{"unmerge", MADV_UNMERGEABLE},
		{"hugepage", MADV_HUGEPAGE},	{"nohugepage", MADV_NOHUGEPAGE},
		{"pageout", MADV_PAGEOUT},	{"cold", MADV_COLD},
		{"willneed", MADV_WILLNEED},
		/* memory-failure.c (CONFIG_MEMORY_FAILURE, CAP_SYS_ADMIN): poison is for good */
		{"hwpoison", MADV_HWPOISON},	{"soft_offline", MADV_SOFT_OFFLINE},
	};
	size_t first = 0, count = 0;
	if (argc < 3)
		return err("usage: madvise NAME merge|unmerge|hugepage|nohugepage|pageout|cold|willneed"
			   "|hwpoison|soft_offline [FIRST COUNT]");
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

int cmd_mlock(int argc, char **argv)
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

int cmd_mlockall(int argc, char **argv)
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

/* hugetlb NAME PAGES same:SEED: a MAP_HUGETLB region (PAGES a multiple of 2 MiB). */
int cmd_hugetlb(int argc, char **argv)
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

int cmd_regions(int argc, char **argv)
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
