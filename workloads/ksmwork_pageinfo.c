/* ksmwork: what backs the pages: smaps, pagemap, kpageflags, kpagecgroup. */
#include "ksmwork.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Sums /proc/self/smaps fields over the VMAs that overlap the region. */
int cmd_smaps(int argc, char **argv)
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
int kpf_ksm_usable(const char *who, int kfd)
{
	if (kpf_ksm_lies_on(kfd))
		return err("%s: kpageflags-ksm-unreliable", who);  /* the host says why */
	return 0;
}

int cmd_kpftrust(int argc, char **argv)
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

int cmd_pageflags(int argc, char **argv)
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
int cmd_kpf(int argc, char **argv)
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

/* "moved NAME": the region's PFNs now against those "kpf NAME save" remembered (root). Of the
 * pages present then: same (same PFN), changed (present at another PFN: migrated), gone (not
 * present now); ksm: changed or same pages whose PFN now is a KSM page; changed_ksm: both. */
int cmd_moved(int argc, char **argv)
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

/* kpcg NAME: the memory cgroups (inode numbers, /proc/kpagecgroup) charged for the region's
 * present pages -> ok present=N cgroups=INO:PAGES,INO:PAGES (at most 8 distinct) */
int cmd_kpcg(int argc, char **argv)
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
