/* ksmwork: the reply line, errno names, clocks, number and node arguments. */
#include "ksmwork.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

char reply[REPLY_MAX];
size_t reply_len;
int out_fd = 1;

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

__attribute__((format(printf, 1, 2))) void app(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vapp(fmt, ap);
	va_end(ap);
}

__attribute__((format(printf, 1, 2))) int ok(const char *fmt, ...)
{
	va_list ap;
	reply_len = 0;
	app("ok ");
	va_start(ap, fmt);
	vapp(fmt, ap);
	va_end(ap);
	return 0;
}

__attribute__((format(printf, 1, 2))) int err(const char *fmt, ...)
{
	va_list ap;
	reply_len = 0;
	app("err ");
	va_start(ap, fmt);
	vapp(fmt, ap);
	va_end(ap);
	return -1;
}

void send_reply(void)
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

const char *errno_name(int e)
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
const char *errstr(int e)
{
	static char buf[128];
	const char *n = errno_name(e);
	if (n)
		snprintf(buf, sizeof(buf), "%s (%s)", strerror(e), n);
	else
		snprintf(buf, sizeof(buf), "%s (errno %d)", strerror(e), e);
	return buf;
}

void app_errno_counts(const size_t *counts)
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

long long now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* ---- argument parsing ---- */

int parse_u64(const char *s, uint64_t *out)
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

int parse_node(const char *cmd, const char *s, int *node)
{
	uint64_t n;
	if (parse_u64(s, &n) || n >= NODEMASK_BITS)
		return err("%s: bad node '%s'", cmd, s);
	*node = (int)n;
	return 0;
}

void nodemask_set(unsigned long *mask, int node)
{
	memset(mask, 0, NODEMASK_LONGS * sizeof(unsigned long));
	mask[node / (8 * sizeof(unsigned long))] |= 1UL << (node % (8 * sizeof(unsigned long)));
}
