/* ksmwork: the interfaces that reach KSM pages from outside KSM (harness/fuzz's site
 * operations): idle page tracking on one page of a region. */
#include "ksmwork.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#define IDLE_BITMAP "/sys/kernel/mm/page_idle/bitmap"
#define KPF_LRU 5

/* The PFN backing page P of region R (0: not present, or hidden without CAP_SYS_ADMIN). */
static uint64_t page_pfn(const struct region *r, size_t p)
{
	uint64_t pm = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd < 0)
		return 0;
	off_t off = (off_t)((uintptr_t)(r->addr + p * page_size) / page_size * sizeof(pm));
	ssize_t got = pread(fd, &pm, sizeof(pm), off);
	close(fd);
	return got == sizeof(pm) && (pm & PM_PRESENT) ? pm & PM_PFN_MASK : 0;
}

/* "idle NAME PAGE": mark the page's PFN idle in /sys/kernel/mm/page_idle/bitmap (the kernel
 * walks every mapping of the page through rmap, a KSM page's through its stable node, to
 * clear their young bits) and read the bit straight back: nothing touched the page between,
 * so it must read idle, unless the kernel had it off the LRU (page_idle_get_page skips
 * those: a page in a per-cpu LRU batch, or being migrated), which lru= tells from
 * /proc/kpageflags right after. The bitmap is read and written in 8-byte words.
 * -> ok idle pfn=P idle=0|1 lru=0|1|-1 ksm=0|1|-1 (-1: kpageflags unreadable; pfn=0: the
 *    page is not present, nothing done) */
int cmd_idle(int argc, char **argv)
{
	size_t p;
	if (argc != 3)
		return err("usage: idle NAME PAGE");
	struct region *r = need_region("idle", argv[1]);
	if (!r || parse_page("idle", r, argv[2], &p))
		return -1;
	uint64_t pfn = page_pfn(r, p);
	if (!pfn)
		return ok("idle pfn=0 idle=0 lru=-1 ksm=-1");
	int fd = open(IDLE_BITMAP, O_RDWR);
	if (fd < 0)
		return err("idle: %s: %s", IDLE_BITMAP, errstr(errno));
	off_t off = (off_t)(pfn / 64 * sizeof(uint64_t));
	uint64_t bit = 1ULL << (pfn % 64), word = bit;
	if (pwrite(fd, &word, sizeof(word), off) != sizeof(word)) {
		int e = errno;
		close(fd);
		return err("idle: write %s at pfn %#llx: %s", IDLE_BITMAP, (unsigned long long)pfn,
			   errstr(e));
	}
	word = 0;
	ssize_t got = pread(fd, &word, sizeof(word), off);
	int e = errno;
	close(fd);
	if (got != sizeof(word))
		return err("idle: read %s at pfn %#llx: %s", IDLE_BITMAP, (unsigned long long)pfn,
			   errstr(e));
	uint64_t flags = 0;
	int lru = -1, ksm = -1, kfd = open("/proc/kpageflags", O_RDONLY);
	if (kfd >= 0 && pread(kfd, &flags, sizeof(flags), (off_t)(pfn * sizeof(flags))) ==
	    sizeof(flags))
		lru = (flags >> KPF_LRU) & 1, ksm = (flags >> KPF_KSM) & 1;
	if (kfd >= 0)
		close(kfd);
	return ok("idle pfn=%llu idle=%d lru=%d ksm=%d", (unsigned long long)pfn,
		  (word & bit) != 0, lru, ksm);
}
