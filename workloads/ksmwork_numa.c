/* ksmwork: NUMA placement: where pages are, move_pages, migrate_pages, mempolicy, mbind. */
#include "ksmwork.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

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

int cmd_nodes(int argc, char **argv)
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

int cmd_move(int argc, char **argv)
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

int cmd_migrate(int argc, char **argv)
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

int cmd_policy(int argc, char **argv)
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

/* mbind(2) MPOL_BIND to NODE over the region with MPOL_MF_MOVE, and MPOL_MF_MOVE_ALL with
 * "all" (without it a page mapped more than once, as a KSM page is, stays where it is). No
 * MPOL_MF_STRICT: it fails with EIO whenever one page is mapped at several addresses of the
 * range (the second one cannot be isolated again), even when the page moved: "nodes" says
 * where the pages went. */
int cmd_mbind(int argc, char **argv)
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
