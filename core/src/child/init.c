/*
 * rsandbox-init: the sandbox's init when the sandbox was started without copying the caller's
 * address space (see child/mod.rs). The library embeds this program and executes it from a
 * sealed memfd after setup, in place of the setup process, so the long-lived init is a tiny
 * process of its own instead of a copy of the caller.
 *
 *   rsandbox-init STATUS_FD CTL_FD MAIN_PID PID_NS DIE_WITH_PARENT DEADLINE_NS
 *
 * It does what child/init.rs does for the other start: every signal arrives through a signalfd
 * (they are all blocked already); SIGCHLD reaps, any other signal is forwarded to the whole
 * sandbox; when MAIN_PID (the command) exits, its wait status goes to STATUS_FD and init exits,
 * which ends the PID namespace. CTL_FD is the caller's: the byte CTL_END asks this process to
 * end the sandbox (see end_all), CTL_STOP to stop its processes, CTL_DEADLINE (followed by 8
 * bytes) sets its wall-clock deadline; its hang-up means the caller is gone, which kills the
 * sandbox when DIE_WITH_PARENT is 1. DEADLINE_NS, when not 0, is the sandbox's wall-clock
 * deadline on CLOCK_MONOTONIC: at it this process ends the sandbox itself, whatever the caller is
 * doing (busy, stopped, not waiting yet), and says so in the record.
 *
 * The same program is the pool's agent when argv[0] is "rsandbox-agent" (see pool.rs): the
 * command of a sandbox started ahead of its job. It runs with every restriction of the command
 * already applied (seccomp, Landlock, capabilities, ids, no_new_privs, rlimits, its own session),
 * receives one job on fd 0 (a SOCK_SEQPACKET socket: one message with the working directory, the
 * candidate paths, argv and envp, and the job's three standard streams as SCM_RIGHTS), installs
 * the streams and executes the job, which inherits all of the restrictions. If no candidate can be
 * executed, it sends a failure record (step, errno, index, detail: as child/mod.rs's Failure)
 * back on the socket and exits 127 (not found) or 126 (not executable). A successful exec closes
 * its last reference to the socket, which the caller sees as end of file.
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
    NR_sched_yield = 24,
    NR_dup2 = 33,
    NR_sendto = 44,
    NR_recvmsg = 47,
    NR_execve = 59,
    NR_wait4 = 61,
    NR_getrusage = 98,
    NR_fcntl = 72,
    NR_chdir = 80,
    NR_kill = 62,
    NR_exit_group = 231,
    NR_signalfd4 = 289,
    NR_close = 3,
    NR_prctl = 157,
    NR_faccessat = 269,
    NR_clock_gettime = 228,
    NR_timerfd_create = 283,
    NR_timerfd_settime = 286,
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

static int status_fd, ctl_fd, main_pid, pid_ns, die_with_parent;
/* The deadline's timer (-1: none), and whether it fired. */
static int timer_fd = -1, deadline_hit;

/* The caller's requests on CTL_FD: end the sandbox, stop its processes (child/mod.rs's CTL_END,
 * CTL_STOP). */
#define CTL_END 2
#define CTL_STOP 3
#define CTL_DEADLINE 4
#define SIGSTOP 19

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

static u64 now_ns(void)
{
    struct {
        i64 sec, nsec;
    } ts = {0, 0};
    SYS(NR_clock_gettime, 1 /* CLOCK_MONOTONIC */, &ts, 0, 0);
    return (u64)ts.sec * 1000000000UL + (u64)ts.nsec;
}

/* Arms the deadline's timer for `at` (CLOCK_MONOTONIC ns). Without a timer, the caller's own
 * watch is the only one. */
static void arm(u64 at)
{
    if (!at)
        return;
    if (timer_fd < 0)
        timer_fd = (int)SYS(NR_timerfd_create, 1 /* CLOCK_MONOTONIC */, 02000000 /* CLOEXEC */, 0, 0);
    if (timer_fd < 0)
        return;
    struct {
        i64 interval_sec, interval_nsec, sec, nsec;
    } when = {0, 0, (i64)(at / 1000000000UL), (i64)(at % 1000000000UL)};
    SYS(NR_timerfd_settime, timer_fd, 1 /* TFD_TIMER_ABSTIME */, &when, 0);
}

static void put64(unsigned char *at, u64 v)
{
    for (int i = 0; i < 8; i++)
        at[i] = (unsigned char)(v >> (8 * i));
}

/* Reports the command's wait status, followed by the resource usage of every child this init
 * has reaped (struct rusage, 144 bytes on x86_64), the time it ended (CLOCK_MONOTONIC ns) and
 * flags (1: this process's deadline ended it), so that the caller may take the result without
 * waiting for the namespaces to be torn down; then exits, which ends them. */
