/*
 * PID 1 of the tiny initramfs used by guest/measure and guest/test-guest.sh.
 *
 * Without arguments it loads the kernel modules listed in /modules.order (the distribution kernel
 * needs its virtio drivers before the guest is usable), prints the ready marker with the guest's
 * uptime and reboots, which with `reboot=t` on the kernel command line and QEMU's -no-reboot ends
 * the VM.
 *
 * When the kernel command line sets ZTEE_RUN="<shell command>" (the kernel hands unknown
 * name=value parameters to init as environment variables), it also mounts /dev/vda read-only at
 * /mnt (filesystem type from ZTEE_ROOTFS_TYPE, default erofs) with a devtmpfs on its /dev, runs
 * the command with /bin/sh -c chrooted there as uid/gid 1000 and prints "ZTEE-EXIT <status>". An environment variable rather
 * than arguments after `--`, because QEMU's microvm appends its virtio_mmio.device= parameters at
 * the end of the command line, where they would land among init's arguments.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void stop(void)
{
	fflush(stdout);
	sync();
	reboot(RB_AUTOBOOT);
	/* reboot only returns on failure; PID 1 must never exit. */
	for (;;)
		pause();
}

static void fail(const char *what)
{
	printf("ZTEE-INIT-ERROR %s: %s\n", what, strerror(errno));
	stop();
}

static void load_modules(void)
{
	FILE *list = fopen("/modules.order", "r");
	char path[512];

	if (!list)
		return;
	while (fgets(path, sizeof(path), list)) {
		path[strcspn(path, "\n")] = '\0';
		if (!path[0])
			continue;
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			fail(path);
		if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
			fail(path);
		close(fd);
	}
	fclose(list);
}

static void wait_for(const char *path)
{
	/* The virtio-blk probe may finish after init starts; wait up to 5 s. */
	for (int i = 0; i < 500; i++) {
		if (access(path, F_OK) == 0)
			return;
		usleep(10000);
	}
	errno = ENOENT;
	fail(path);
}

static int run_in_rootfs(const char *command)
{
	const char *fstype = getenv("ZTEE_ROOTFS_TYPE");

	if (!fstype)
		fstype = "erofs";
	mkdir("/dev", 0755);
	if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) != 0 && errno != EBUSY)
		fail("mount /dev");
	wait_for("/dev/vda");
	mkdir("/mnt", 0755);
	if (mount("/dev/vda", "/mnt", fstype, MS_RDONLY, NULL) != 0)
		fail("mount /dev/vda");
	/* The image's /dev is an empty mount point; shells need /dev/null. */
	if (mount("devtmpfs", "/mnt/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, NULL) != 0)
		fail("mount /mnt/dev");
	fflush(stdout);

	pid_t child = fork();
	if (child < 0)
		fail("fork");
	if (child == 0) {
		char *env[] = { "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/user", "LC_ALL=C.UTF-8", NULL };
		if (chroot("/mnt") != 0 || chdir("/") != 0)
			fail("chroot /mnt");
		if (setgid(1000) != 0 || setuid(1000) != 0)
			fail("drop to uid 1000");
		char *argv[] = { "/bin/sh", "-c", (char *)command, NULL };
		execve(argv[0], argv, env);
		fail(argv[0]);
	}
	int status;
	if (waitpid(child, &status, 0) < 0)
		fail("waitpid");
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(void)
{
	char uptime[64] = "unknown";
	const char *command = getenv("ZTEE_RUN");

	load_modules();
	mkdir("/proc", 0755);
	if (mount("proc", "/proc", "proc", 0, NULL) == 0) {
		FILE *f = fopen("/proc/uptime", "r");
		if (f) {
			if (fscanf(f, "%63s", uptime) != 1)
				strcpy(uptime, "unknown");
			fclose(f);
		}
	}
	printf("ZTEE-GUEST-READY uptime=%s\n", uptime);
	if (command)
		printf("ZTEE-EXIT %d\n", run_in_rootfs(command));
	stop();
	return 0;
}
