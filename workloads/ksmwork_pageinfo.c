/* ksmwork: what backs the pages: smaps, pagemap, kpageflags, kpagecgroup (which pages are KSM
 * pages: ksmwork_ksmpages.c). */
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
	long ksm = -1;  /* "KSM:" from 6.6 on */
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
		else if (sscanf(line, "KSM: %lu kB", &val) == 1)
			ksm = (ksm < 0 ? 0 : ksm) + (long)val;
		else if (strncmp(line, "VmFlags:", 8) == 0 && strstr(line, " mg"))
			mergeable++;
	}
	fclose(f);
	return ok("vmas=%d rss_kb=%lu anon_kb=%lu anonhuge_kb=%lu swap_kb=%lu locked_kb=%lu "
		  "mergeable=%d ksm_kb=%ld", vmas, rss, anon, huge, swap, locked, mergeable, ksm);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* "pageflags NAME [FIRST COUNT]": what backs the pages; which map a KSM page by ksm_view. */
int cmd_pageflags(int argc, char **argv)
{
	size_t first = 0, count = 0, present = 0, swapped = 0, thp = 0, zero = 0, nopfn = 0;
	if (argc != 2 && argc != 4)
		return err("usage: pageflags NAME [FIRST COUNT]");
	struct region *r = need_region("pageflags", argv[1]);
	if (!r || parse_range("pageflags", r, argc, argv, 2, &first, &count))
		return -1;
	struct ksm_view v;
	if (ksm_view("pageflags", r, first, count, &v) != 0)
		return -1;
	uint64_t *pfns = malloc(count * sizeof(uint64_t));
	if (!pfns || ksm_view_refuse("pageflags", &v)) {
		int refused = pfns != NULL;
		free(pfns), ksm_view_free(&v);
		return refused ? -1 : err("pageflags: no memory for %zu entries", count);
	}
	size_t nksm = 0;
	for (size_t i = 0; i < count; i++) {
		uint64_t pfn = v.pm[i] & PM_PFN_MASK, flags = v.flags[i];
		if (v.pm[i] & PM_SWAP)
			swapped++;
		if (!(v.pm[i] & PM_PRESENT))
			continue;
		present++;
		if (!pfn || flags == ~0ULL) {
			nopfn++;
			continue;
		}
		if (v.ksm[i])
			pfns[nksm++] = pfn;
		thp += (flags >> KPF_THP) & 1;
		zero += (flags >> KPF_ZERO_PAGE) & 1;
	}
	qsort(pfns, nksm, sizeof(uint64_t), cmp_u64);
	size_t distinct = 0;
	for (size_t i = 0; i < nksm; i++)
		distinct += i == 0 || pfns[i] != pfns[i - 1];
	ok("present=%zu swapped=%zu ksm=%zu ksmpfns=%zu thp=%zu zero=%zu nopfn=%zu", present,
	   swapped, v.count, distinct, thp, zero, nopfn);
	app_ksm_view(&v, "ksmpfns", "ksm,ksmpfns");
	free(pfns), ksm_view_free(&v);
	return 0;
}

/* "kpf NAME save" remembers the PFNs of the region's present pages (and which mapped a KSM
 * page then); "kpf NAME" reads those PFNs' /proc/kpageflags again, mapped or not: whether the
 * very pages that were mapped are now KSM pages in swapcache (a page swapped out but not yet
 * freed). Where KPF_KSM lies an unmapped page cannot be proven KSM: ksm_by=saved counts a
 * PFN that was a KSM page when saved and is still an anonymous page, as the same page. */
