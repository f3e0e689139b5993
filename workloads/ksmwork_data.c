/* ksmwork: what the pages hold: verify, write, corrupt, touch, churn, peek, poke, hole,
 * punch. */
#include "ksmwork.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint64_t write_counter;

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

int cmd_verify(int argc, char **argv)
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

int cmd_write(int argc, char **argv)
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

int cmd_corrupt(int argc, char **argv)
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

int cmd_touch(int argc, char **argv)
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
int cmd_churn(int argc, char **argv)
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

int cmd_peek(int argc, char **argv)
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

static int need_pokes(struct region *r)
{
	if (!r->poke)
		r->poke = calloc(r->pages, sizeof(uint32_t));
	return r->poke ? 0 : err("no memory for %zu page pokes", r->pages);
}

/* poke NAME PAGE OFFSET XOR: XOR one byte of the page, expectation updated (the page then
 * differs from its pattern's page in exactly that byte; the same poke again restores it). */
int cmd_poke(int argc, char **argv)
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
int cmd_hole(int argc, char **argv)
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

/* "punch NAME STRIDE": MADV_DONTNEED every page but each STRIDE-th of a zero-filled region
 * (it still reads zeros, so verify holds): holes in the pageblocks the region used, free pages
 * that compaction's free scanner can migrate into. */
int cmd_punch(int argc, char **argv)
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
