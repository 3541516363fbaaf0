/*
 * rsandbox-init: the sandbox's init when the sandbox was started without copying the caller's
 * address space (see child/mod.rs). The library embeds this program and executes it from a
 * sealed memfd after setup, in place of the setup process, so the long-lived init is a tiny
 * process of its own instead of a copy of the caller.
 *
 *   rsandbox-init STATUS_FD CTL_FD MAIN_PID PID_NS
 *
 * It does what child/init.rs does for the other start: every signal arrives through a signalfd
 * (they are all blocked already); SIGCHLD reaps, any other signal is forwarded to the whole
 * sandbox; hang-up of CTL_FD (when >= 0) means the caller is gone, and kills the sandbox; when
 * MAIN_PID (the command) exits, its wait status goes to STATUS_FD and init exits, which ends
 * the PID namespace.
 *
 * No libc: raw system calls only (x86_64), so the program is a few kilobytes, static, and starts
 * without a dynamic loader.
 */

typedef unsigned long u64;
typedef long i64;

enum {
    NR_read = 0,
    NR_write = 1,
    NR_poll = 7,
    NR_rt_sigprocmask = 14,
    NR_wait4 = 61,
    NR_kill = 62,
    NR_exit_group = 231,
    NR_signalfd4 = 289,
};

#define SIGCHLD 17
#define SIGKILL 9
#define WNOHANG 1
#define POLLIN 1
#define SFD_CLOEXEC 02000000
#define EINTR 4

static i64 syscall6(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f)
{
    i64 ret;
    register i64 r10 __asm__("r10") = d;
    register i64 r8 __asm__("r8") = e;
    register i64 r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

#define SYS(n, a, b, c, d) syscall6(n, (i64)(a), (i64)(b), (i64)(c), (i64)(d), 0, 0)

struct pollfd {
    int fd;
    short events;
    short revents;
};

static int status_fd, ctl_fd, main_pid, pid_ns;

static __attribute__((noreturn)) void quit(int code)
{
    for (;;)
        SYS(NR_exit_group, code, 0, 0, 0);
}

static int parse(const char *s)
{
    int neg = 0, n = 0;
    if (*s == '-') {
        neg = 1;
        s++;
    }
    while (*s >= '0' && *s <= '9')
        n = n * 10 + (*s++ - '0');
    return neg ? -n : n;
}

/* Sends sig to every process of the sandbox. */
static void forward(int sig)
{
    if (pid_ns)
        SYS(NR_kill, -1, sig, 0, 0); /* from pid 1: everything in the namespace, nothing else */
    else
        SYS(NR_kill, -main_pid, sig, 0, 0);
}

static __attribute__((noreturn)) void finish(int status)
{
    if (!pid_ns)
        forward(SIGKILL);
    SYS(NR_write, status_fd, &status, 4, 0);
    quit(0);
}

/* Reaps every exited child; finishes when the command is one of them. */
static void reap(void)
{
    for (;;) {
        int status = 0;
        i64 pid = SYS(NR_wait4, -1, &status, WNOHANG, 0);
        if (pid <= 0)
            return;
        if (pid == main_pid)
            finish(status);
    }
}

__attribute__((used)) void init_main(i64 *sp)
{
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    if (argc < 5)
        quit(125);
    status_fd = parse(argv[1]);
    ctl_fd = parse(argv[2]);
    main_pid = parse(argv[3]);
    pid_ns = parse(argv[4]);

    /* Blocked already by the setup process; blocking again costs nothing and makes the signalfd
     * the only way in for every signal (SIGCHLD included: ignored by default, it would be lost). */
    u64 all = ~0UL;
    SYS(NR_rt_sigprocmask, 2 /* SIG_SETMASK */, &all, 0, 8);
    i64 sfd = SYS(NR_signalfd4, -1, &all, 8, SFD_CLOEXEC);
    if (sfd < 0) {
        forward(SIGKILL);
        quit(125);
    }
    /* The command may have exited before the signalfd existed: its SIGCHLD is pending, but reap
     * now anyway. */
    reap();
    struct pollfd fds[2] = {{(int)sfd, POLLIN, 0}, {ctl_fd, POLLIN, 0}};
    for (;;) {
        fds[0].revents = fds[1].revents = 0;
        i64 n = SYS(NR_poll, fds, 2, -1, 0);
        if (n < 0)
            continue;
        if (fds[1].revents) {
            char byte;
            if (SYS(NR_read, ctl_fd, &byte, 1, 0) != 1) {
                forward(SIGKILL);
                quit(125);
            }
        }
        if (fds[0].revents & POLLIN) {
            unsigned char info[128];
            if (SYS(NR_read, sfd, info, sizeof info, 0) == sizeof info) {
                int signo = *(int *)info;
                if (signo != SIGCHLD)
                    forward(signo);
            }
            reap();
        }
    }
}

__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  xor %rbp, %rbp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call init_main\n"
        "  hlt\n");
