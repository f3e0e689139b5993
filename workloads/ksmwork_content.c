/* ksmwork: page content, a pure function of a 64-bit key (see the top of ksmwork.c). */
#include "ksmwork.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

size_t page_size;
static size_t page_words;
static uint64_t *rconst;    /* the multiplier R, page_words words */
static uint64_t *scratch;   /* expected page cache for scratch_key */
static uint64_t scratch_key;
static unsigned char *zero_page;

uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

uint64_t nonzero(uint64_t k)
{
	return k ? k : 1;
}

uint64_t seedkey(uint64_t seed)
{
	return nonzero(mix64(seed ^ SEEDC));
}

struct pexp page_expect(const struct region *r, size_t p)
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

void fill_page(unsigned char *dst, struct pexp e)
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
long check_page(const unsigned char *pg, struct pexp e, unsigned char *expected)
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

void init_content(void)
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
