/*
 * floor: the namespace floor of the benchmark. The least a sandbox start can cost on this kernel:
 * the raw syscalls for new user, mount, PID, IPC, UTS and network namespaces, a private mount
 * tree, a fresh /proc, and exec of the payload. No pivot_root, no seccomp, no Landlock, no
 * error reporting beyond the exit status: nothing a real sandbox could skip is left out, and
 * nothing else is put in.
 *
 *   floor PROGRAM [ARGS...]      exits with PROGRAM's status (125 when a syscall failed)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 125;
    uid_t uid = geteuid();
    gid_t gid = getegid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET) < 0)
        return 125;
    char map[64];
    snprintf(map, sizeof map, "%u %u 1\n", uid, uid);
    if (write_file("/proc/self/uid_map", map) < 0 || write_file("/proc/self/setgroups", "deny") < 0)
        return 125;
    snprintf(map, sizeof map, "%u %u 1\n", gid, gid);
    if (write_file("/proc/self/gid_map", map) < 0)
        return 125;
    pid_t pid = fork();
    if (pid < 0)
        return 125;
    if (pid == 0) {
        /* pid 1 of the new PID namespace */
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            _exit(125);
        execv(argv[1], argv + 1);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0)
        return 125;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