int cmd_kpf(int argc, char **argv)
{
	size_t saved = 0, ksm = 0, swapcache = 0, both = 0, mapped = 0, unreadable = 0;
	if (argc != 2 && !(argc == 3 && strcmp(argv[2], "save") == 0))
		return err("usage: kpf NAME [save]");
	struct region *r = need_region("kpf", argv[1]);
	if (!r)
		return -1;
	if (argc == 3) {
		struct ksm_view v;
		if (ksm_view("kpf", r, 0, r->pages, &v) != 0)
			return -1;
		if (ksm_view_refuse("kpf", &v)) {
			ksm_view_free(&v);
			return -1;
		}
		uint64_t *pfns = malloc(r->pages * sizeof(uint64_t));
		if (!pfns) {
			ksm_view_free(&v);
			return err("kpf: no memory for %zu entries", r->pages);
		}
		for (size_t p = 0; p < r->pages; p++) {
			pfns[p] = (v.pm[p] & PM_PRESENT) ? v.pm[p] & PM_PFN_MASK : 0;
			pfns[p] |= pfns[p] && v.known == 2 && v.ksm[p] ? SAVED_KSM : 0;
			saved += pfns[p] != 0;
		}
		free(r->saved_pfns);
		r->saved_pfns = pfns;
		ok("saved=%zu", saved);
		app_ksm_view(&v, "ksm", "ksm");
		ksm_view_free(&v);
		return 0;
	}
	if (!r->saved_pfns)
		return err("kpf: nothing saved for '%s' (kpf %s save)", r->name, r->name);
	int kfd = open("/proc/kpageflags", O_RDONLY);
	if (kfd < 0)
		return err("kpf: /proc/kpageflags: %s", errstr(errno));
	int lies = kpf_ksm_lies_on(kfd);
	for (size_t p = 0; p < r->pages; p++) {
		uint64_t pfn = r->saved_pfns[p] & PM_PFN_MASK, flags;
		if (!pfn)
			continue;
		saved++;
		if ((flags = kpage_read(kfd, pfn)) == ~0ULL) {
			unreadable++;
			continue;
		}
		int k = lies ? (r->saved_pfns[p] & SAVED_KSM) && (flags >> KPF_ANON) & 1
			     : (flags >> KPF_KSM) & 1;
		int sc = (flags >> KPF_SWAPCACHE) & 1;
		ksm += k;
		swapcache += sc;
		both += k && sc;
		mapped += (flags >> KPF_MMAP) & 1;
	}
	close(kfd);
	return ok("saved=%zu ksm=%zu swapcache=%zu ksm_swapcache=%zu mapped=%zu unreadable=%zu "
		  "ksm_by=%s", saved, ksm, swapcache, both, mapped, unreadable,
		  lies ? "saved" : "kpageflags");
}

/* "moved NAME": the region's PFNs now against those "kpf NAME save" remembered (root). Of the
 * pages present then: same (same PFN), changed (present at another PFN: migrated), gone (not
 * present now); ksm: changed or same pages that now map a KSM page; changed_ksm: both. */
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
	struct ksm_view v;
	if (ksm_view("moved", r, 0, r->pages, &v) != 0)
		return -1;
	if (ksm_view_refuse("moved", &v)) {
		ksm_view_free(&v);
		return -1;
	}
	for (size_t p = 0; p < r->pages; p++) {
		uint64_t was = r->saved_pfns[p] & PM_PFN_MASK, pfn = v.pm[p] & PM_PFN_MASK;
		if (!was)
			continue;
		if (!(v.pm[p] & PM_PRESENT)) {
			gone++;
			continue;
		}
		if (!pfn || v.flags[p] == ~0ULL) {
			unreadable++;
			continue;
		}
		same += pfn == was;
		changed += pfn != was;
		ksm += v.ksm[p];
		changed_ksm += v.ksm[p] && pfn != was;
	}
	ok("same=%zu changed=%zu gone=%zu ksm=%zu changed_ksm=%zu unreadable=%zu", same, changed,
	   gone, v.known == 1 ? v.count : ksm, changed_ksm, unreadable);
	app_ksm_view(&v, "changed_ksm", "ksm,changed_ksm");
	ksm_view_free(&v);
	return 0;
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
