// The default seccomp profile's rules, in one place for the library (src/seccomp.rs) and for
// build.rs, which compiles them to BPF ahead of time. Included with `include!`, so it names
// everything by full path.

/// Syscalls the default profile refuses with EPERM.
pub(crate) const DENIED: &[&str] = &[
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "setns",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "iopl",
    "ioperm",
    "syslog",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "nfsservctl",
    "uselib",
    "vm86",
    "vm86old",
    "get_kernel_syms",
    "query_module",
    "create_module",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "stime",
    "process_vm_writev",
    "kcmp",
    "fanotify_init",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// Syscalls refused by number, for a libseccomp too old to know their names. Numbers from 424 on
/// are the same on every architecture but alpha.
pub(crate) const DENIED_NUMBERS: &[(&str, i32)] = &[
    // open_tree with mount attributes: a copy of a mount without its read-only flag or its
    // masks, like open_tree, which is refused.
    ("open_tree_attr", 467),
];

/// The first syscall number after those this profile was reviewed against (469, file_setattr,
/// Linux 6.17): the default profile refuses newer ones with ENOSYS, as a kernel without them
/// would, until they are reviewed.
pub(crate) const FIRST_UNREVIEWED: u32 = 470;

pub(crate) const TIOCSTI: u64 = 0x5412;
pub(crate) const TIOCLINUX: u64 = 0x541C;
/// Personality flags that weaken memory protections.
pub(crate) const PER_DANGEROUS: [u64; 3] = [
    0x0010_0000, /* MMAP_PAGE_ZERO */
    0x0040_0000, /* READ_IMPLIES_EXEC */
    0x0800_0000, /* ADDR_LIMIT_3GB */
];

/// The default profile as a libseccomp filter context, and how many syscalls or argument patterns
/// it refuses.
pub(crate) fn default_context(
    allow_nested_userns: bool,
) -> std::result::Result<(libseccomp::ScmpFilterContext, usize), libseccomp::error::SeccompError> {
    use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
    let eperm = ScmpAction::Errno(libc::EPERM);
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow)?;
    // Foreign architectures (i386 via int 0x80, x32) are not in the filter: the kernel's
    // arch check kills such calls instead of letting them slip past the rules.
    ctx.set_act_badarch(ScmpAction::KillProcess)?;
    ctx.set_ctl_nnp(false)?;
    // A binary tree over the syscall numbers instead of a chain of comparisons: when a filter is
    // attached, the kernel runs it for every syscall number to find those it always allows (its
    // cache), and the tree makes that walk several times shorter.
    ctx.set_ctl_optimize(2)?;
    let mut count = 0;
    for name in DENIED {
        // Names this architecture does not have (vm86 on x86_64, …) are simply absent.
        if let Ok(sc) = ScmpSyscall::from_name(name) {
            ctx.add_rule(eperm, sc)?;
            count += 1;
        }
    }
    for &(name, nr) in DENIED_NUMBERS {
        // By name where libseccomp knows it (it must agree on the number), else by number.
        let sc = ScmpSyscall::from_name(name).unwrap_or(ScmpSyscall::from(nr));
        ctx.add_rule(eperm, sc)?;
        count += 1;
    }
    // Terminal injection: TIOCSTI and TIOCLINUX (compared on the low 32 bits: the kernel does).
    for cmd in [TIOCSTI, TIOCLINUX] {
        ctx.add_rule_conditional(
            eperm,
            ScmpSyscall::from_name("ioctl")?,
            &[ScmpArgCompare::new(
                1,
                ScmpCompareOp::MaskedEqual(0xffff_ffff),
                cmd,
            )],
        )?;
    }
    // (The query, 0xffffffff, which sets nothing, is let through by seccomp.rs's guard.)
    for flag in PER_DANGEROUS {
        ctx.add_rule_conditional(
            eperm,
            ScmpSyscall::from_name("personality")?,
            &[ScmpArgCompare::new(
                0,
                ScmpCompareOp::MaskedEqual(flag),
                flag,
            )],
        )?;
    }
    count += 2;
    if !allow_nested_userns {
        let newuser = libc::CLONE_NEWUSER as u64;
        for name in ["unshare", "clone"] {
            // clone's flags are its first argument on x86_64.
            ctx.add_rule_conditional(
                eperm,
                ScmpSyscall::from_name(name)?,
                &[ScmpArgCompare::new(
                    0,
                    ScmpCompareOp::MaskedEqual(newuser),
                    newuser,
                )],
            )?;
        }
        // clone3 keeps its flags in memory the filter cannot read: make libc fall back to clone.
        ctx.add_rule(
            ScmpAction::Errno(libc::ENOSYS),
            ScmpSyscall::from_name("clone3")?,
        )?;
        count += 3;
    }
    Ok((ctx, count))
}
