// SPDX-License-Identifier: GPL-2.0
/*
 * kuml in-kernel test agent.
 *
 * With the kernel parameter kuml.agent=<tty> (e.g. ttyS1, hvc1), PID 1 runs
 * kuml_agent_run() from kernel_init() right before the handover to user
 * space, and serves line-based test requests on /dev/<tty> in kernel
 * context.  This lets end-to-end tests of the kuml VMM drive the guest on
 * hosts where guest user space cannot run (PVM-based nested /dev/kvm).
 *
 * Protocol (one request per line, one reply per line; also implemented by
 * the user-space agent script resources/rootfs/uagent.sh):
 *   on start:  KAGENT ready kernel <release>
 *   request:   <seq> <cmd> [args...]
 *   reply:     KAGENT <seq> ok[ <payload>]   |   KAGENT <seq> err <ERRNO-or-message>
 * An empty line re-sends the ready line.  See docs/testing.md.
 */
#define pr_fmt(fmt) "kuml-agent: " fmt

#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/string.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/namei.h>
#include <linux/mount.h>
#include <uapi/linux/mount.h>
#include <linux/security.h>
#include <linux/stat.h>
#include <linux/major.h>
#include <linux/tty.h>
#include <linux/termios.h>
#include <linux/utsname.h>
#include <linux/reboot.h>
#include <linux/sysrq.h>
#include <linux/syscalls.h>
#include <linux/err.h>
#include <linux/delay.h>
#include <linux/sched.h>
#include <linux/ktime.h>
#include <linux/task_work.h>

/* fs/internal.h (no public header; this file is always built in) */
int path_mount(const char *dev_name, struct path *path,
	       const char *type_page, unsigned long flags, void *data_page);
int path_umount(struct path *path, int flags);

#define KA_LINE_MAX	(128 * 1024)		/* longest request line */
#define KA_READ_MAX	(32 * 1024)		/* largest `read` length */
#define KA_OUT_MAX	(2 * KA_READ_MAX + 256)	/* largest reply line */
#define KA_IN_CHUNK	4096
#define KA_FILL_CHUNK	(64 * 1024)
#define KA_OPEN_WAIT_MS	60000			/* wait for /dev/<tty> to appear */
#define KA_MAX_TOKENS	8

static char ka_tty_name[32];

static int __init kuml_agent_setup(char *s)
{
	strscpy(ka_tty_name, s, sizeof(ka_tty_name));
	return 1;
}
__setup("kuml.agent=", kuml_agent_setup);

struct kagent {
	struct file *tty;
	char *line;		/* current request, NUL-terminated */
	size_t line_len;
	bool line_overflow;
	char *in;		/* raw input buffer */
	size_t in_pos, in_len;
	bool after_cr;		/* the last line ended with '\r' */
	char *out;		/* reply being built */
	size_t out_len;
	u8 *data;		/* scratch for file I/O */
	const char *seq;
};

/* ---------- reply building ---------- */

static void ka_out_raw(struct kagent *a, const char *s, size_t n)
{
	if (a->out_len + n > KA_OUT_MAX - 2)
		n = KA_OUT_MAX - 2 - a->out_len;
	memcpy(a->out + a->out_len, s, n);
	a->out_len += n;
}

static __printf(2, 3) void ka_outf(struct kagent *a, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(a->out + a->out_len, KA_OUT_MAX - 2 - a->out_len, fmt, ap);
	va_end(ap);
	if (n > 0)
		a->out_len = min_t(size_t, a->out_len + n, KA_OUT_MAX - 2);
}

static void ka_flush(struct kagent *a)
{
	size_t done = 0;
	loff_t pos = 0;

	a->out[a->out_len++] = '\n';
	while (done < a->out_len) {
		ssize_t n = kernel_write(a->tty, a->out + done, a->out_len - done, &pos);

		if (n <= 0) {
			pr_err("write to %s failed: %zd\n", ka_tty_name, n);
			break;
		}
		done += n;
	}
	a->out_len = 0;
}

static void ka_begin(struct kagent *a, const char *status)
{
	a->out_len = 0;
	ka_outf(a, "KAGENT %s %s", a->seq, status);
}

