/* ksmwork: which pages are KSM pages, on every kernel.
 *
 * /proc/kpageflags' KPF_KSM answers directly, but from 6.10 (dee3d0bef2b0, "proc: rewrite
 * stable_page_flags()") until 81401cebfc15 ("fs/proc: fix KPF_KSM reported for all anonymous
 * pages", 7.2-rc) it is set on every anonymous page. Two other answers the kernel guarantees:
 *   maps   a private anonymous page that is not a KSM page is mapped only where fork put it:
 *          at one address of one mm and, in the mms forked from it, at that same address.
 *          So a PFN this mm maps at two addresses, or that /proc/kpagecount says is mapped
 *          more often than this process and its live children can account for, is a KSM
 *          page. It proves, never disproves: a KSM page left with a single mapping (or mapped
 *          only by this process's family) looks like any page.
 *   smaps  /proc/self/smaps' "KSM:" (6.6+; PageKsm/folio_test_ksm, which never had the bug)
 *          counts a VMA's pages that map a KSM page, exactly, but per VMA.
 * ksm_view() takes one settled look at the VMAs around a range (pagemap, then the flags,
 * counts and smaps, then pagemap again, unchanged) and says which pages map a KSM page and
 * by which method: kpageflags where it can be believed (checked against the other two),
 * else the maps proof completed by smaps' count. The zero page (also what use_zero_pages
 * maps) is never a KSM page.
 */
#include "ksmwork.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* -1 not checked yet, 0 KPF_KSM believed, 1 not (see kpf_ksm_lies_on); forced: by kpftrust */
static int kpf_ksm_lies = -1, kpf_forced;

/* Checked once, on a page of our own that KSM never looked at. */
int kpf_ksm_lies_on(int kfd)
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

/* "kpftrust [no]": believe KPF_KSM even so (the test of that ABI), or never (the other
 * methods alone, as where it lies: their own tests) */
int cmd_kpftrust(int argc, char **argv)
{
	if (argc > 2 || (argc == 2 && strcmp(argv[1], "no") != 0))
		return err("usage: kpftrust [no]");
	kpf_ksm_lies = argc == 2;
	kpf_forced = 1;
	return ok("%s", argc == 2 ? "distrusted" : "trusted");
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* One u64 of a /proc/kpage* file, or ~0 when unreadable. */
uint64_t kpage_read(int fd, uint64_t pfn)
{
	uint64_t v = 0;
	if (fd < 0 || !pfn || pread(fd, &v, sizeof(v), (off_t)(pfn * sizeof(v))) != sizeof(v))
		return ~0ULL;
	return v;
}

/* Pagemap entries of [addr, addr + n pages) into pm; 0 or -1 (errno set). */
static int read_pagemap(int pmfd, uintptr_t addr, size_t n, uint64_t *pm)
{
	ssize_t want = (ssize_t)(n * sizeof(uint64_t));
	return pread(pmfd, pm, (size_t)want, (off_t)(addr / page_size * sizeof(uint64_t))) == want
		       ? 0 : -1;
}

/* The VMAs of /proc/self/smaps overlapping [lo, hi): their span and the sum of their "KSM:"
 * in pages (-1: the kernel has no such field, before 6.6). 0, or -1 with errno set. */
static int smaps_span(uintptr_t lo, uintptr_t hi, uintptr_t *slo, uintptr_t *shi, long *ksm)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f)
		return -1;
	char line[512];
	int in = 0, seen = 0;
	unsigned long kb;
	*slo = lo, *shi = hi, *ksm = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = s < hi && e > lo;
			if (in) {
				*slo = s < *slo ? s : *slo;
				*shi = e > *shi ? e : *shi;
			}
			continue;
		}
		if (in && sscanf(line, "KSM: %lu kB", &kb) == 1) {
			*ksm += (long)(kb * 1024 / page_size);
			seen = 1;
		}
	}
	fclose(f);
	if (!seen)
		*ksm = -1;
	return 0;
}

/* PFNs (sorted) that this mm maps at two or more addresses of its regions, zero page aside. */
static uint64_t *mapped_twice(int pmfd, uint64_t zero_pfn, size_t *n)
{
	size_t total = 0, got = 0;
	for (int i = 0; i < MAX_REGIONS; i++)
		total += regions[i].used ? regions[i].pages : 0;
	uint64_t *all = malloc((total + 1) * sizeof(uint64_t)), *twice = all;
	if (!all)
		return NULL;
	for (int i = 0; i < MAX_REGIONS; i++) {
		const struct region *r = &regions[i];
		size_t base = got;
		if (!r->used || read_pagemap(pmfd, (uintptr_t)r->addr, r->pages, all + base) != 0)
			continue;
		for (size_t p = 0; p < r->pages; p++) {  /* compacted in place: got <= base + p */
			uint64_t e = all[base + p];
			if ((e & PM_PRESENT) && (e & PM_PFN_MASK) && (e & PM_PFN_MASK) != zero_pfn)
				all[got++] = e & PM_PFN_MASK;
		}
	}
	qsort(all, got, sizeof(uint64_t), cmp_u64);
	*n = 0;
	for (size_t i = 1; i < got; i++)
		if (all[i] == all[i - 1] && (*n == 0 || twice[*n - 1] != all[i]))
			twice[(*n)++] = all[i];
	return all;
}