static __attribute__((noreturn)) void finish(int status)
{
    u64 ended = now_ns();
    if (!pid_ns)
        forward(SIGKILL);
    union {
        unsigned char bytes[4 + 144 + 16];
        u64 align;
    } record;
    for (unsigned i = 0; i < sizeof record.bytes; i++)
        record.bytes[i] = 0;
    *(int *)record.bytes = status;
    SYS(NR_getrusage, -1 /* RUSAGE_CHILDREN */, record.bytes + 4, 0, 0);
    put64(record.bytes + 148, ended);
    put64(record.bytes + 156, (u64)deadline_hit);
    SYS(NR_write, status_fd, record.bytes, sizeof record.bytes, 0);
    /* The write has woken the caller, often onto this CPU: let it take the result before this
     * process's exit tears the namespaces down (which runs until the exit first sleeps). */
    SYS(NR_sched_yield, 0, 0, 0, 0);
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

/* The caller's end of the sandbox (its time is up, or it kills it): every process is killed and
 * reaped here, then the command's status goes out with the usage of them all. Were this process
 * killed instead, the kernel would reap the others uncounted: a dying init's children are
 * released without their times and peak memory reaching it. */
static __attribute__((noreturn)) void end_all(void)
{
    /* From pid 1, one kill(-1) suffices: whatever it reached can fork no more, and every process
     * left in the namespace is a child of this one or becomes one when its parent dies. */
    forward(SIGKILL);
    int main_status = SIGKILL; /* as a wait status: killed by SIGKILL */
    for (;;) {
        int status = 0;
        i64 pid = SYS(NR_wait4, -1, &status, 0, 0);
        if (pid == main_pid) {
            main_status = status;
            /* Without a PID namespace the others are not this process's to wait for. */
            if (!pid_ns)
                break;
        } else if (pid < 0 && pid != -EINTR) {
            break; /* ECHILD: none left */
        }
    }
    finish(main_status);
}

/* ---------------------------------------------------------------------------------------- agent */

struct iovec {
    void *base;
    u64 len;
};

struct msghdr {
    void *name;
    unsigned namelen;
    struct iovec *iov;
    u64 iovlen;
    void *control;
    u64 controllen;
    int flags;
};

struct cmsghdr {
    u64 len;
    int level;
    int type;
};

#define SOL_SOCKET 1
#define SCM_RIGHTS 1
#define F_DUPFD_CLOEXEC 1030
#define JOB_MAGIC 0x52534a42u /* "RSJB" */
#define MAX_JOB (1 << 20)
#define MAX_PTRS 16384
/* Step numbers of core/src/error.rs (Step as u32). */
#define STEP_STDIO 23
#define STEP_CHDIR 24
#define STEP_EXEC 29

static char job[MAX_JOB];
static char *ptrs[MAX_PTRS];

struct failure {
    unsigned step;
    int err;
    unsigned index;
    unsigned detail;
};

static __attribute__((noreturn)) void agent_fail(int report_fd, unsigned step, i64 err,
                                                  unsigned detail, int code)
{
    struct failure f = {step, (int)-err, 0xffffffffu, detail};
    SYS(NR_sendto, report_fd, &f, sizeof f, 0);
    quit(code);
}

static __attribute__((noreturn)) void agent_main(void)
{
    union {
        struct cmsghdr h;
        char space[64];
    } control;
    struct iovec iov = {job, sizeof job - 1};
    struct msghdr msg = {0, 0, &iov, 1, &control, sizeof control, 0};
    i64 n;
    do
        n = SYS(NR_recvmsg, 0, &msg, 0, 0);
    while (n == -EINTR);
    if (n < 16)
        quit(125); /* the pool went away before a job came */
    job[n] = 0;
    /* Reports go back on the socket, through a copy that closes at a successful exec. */
    i64 report_fd = SYS(NR_fcntl, 0, F_DUPFD_CLOEXEC, 3, 0);
    if (report_fd < 0)
        quit(125);
    unsigned *head = (unsigned *)job;
    unsigned ncand = head[1], argc = head[2], envc = head[3];
    if (head[0] != JOB_MAGIC || ncand == 0 || argc == 0 || ncand + argc + envc + 3 > MAX_PTRS)
        agent_fail((int)report_fd, STEP_EXEC, -22 /* EINVAL */, 0, 125);
    if (control.h.level != SOL_SOCKET || control.h.type != SCM_RIGHTS || control.h.len < 16 + 3 * 4)
        agent_fail((int)report_fd, STEP_STDIO, -22, 0, 125);
    int *fds = (int *)(control.space + 16);
    /* The NUL-separated strings: cwd, the candidates, argv, envp. */
    char *p = job + 16, *end = job + n;
    char *cwd = p;
    unsigned total = ncand + argc + envc;
    for (unsigned i = 0; i <= total; i++) {
        if (i > 0)
            ptrs[i - 1 + (i > ncand) + (i > ncand + argc)] = p;
        while (p < end && *p)
            p++;
        if (p >= end)
            agent_fail((int)report_fd, STEP_EXEC, -22, 0, 125);
        p++;
    }
    char **cands = ptrs;
    char **av = ptrs + ncand + 1;
    char **ev = ptrs + ncand + argc + 2;
    ptrs[ncand] = 0;
    ptrs[ncand + argc + 1] = 0;
    ptrs[ncand + argc + envc + 2] = 0;
    /* The received descriptors are all above 2 (0 is the socket, 1 and 2 are /dev/null). */
    for (int i = 0; i < 3; i++) {
        i64 r = SYS(NR_dup2, fds[i], i, 0, 0);
        if (r < 0)
            agent_fail((int)report_fd, STEP_STDIO, r, 0, 125);
    }
    for (int i = 0; i < 3; i++)
        SYS(NR_close, fds[i], 0, 0, 0);
    if (*cwd) {
        i64 r = SYS(NR_chdir, cwd, 0, 0, 0);
        if (r < 0)
            agent_fail((int)report_fd, STEP_CHDIR, r, 0, 125);
    }
    /* PATH search as the other start does it: past missing entries, remembering refusals, and
     * a file that is there but gives ENOENT (its interpreter is missing). */
    i64 refused = 0, last = -2 /* ENOENT */;
    int no_interpreter = 0;
    for (unsigned i = 0; i < ncand; i++) {
        i64 e = SYS(NR_execve, cands[i], av, ev, 0);
        if (e == -2 && SYS(NR_faccessat, -100 /* AT_FDCWD */, cands[i], 0 /* F_OK */, 0) == 0)
            no_interpreter = 1;
        else if (e == -2 || e == -20 /* ENOTDIR */ || e == -40 /* ELOOP */ || e == -36 /* ENAMETOOLONG */)
            last = e;
        else if (e == -13 /* EACCES */ || e == -1 /* EPERM */ || e == -21 /* EISDIR */) {
            if (!refused)
                refused = e;
        } else {
            refused = e;
            break;
        }
    }
    /* The details are child/mod.rs's EXEC_REFUSED and EXEC_NO_INTERPRETER. */
    if (refused)
        agent_fail((int)report_fd, STEP_EXEC, refused, 1, 126);
    if (no_interpreter)
        agent_fail((int)report_fd, STEP_EXEC, -2, 2, 127);
    agent_fail((int)report_fd, STEP_EXEC, last, 0, 127);
}

/* ----------------------------------------------------------------------------------------- main */

static int is_agent(const char *name)
{
    const char *want = "rsandbox-agent";
    while (*want && *name == *want) {
        name++;
        want++;
    }
    return !*want && !*name;
}

__attribute__((used)) void init_main(i64 *sp)
{
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    if (argc >= 1 && is_agent(argv[0]))
        agent_main();
    if (argc < 7)
        quit(125);
    /* Not dumpable: the command can neither trace this process nor open its /proc files (its
     * descriptors among them), with or without Landlock. The library executes this program
     * from a file it cannot read, which makes it so from its exec on; this covers a setup
     * process privileged enough to read it anyway. */
    SYS(NR_prctl, 4 /* PR_SET_DUMPABLE */, 0, 0, 0);
    status_fd = parse(argv[1]);
    ctl_fd = parse(argv[2]);
    main_pid = parse(argv[3]);
    pid_ns = parse(argv[4]);
    die_with_parent = parse(argv[5]);
    u64 deadline = 0;
    for (const char *d = argv[6]; *d >= '0' && *d <= '9'; d++)
        deadline = deadline * 10 + (u64)(*d - '0');
    arm(deadline);

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
    struct pollfd fds[3] = {{(int)sfd, POLLIN, 0}, {ctl_fd, POLLIN, 0}, {timer_fd, POLLIN, 0}};
    for (;;) {
        fds[0].revents = fds[1].revents = fds[2].revents = 0;
        i64 n = SYS(NR_poll, fds, 3, -1, 0);
        if (n < 0)
            continue;
        if (fds[1].revents) {
            char byte = 0;
            if (SYS(NR_read, ctl_fd, &byte, 1, 0) != 1) {
                if (die_with_parent) {
                    forward(SIGKILL);
                    quit(125);
                }
                /* The caller let go of the sandbox: it runs on alone. */
                SYS(NR_close, ctl_fd, 0, 0, 0);
                fds[1].fd = -1;
            } else if (byte == CTL_END) {
                end_all();
            } else if (byte == CTL_STOP) {
                forward(SIGSTOP);
            } else if (byte == CTL_DEADLINE) {
                u64 at = 0;
                if (SYS(NR_read, ctl_fd, &at, 8, 0) == 8) {
                    arm(at);
                    fds[2].fd = timer_fd;
                }
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
        /* After the reaping: a command that ended by its deadline was in time. */
        if (fds[2].revents) {
            deadline_hit = 1;
            end_all();
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