/* "KAGENT <seq> ok <payload>" */
static __printf(2, 3) void ka_ok(struct kagent *a, const char *fmt, ...)
{
	va_list ap;
	int n;

	ka_begin(a, "ok");
	a->out[a->out_len++] = ' ';
	va_start(ap, fmt);
	n = vsnprintf(a->out + a->out_len, KA_OUT_MAX - 2 - a->out_len, fmt, ap);
	va_end(ap);
	if (n > 0)
		a->out_len = min_t(size_t, a->out_len + n, KA_OUT_MAX - 2);
	ka_flush(a);
}

/* "KAGENT <seq> ok" (no payload) */
static void ka_done(struct kagent *a)
{
	ka_begin(a, "ok");
	ka_flush(a);
}

static void ka_err(struct kagent *a, long err)
{
	char name[32];

	/* %pe gives "-ENOENT" with CONFIG_SYMBOLIC_ERRNAME; drop the '-' */
	snprintf(name, sizeof(name), "%pe", ERR_PTR(err < 0 ? err : -err));
	ka_begin(a, "err");
	ka_outf(a, " %s", name[0] == '-' ? name + 1 : name);
	ka_flush(a);
}

static void ka_errmsg(struct kagent *a, const char *msg)
{
	ka_begin(a, "err");
	ka_outf(a, " %s", msg);
	ka_flush(a);
}

static void ka_ready(struct kagent *a)
{
	a->out_len = 0;
	ka_outf(a, "KAGENT ready kernel %s", utsname()->release);
	ka_flush(a);
}

/* ---------- argument helpers ---------- */

static int ka_u64(const char *s, u64 *v)
{
	return kstrtou64(s, 0, v);
}

/*
 * PID 1 is not a kthread, so fput() queues the final close as task work, which
 * would only run on the return to user space that never comes: run it now, or
 * umount sees a busy file system.
 */
static void ka_close(struct file *f)
{
	fput(f);
	task_work_run();
}

static struct file *ka_open(const char *path, int flags, umode_t mode)
{
	return filp_open(path, flags | O_LARGEFILE, mode);
}

/* ---------- commands ---------- */

static void cmd_read(struct kagent *a, char **tok)
{
	struct file *f;
	u64 off, len;
	size_t got = 0;
	loff_t pos;

	if (ka_u64(tok[1], &off) || ka_u64(tok[2], &len))
		return ka_err(a, -EINVAL);
	if (len > KA_READ_MAX)
		return ka_errmsg(a, "E2BIG read-max-32768");
	f = ka_open(tok[0], O_RDONLY, 0);
	if (IS_ERR(f))
		return ka_err(a, PTR_ERR(f));
	pos = off;
	while (got < len) {
		ssize_t n = kernel_read(f, a->data + got, len - got, &pos);

		if (n < 0) {
			ka_close(f);
			return ka_err(a, n);
		}
		if (n == 0)
			break;
		got += n;
	}
	ka_close(f);
	ka_begin(a, "ok");
	if (got) {
		a->out[a->out_len++] = ' ';
		a->out_len = bin2hex(a->out + a->out_len, a->data, got) - a->out;
	}
	ka_flush(a);
}

static void cmd_write(struct kagent *a, char **tok)
{
	size_t hexlen = strlen(tok[2]), len = hexlen / 2, done = 0;
	struct file *f;
	loff_t pos;
	u64 off;

	if (ka_u64(tok[1], &off) || (hexlen & 1))
		return ka_err(a, -EINVAL);
	if (len > KA_LINE_MAX / 2)
		return ka_err(a, -E2BIG);
	if (hex2bin(a->data, tok[2], len))
		return ka_errmsg(a, "EINVAL bad-hex");
	f = ka_open(tok[0], O_WRONLY | O_CREAT, 0644);
	if (IS_ERR(f))
		return ka_err(a, PTR_ERR(f));
	pos = off;
	while (done < len) {
		ssize_t n = kernel_write(f, a->data + done, len - done, &pos);

		if (n <= 0) {
			ka_close(f);
			return ka_err(a, n ? n : -EIO);
		}
		done += n;
	}
	ka_close(f);
	ka_ok(a, "%zu", done);
}