/* The zero page's PFN (a read fault on a fresh private page maps it), 0 when unknown. */
static uint64_t zero_pfn_of(int pmfd)
{
	static uint64_t zero;
	if (!zero) {
		volatile char *p = mmap(NULL, page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		uint64_t pm = 0;
		if (p != MAP_FAILED) {
			(void)p[0];
			if (read_pagemap(pmfd, (uintptr_t)p, 1, &pm) == 0 && (pm & PM_PRESENT))
				zero = pm & PM_PFN_MASK;
			munmap((void *)p, page_size);
		}
	}
	return zero;
}

void ksm_view_free(struct ksm_view *v)
{
	free(v->pm), free(v->flags), free(v->ksm);
	v->pm = v->flags = NULL, v->ksm = NULL;
}

/* One look at the VMAs around [addr, addr + n pages): the pagemap of the whole span (a KSM
 * page elsewhere in a VMA counts in its smaps line), the flags and counts of its PFNs. */
static int look(int pmfd, int kfd, int cfd, uintptr_t slo, size_t span, uint64_t *pm,
		uint64_t *flags, uint64_t *count)
{
	if (read_pagemap(pmfd, slo, span, pm) != 0)
		return -1;
	for (size_t i = 0; i < span; i++) {
		uint64_t pfn = (pm[i] & PM_PRESENT) ? pm[i] & PM_PFN_MASK : 0;
		flags[i] = kpage_read(kfd, pfn);
		count[i] = kpage_read(cfd, pfn);
	}
	return 0;
}

int ksm_view(const char *who, const struct region *r, size_t first, size_t n,
	     struct ksm_view *v)
{
	memset(v, 0, sizeof(*v));
	uintptr_t lo = (uintptr_t)r->addr + first * page_size, hi = lo + n * page_size, slo, shi;
	int pmfd = open("/proc/self/pagemap", O_RDONLY);
	if (pmfd < 0)
		return err("%s: /proc/self/pagemap: %s", who, errstr(errno));
	int kfd = open("/proc/kpageflags", O_RDONLY), cfd = open("/proc/kpagecount", O_RDONLY);
	uint64_t zero = zero_pfn_of(pmfd), *pm = NULL, *flags = NULL, *count = NULL, *again = NULL;
	uint64_t *twice = NULL;
	size_t ntwice = 0, span = 0;
	long smaps_ksm = -1;
	int rc = -1, settled = 0;
	v->trusted = kfd >= 0 && !kpf_ksm_lies_on(kfd);
	/* mappings fork can explain: this process and its live children; a child cannot know
	 * its siblings, so it proves by two addresses only */
	uint64_t family = is_child ? 0 : 1 + (uint64_t)nchildren;
	for (int attempt = 0; attempt < 3 && !settled; attempt++) {
		if (smaps_span(lo, hi, &slo, &shi, &smaps_ksm) != 0) {
			err("%s: /proc/self/smaps: %s", who, errstr(errno));
			goto out;
		}
		size_t want = (shi - slo) / page_size;
		if (want != span) {
			free(pm), free(flags), free(count), free(again);
			span = want;
			pm = malloc(span * sizeof(uint64_t)), flags = malloc(span * sizeof(uint64_t));
			count = malloc(span * sizeof(uint64_t)), again = malloc(span * sizeof(uint64_t));
			if (!pm || !flags || !count || !again) {
				err("%s: no memory for %zu pages", who, span);
				goto out;
			}
		}
		free(twice);
		if (look(pmfd, kfd, cfd, slo, span, pm, flags, count) != 0 ||
		    !(twice = mapped_twice(pmfd, zero, &ntwice)) ||
		    smaps_span(lo, hi, &slo, &shi, &smaps_ksm) != 0 ||
		    read_pagemap(pmfd, slo, span, again) != 0) {
			err("%s: reading the pages: %s", who, errstr(errno));
			goto out;
		}
		settled = (shi - slo) / page_size == span &&
			  memcmp(pm, again, span * sizeof(uint64_t)) == 0;
	}
	size_t off = (lo - slo) / page_size, span_kpf = 0, span_maps = 0;
	v->n = n;
	v->pm = malloc(n * sizeof(uint64_t)), v->flags = malloc(n * sizeof(uint64_t));
	v->ksm = malloc(n);
	if (!v->pm || !v->flags || !v->ksm) {
		err("%s: no memory for %zu pages", who, n);
		goto out;
	}
	unsigned char *proven = malloc(span);
	if (!proven) {
		err("%s: no memory for %zu pages", who, span);
		goto out;
	}
	for (size_t i = 0; i < span; i++) {
		uint64_t pfn = (pm[i] & PM_PRESENT) ? pm[i] & PM_PFN_MASK : 0;
		int zeropage = !pfn || pfn == zero || (flags[i] != ~0ULL &&
						      (flags[i] >> KPF_ZERO_PAGE) & 1);
		proven[i] = !zeropage && (bsearch(&pfn, twice, ntwice, sizeof(uint64_t), cmp_u64) ||
					  (family && count[i] != ~0ULL && count[i] > family));
		span_maps += proven[i];
		span_kpf += pfn && flags[i] != ~0ULL && (flags[i] >> KPF_KSM) & 1;
		if (i >= off && i < off + n) {
			v->pm[i - off] = pm[i];
			v->flags[i - off] = flags[i];
			v->proven += proven[i];
			v->ksm[i - off] = v->trusted ? pfn && flags[i] != ~0ULL &&
							   (flags[i] >> KPF_KSM) & 1
						     : proven[i];
			/* kpageflags believed: the maps proof must agree with it page by page
			 * (unless believed by order, to test it: "kpftrust") */
			v->disagree += v->trusted && !kpf_forced && proven[i] && !v->ksm[i - off];
		}
	}
	free(proven);
	v->smaps = smaps_ksm;
	if (v->trusted && kpf_forced) {
		v->by = "kpageflags,trusted";
		v->known = 2;
	} else if (v->trusted) {
		v->by = smaps_ksm >= 0 ? "kpageflags,checked:maps+smaps" : "kpageflags,checked:maps";
		v->known = 2;
		if (smaps_ksm >= 0 && (long)span_kpf != smaps_ksm)
			v->disagree += 1;
	} else if (smaps_ksm >= 0 && (long)span_maps == smaps_ksm) {
		v->by = "maps+smaps";  /* every KSM page of the span proven one by one */
		v->known = 2;
	} else if (smaps_ksm > (long)span_maps && off == 0 && n == span) {
		v->by = "smaps";       /* the range is whole VMAs: smaps' count is its count */
		v->known = 1;
		v->count = (size_t)smaps_ksm;
	} else {
		v->by = smaps_ksm >= 0 ? "maps+smaps" : "maps";
		v->known = 0;          /* some KSM page of the span not identified */
		v->disagree += smaps_ksm >= 0 && smaps_ksm < (long)span_maps;
	}
	if (v->known == 2) {
		v->count = 0;
		for (size_t i = 0; i < n; i++)
			v->count += v->ksm[i];
	}
	v->settled = settled;
	rc = 0;
out:
	if (rc != 0)
		ksm_view_free(v);
	free(pm), free(flags), free(count), free(again), free(twice);
	close(pmfd);
	if (kfd >= 0)
		close(kfd);
	if (cfd >= 0)
		close(cfd);
	return rc;
}

/* How a ksm_view was judged, for a reply: ksm_by=... ksm_maps=P ksm_smaps=S [ksm_unknown=..] */
void app_ksm_view(const struct ksm_view *v, const char *unknown_if_count, const char *unknown)
{
	app(" ksm_by=%s ksm_maps=%zu ksm_smaps=%ld", v->by, v->proven, v->smaps);
	if (v->known == 1)
		app(" ksm_unknown=%s", unknown_if_count);
	else if (v->known == 0)
		app(" ksm_unknown=%s", unknown);
}

/* The methods disagreeing on a settled look is a finding (a kernel bug or ours), never a
 * count to trust. On a look the pagemap moved under three times (ksmd or migration busy
 * right then) it is the race: kpageflags, where believed, answers as it always did; the
 * other methods' answer is dropped (ksm_unknown). */
int ksm_view_refuse(const char *who, struct ksm_view *v)
{
	if (!v->disagree)
		return 0;
	if (!v->settled) {
		v->known = v->trusted ? v->known : 0;
		return 0;
	}
	return err("%s: which pages are KSM pages: the methods disagree (%zu contradictions; "
		   "ksm_by=%s ksm=%zu ksm_maps=%zu ksm_smaps=%ld settled=%d)", who, v->disagree,
		   v->by, v->count, v->proven, v->smaps, v->settled);
}

/* Whether the page at addr of process pmfd's mm maps a KSM page, for race's probe of another
 * process: kpageflags where believed, else /proc/kpagecount > 1 (the probed process must
 * have no fork children, which the host ensures). 1 KSM, 0 not, -1 unknown. */
int probe_is_ksm(int pmfd, int kfd, int cfd, uintptr_t addr)
{
	uint64_t pm = 0;
	if (read_pagemap(pmfd, addr, 1, &pm) != 0 || !(pm & PM_PRESENT) || !(pm & PM_PFN_MASK))
		return -1;
	uint64_t pfn = pm & PM_PFN_MASK, flags = kpage_read(kfd, pfn);
	if (flags == ~0ULL)
		return -1;
	if ((flags >> KPF_ZERO_PAGE) & 1)
		return 0;
	if (!kpf_ksm_lies_on(kfd))
		return (flags >> KPF_KSM) & 1;
	uint64_t count = kpage_read(cfd, pfn);
	return count == ~0ULL ? -1 : count > 1;
}