static void cmd_fill(struct kagent *a, char **tok)
{
	u64 mib, total, done = 0;
	struct file *f;
	ktime_t t0;
	loff_t pos = 0;
	u8 byte;
	int err;

	if (ka_u64(tok[1], &mib) || kstrtou8(tok[2], 16, &byte) || mib > (1ULL << 30))
		return ka_err(a, -EINVAL);
	total = mib << 20;
	memset(a->data, byte, KA_FILL_CHUNK);
	f = ka_open(tok[0], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (IS_ERR(f))
		return ka_err(a, PTR_ERR(f));
	t0 = ktime_get();
	while (done < total) {
		size_t chunk = min_t(u64, KA_FILL_CHUNK, total - done);
		ssize_t n = kernel_write(f, a->data, chunk, &pos);

		if (n <= 0) {
			ka_close(f);
			return ka_err(a, n ? n : -EIO);
		}
		done += n;
		cond_resched();
	}
	err = vfs_fsync(f, 0);
	ka_close(f);
	if (err)
		return ka_err(a, err);
	pr_info("fill %s: %llu bytes in %lld ms\n", tok[0], done,
		ktime_ms_delta(ktime_get(), t0));
	ka_ok(a, "%llu", done);
}

static void cmd_fsync(struct kagent *a, char **tok)
{
	struct file *f = ka_open(tok[0], O_RDONLY, 0);
	int err;

	if (IS_ERR(f))
		return ka_err(a, PTR_ERR(f));
	err = vfs_fsync(f, 0);
	ka_close(f);
	if (err)
		return ka_err(a, err);
	ka_done(a);
}

static void cmd_stat(struct kagent *a, char **tok)
{
	struct kstat st;
	struct path p;
	loff_t size;
	int err;

	err = kern_path(tok[0], LOOKUP_FOLLOW, &p);
	if (err)
		return ka_err(a, err);
	err = vfs_getattr(&p, &st, STATX_BASIC_STATS, AT_STATX_SYNC_AS_STAT);
	path_put(&p);
	if (err)
		return ka_err(a, err);
	size = st.size;
	if (S_ISBLK(st.mode)) {		/* report the device's size */
		struct file *f = ka_open(tok[0], O_RDONLY, 0);

		if (IS_ERR(f))
			return ka_err(a, PTR_ERR(f));
		size = i_size_read(f->f_mapping->host);
		ka_close(f);
	}
	ka_ok(a, "%lld", size);
}

struct ka_ls {
	struct dir_context ctx;
	struct kagent *a;
	bool overflow;
	int count;
};

static bool ka_ls_actor(struct dir_context *ctx, const char *name, int len,
			loff_t off, u64 ino, unsigned int type)
{
	struct ka_ls *ls = container_of(ctx, struct ka_ls, ctx);
	struct kagent *a = ls->a;

	if ((len == 1 && name[0] == '.') ||
	    (len == 2 && name[0] == '.' && name[1] == '.'))
		return true;
	if (a->out_len + len + 2 >= KA_OUT_MAX - 2) {
		ls->overflow = true;
		return false;
	}
	a->out[a->out_len++] = ' ';
	ka_out_raw(a, name, len);
	ls->count++;
	return true;
}

static void cmd_ls(struct kagent *a, char **tok)
{
	struct ka_ls ls = { .ctx.actor = ka_ls_actor, .a = a };
	struct file *f = ka_open(tok[0], O_RDONLY | O_DIRECTORY, 0);
	int err = 0;

	if (IS_ERR(f))
		return ka_err(a, PTR_ERR(f));
	ka_begin(a, "ok");
	for (;;) {	/* like getdents(): until a pass adds nothing */
		loff_t before = f->f_pos;

		err = iterate_dir(f, &ls.ctx);
		if (err || ls.overflow || f->f_pos == before)
			break;
	}
	ka_close(f);
	if (err)
		return ka_err(a, err);
	if (ls.overflow)
		return ka_err(a, -E2BIG);
	ka_flush(a);
}

static void cmd_mkdir(struct kagent *a, char **tok)
{
	struct dentry *d;
	struct path p;
	int err;

	d = kern_path_create(AT_FDCWD, tok[0], &p, LOOKUP_DIRECTORY);
	if (IS_ERR(d))
		return ka_err(a, PTR_ERR(d));
	err = security_path_mkdir(&p, d, 0755);
	if (!err)
		err = vfs_mkdir(mnt_user_ns(p.mnt), d_inode(p.dentry), d, 0755);
	done_path_create(&p, d);
	if (err)
		return ka_err(a, err);
	ka_done(a);
}

static const struct { const char *name; unsigned long set, clear; } ka_mflags[] = {
	{ "ro", MS_RDONLY, 0 },		{ "rw", 0, MS_RDONLY },
	{ "sync", MS_SYNCHRONOUS, 0 },	{ "dirsync", MS_DIRSYNC, 0 },
	{ "noatime", MS_NOATIME, 0 },	{ "relatime", MS_RELATIME, 0 },
	{ "nodev", MS_NODEV, 0 },	{ "noexec", MS_NOEXEC, 0 },
	{ "nosuid", MS_NOSUID, 0 },	{ "remount", MS_REMOUNT, 0 },
	{ "bind", MS_BIND, 0 },		{ "rec", MS_REC, 0 },
};

static void cmd_mount(struct kagent *a, char **tok)
{
	const char *fstype = strcmp(tok[2], "-") ? tok[2] : NULL;
	unsigned long flags = 0;
	char *data, *opts, *o;
	struct path p;
	size_t dl = 0;
	int err, i;

	data = kzalloc(PAGE_SIZE, GFP_KERNEL);
	if (!data)
		return ka_err(a, -ENOMEM);
	opts = strcmp(tok[3], "-") ? tok[3] : NULL;
	while (opts && (o = strsep(&opts, ",")) != NULL) {
		if (!*o)
			continue;
		for (i = 0; i < ARRAY_SIZE(ka_mflags); i++)
			if (!strcmp(o, ka_mflags[i].name))
				break;
		if (i < ARRAY_SIZE(ka_mflags)) {
			flags = (flags | ka_mflags[i].set) & ~ka_mflags[i].clear;
		} else {	/* filesystem-specific: pass through as data */
			dl += scnprintf(data + dl, PAGE_SIZE - dl, "%s%s", dl ? "," : "", o);
		}
	}
	err = kern_path(tok[1], LOOKUP_FOLLOW, &p);
	if (!err) {
		err = path_mount(tok[0], &p, fstype, flags, dl ? data : NULL);
		path_put(&p);
	}
	kfree(data);
	if (err)
		return ka_err(a, err);
	ka_done(a);
}

static void cmd_umount(struct kagent *a, char **tok)
{
	struct path p;
	int err;

	err = kern_path(tok[0], LOOKUP_FOLLOW | LOOKUP_MOUNTPOINT, &p);
	if (!err)
		err = path_umount(&p, 0);	/* drops the path reference */
	task_work_run();	/* the final mntput (fs shutdown) is task work too */
	if (err)
		return ka_err(a, err);
	ka_done(a);
}

/* the window size of the agent's own tty, as TIOCGWINSZ reports it to a program there */
static void cmd_winsize(struct kagent *a)
{
	struct tty_struct *tty = ((struct tty_file_private *)a->tty->private_data)->tty;
	struct winsize ws;

	mutex_lock(&tty->winsize_mutex);
	ws = tty->winsize;
	mutex_unlock(&tty->winsize_mutex);
	ka_ok(a, "%u %u", ws.ws_col, ws.ws_row);
}

/* ---------- dispatch ---------- */

enum ka_next { KA_CONTINUE, KA_EXEC_INIT };

static enum ka_next ka_dispatch(struct kagent *a, char *line)
{
	char *tok[KA_MAX_TOKENS + 1] = { NULL };
	char *cmd, *rest, *p = line;
	int n = 0;

	a->seq = strsep(&p, " ");
	while (p && *p == ' ')
		p++;
	cmd = p ? strsep(&p, " ") : NULL;
	if (!cmd || !*cmd) {
		ka_errmsg(a, "EINVAL missing-command");
		return KA_CONTINUE;
	}
	rest = p ? p : "";	/* untokenised remainder, for echo/panic */
	pr_info("%s %s\n", a->seq, cmd);
	if (!strcmp(cmd, "echo")) {
		if (*rest)
			ka_ok(a, "%s", rest);
		else
			ka_done(a);
		return KA_CONTINUE;
	}
	if (!strcmp(cmd, "panic")) {
		ka_done(a);
		panic("%s", *rest ? rest : "kuml-agent panic");
	}
	while (p && n <= KA_MAX_TOKENS) {
		char *t = strsep(&p, " ");

		if (*t)
			tok[n++] = t;
	}

#define NEED(k) do { if (n != (k)) { ka_errmsg(a, "EINVAL usage"); return KA_CONTINUE; } } while (0)
	if (!strcmp(cmd, "uname")) {
		NEED(0);
		ka_ok(a, "%s %s %s", utsname()->sysname, utsname()->release,
		      utsname()->machine);
	} else if (!strcmp(cmd, "read")) {
		NEED(3);
		cmd_read(a, tok);
	} else if (!strcmp(cmd, "write")) {
		NEED(3);
		cmd_write(a, tok);
	} else if (!strcmp(cmd, "fill")) {
		NEED(3);
		cmd_fill(a, tok);
	} else if (!strcmp(cmd, "fsync")) {
		NEED(1);
		cmd_fsync(a, tok);
	} else if (!strcmp(cmd, "sync")) {
		NEED(0);
		ksys_sync();
		ka_done(a);
	} else if (!strcmp(cmd, "stat")) {
		NEED(1);
		cmd_stat(a, tok);
	} else if (!strcmp(cmd, "ls")) {
		NEED(1);
		cmd_ls(a, tok);
	} else if (!strcmp(cmd, "mkdir")) {
		NEED(1);
		cmd_mkdir(a, tok);
	} else if (!strcmp(cmd, "mount")) {
		NEED(4);
		cmd_mount(a, tok);
	} else if (!strcmp(cmd, "umount")) {
		NEED(1);
		cmd_umount(a, tok);
	} else if (!strcmp(cmd, "winsize")) {
		NEED(0);
		cmd_winsize(a);
	} else if (!strcmp(cmd, "sysrq")) {
		NEED(1);
		if (strlen(tok[0]) != 1) {
			ka_errmsg(a, "EINVAL usage");
		} else if (strchr("bco", tok[0][0])) {	/* these do not return */
			ka_done(a);
			handle_sysrq(tok[0][0]);
		} else {
			handle_sysrq(tok[0][0]);
			ka_done(a);
		}
	} else if (!strcmp(cmd, "poweroff")) {
		NEED(0);
		ka_done(a);
		pr_emerg("poweroff requested\n");
		kernel_power_off();
		kernel_halt();
	} else if (!strcmp(cmd, "reboot")) {
		NEED(0);
		ka_done(a);
		pr_emerg("reboot requested\n");
		kernel_restart(NULL);
	} else if (!strcmp(cmd, "exec-init")) {
		NEED(0);
		ka_done(a);
		return KA_EXEC_INIT;
	} else {
		ka_errmsg(a, "EINVAL unknown-command");
	}
#undef NEED
	return KA_CONTINUE;
}

/* ---------- tty handling ---------- */

static bool ka_is_tty(struct file *f)
{
	struct inode *inode = file_inode(f);
	unsigned int major = imajor(inode);

	if (!S_ISCHR(inode->i_mode))
		return false;
	/* ttyS/tty (4), tty/console/ptmx (5), pts (136-143), hvc (229) */
	return major == TTY_MAJOR || major == TTYAUX_MAJOR || major == 229 ||
	       (major >= UNIX98_PTY_SLAVE_MAJOR &&
		major < UNIX98_PTY_SLAVE_MAJOR + UNIX98_PTY_MAJOR_COUNT);
}

static void ka_make_raw(struct file *f)
{
	struct tty_struct *tty = ((struct tty_file_private *)f->private_data)->tty;
	struct ktermios t;

	down_read(&tty->termios_rwsem);
	t = tty->termios;
	up_read(&tty->termios_rwsem);
	t.c_iflag &= ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL |
		       IXON | IXOFF);
	t.c_oflag &= ~OPOST;
	t.c_lflag &= ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
	t.c_cflag &= ~(CSIZE | PARENB | CRTSCTS);
	t.c_cflag |= CS8 | CREAD | CLOCAL;
	t.c_cc[VMIN] = 1;
	t.c_cc[VTIME] = 0;
	tty_termios_encode_baud_rate(&t, 115200, 115200);
	tty_set_termios(tty, &t);
}

static int ka_mount_devtmpfs(void)
{
	struct dentry *d;
	struct path p;
	int err;

	d = kern_path_create(AT_FDCWD, "/dev", &p, LOOKUP_DIRECTORY);
	if (!IS_ERR(d)) {
		err = vfs_mkdir(mnt_user_ns(p.mnt), d_inode(p.dentry), d, 0755);
		done_path_create(&p, d);
		if (err && err != -EEXIST)
			return err;
	}
	err = kern_path("/dev", LOOKUP_FOLLOW, &p);
	if (err)
		return err;
	err = path_mount("devtmpfs", &p, "devtmpfs", 0, NULL);
	path_put(&p);
	if (!err)
		pr_info("mounted devtmpfs on /dev\n");
	return err;
}

static struct file *ka_open_tty(void)
{
	char path[48];
	struct file *f;
	bool tried_devtmpfs = false;
	int waited = 0;

	snprintf(path, sizeof(path), "/dev/%s", ka_tty_name);
	for (;;) {
		f = filp_open(path, O_RDWR | O_NOCTTY, 0);
		if (!IS_ERR(f))
			break;
		if (PTR_ERR(f) == -ENOENT && !tried_devtmpfs) {
			tried_devtmpfs = true;
			ka_mount_devtmpfs();
			continue;
		}
		if (waited >= KA_OPEN_WAIT_MS) {
			pr_err("cannot open %s: %pe\n", path, f);
			return f;
		}
		msleep(100);
		waited += 100;
	}
	if (!ka_is_tty(f)) {
		pr_err("%s is not a tty\n", path);
		ka_close(f);
		return ERR_PTR(-ENOTTY);
	}
	ka_make_raw(f);
	return f;
}

/* next complete line into a->line; false if the tty needs reopening */
static bool ka_getline(struct kagent *a)
{
	a->line_len = 0;
	a->line_overflow = false;
	for (;;) {
		while (a->in_pos < a->in_len) {
			char c = a->in[a->in_pos++];

			/*
			 * A line ends at '\n', '\r' or "\r\n": a terminal or a telnet
			 * client (CR as Enter) drives the agent as well as a pipe.
			 */
			if (c == '\n' && a->after_cr) {
				a->after_cr = false;
				continue;
			}
			a->after_cr = c == '\r';
			if (c == '\n' || c == '\r') {
				a->line[a->line_len] = '\0';
				return true;
			}
			if (a->line_len < KA_LINE_MAX)
				a->line[a->line_len++] = c;
			else
				a->line_overflow = true;
		}
		{
			loff_t pos = 0;
			ssize_t n = kernel_read(a->tty, a->in, KA_IN_CHUNK, &pos);

			if (n == -EINTR || n == -ERESTARTSYS || n == -EAGAIN) {
				msleep(10);
				continue;
			}
			if (n <= 0) {
				pr_err("read from %s: %zd, reopening\n", ka_tty_name, n);
				return false;
			}
			a->in_pos = 0;
			a->in_len = n;
		}
	}
}

void kuml_agent_run(void);	/* called from kernel_init() (init/main.c) */

void kuml_agent_run(void)
{
	struct kagent a = { };

	if (!ka_tty_name[0])
		return;
	a.line = vmalloc(KA_LINE_MAX + 1);
	a.in = kmalloc(KA_IN_CHUNK, GFP_KERNEL);
	a.out = vmalloc(KA_OUT_MAX);
	a.data = vmalloc(max(KA_LINE_MAX / 2, KA_FILL_CHUNK));
	if (!a.line || !a.in || !a.out || !a.data) {
		pr_err("out of memory\n");
		goto out;
	}
	for (;;) {
		a.tty = ka_open_tty();
		if (IS_ERR(a.tty)) {
			pr_err("not started; continuing boot\n");
			a.tty = NULL;
			goto out;
		}
		pr_err("ready on %s (kernel %s)\n", ka_tty_name, utsname()->release);
		ka_ready(&a);
		while (ka_getline(&a)) {
			if (a.line_overflow) {
				a.seq = "-";
				ka_errmsg(&a, "E2BIG line-too-long");
				continue;
			}
			if (!a.line_len) {
				ka_ready(&a);
				continue;
			}
			if (ka_dispatch(&a, a.line) == KA_EXEC_INIT) {
				task_work_run();
				pr_err("exec-init: continuing to user space\n");
				goto out;
			}
		}
		ka_close(a.tty);
		a.tty = NULL;
		a.in_pos = a.in_len = 0;
		msleep(100);
	}
out:
	if (a.tty)
		ka_close(a.tty);
	vfree(a.line);
	kfree(a.in);
	vfree(a.out);
	vfree(a.data);
}
