//! seccomp: a default profile modelled on the container engines' (deny what a contained process
//! never needs, with EPERM), or a caller's profile in the Docker/OCI JSON format (a documented
//! subset). The filter is compiled to BPF with libseccomp before clone; the sandbox loads it with
//! one raw `seccomp(2)` call as the last step before execve.

use std::io::{Read, Seek};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::OnceLock;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::Deserialize;

use crate::error::{Error, Result};

/// A compiled filter: the BPF program, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Clone)]
pub(crate) struct Filter {
    pub program: Vec<libc::sock_filter>,
    /// For the report: which profile, how many syscalls it restricts.
    pub summary: String,
}

/// The default profile, compiled once per process (twice at most: with and without nesting).
pub(crate) fn default_filter(allow_nested_userns: bool) -> Result<Filter> {
    static PLAIN: OnceLock<std::result::Result<Filter, String>> = OnceLock::new();
    static NESTED: OnceLock<std::result::Result<Filter, String>> = OnceLock::new();
    let cell = if allow_nested_userns { &NESTED } else { &PLAIN };
    cell.get_or_init(|| build_default(allow_nested_userns).map_err(|e| e.to_string()))
        .clone()
        .map_err(|reason| Error::Unsupported {
            errno: None,
            feature: "seccomp".into(),
            reason,
            remedy: Some("apt-get install libseccomp2; check `rsandbox doctor`".into()),
        })
}

fn err(what: impl std::fmt::Display) -> Error {
    Error::Unsupported {
        errno: None,
        feature: "seccomp".into(),
        reason: what.to_string(),
        remedy: None,
    }
}

fn build_default(allow_nested_userns: bool) -> Result<Filter> {
    let (program, count) = match prebuilt::program(allow_nested_userns) {
        Some(found) => found,
        None => {
            let (ctx, count) = rules::default_context(allow_nested_userns).map_err(err)?;
            (export(&ctx)?, count)
        }
    };
    let program = guard(program);
    let nested = if allow_nested_userns {
        "nested user namespaces allowed"
    } else {
        "no new user namespaces"
    };
    Ok(Filter {
        program,
        summary: format!(
            "default profile: {count} syscalls or argument patterns refused with EPERM (mount family, modules, kexec, bpf, io_uring, keyrings, process_vm_writev, clock setting, TIOCSTI, …); syscalls from number {} on (newer than the profile) refused with ENOSYS; {nested}; foreign architectures (i386, x32) killed",
            rules::FIRST_UNREVIEWED
        ),
    })
}

/// `program` behind a guard for what libseccomp cannot say: native syscalls numbered from
/// [`rules::FIRST_UNREVIEWED`] on are refused with ENOSYS, and personality's query (0xffffffff
/// in its 32-bit argument, which sets nothing) is allowed, where the program refuses flag bits
/// that weaken memory protections in any other value. The rest, and other architectures' calls,
/// go on to `program`. Prepended: the program's jumps are relative and forward, so none moves.
#[cfg(target_arch = "x86_64")]
fn guard(program: Vec<libc::sock_filter>) -> Vec<libc::sock_filter> {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_BIT: u32 = 0x4000_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    // x86_64's personality; its argument's low word (the kernel takes an unsigned int).
    const NR_PERSONALITY: u32 = 135;
    const ARG0_LOW: u32 = 16;
    let load = |offset: u32| libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k: offset,
    };
    let jump = |op: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ret = |k: u32| libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    // Jumps count from the next instruction; the program starts at 11.
    let guard = [
        /* 0 */ load(4), // arch
        /* 1 */ jump(libc::BPF_JEQ, AUDIT_ARCH_X86_64, 0, 9), // else 11
        /* 2 */ load(0), // number
        /* 3 */ jump(libc::BPF_JEQ, NR_PERSONALITY, 0, 3), // else 7
        /* 4 */ load(ARG0_LOW),
        /* 5 */ jump(libc::BPF_JEQ, 0xffff_ffff, 0, 1), // else 7
        /* 6 */ ret(SECCOMP_RET_ALLOW),
        /* 7 */ load(0), // number again
        /* 8 */
        jump(libc::BPF_JGE, X32_BIT, 2, 0), // x32: 11, where the program kills it
        /* 9 */ jump(libc::BPF_JGE, rules::FIRST_UNREVIEWED, 0, 1), // else 11
        /* 10 */ ret(SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ];
    guard.into_iter().chain(program).collect()
}

#[cfg(not(target_arch = "x86_64"))]
fn guard(program: Vec<libc::sock_filter>) -> Vec<libc::sock_filter> {
    program
}

/// The default profile compiled to BPF by build.rs (with this same libseccomp and rules), so a
/// process's first sandbox does not pay for compiling it.
mod prebuilt {
    #[cfg(rsandbox_prebuilt_seccomp)]
    include!(concat!(env!("OUT_DIR"), "/seccomp_prebuilt.rs"));

    /// The program and its rule count, if this build has them.
    pub(super) fn program(allow_nested_userns: bool) -> Option<(Vec<libc::sock_filter>, usize)> {
        #[cfg(rsandbox_prebuilt_seccomp)]
        {
            let (bytes, count) = PREBUILT[allow_nested_userns as usize];
            Some((super::decode(bytes), count))
        }
        #[cfg(not(rsandbox_prebuilt_seccomp))]
        {
            let _ = allow_nested_userns;
            None
        }
    }
}

#[path = "seccomp_rules.rs"]
mod rules;

/// Compiles a Docker/OCI-format profile (the supported subset: `defaultAction`,
/// `defaultErrnoRet`, `architectures`, and `syscalls[]` with `names`, `action`, `errnoRet`,
/// `args[]` of `index`/`value`/`valueTwo`/`op`; `comment` fields are ignored).
pub(crate) fn profile_filter(path: &Path) -> Result<Filter> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::PathNotFound {
        what: "seccomp profile",
        path: path.into(),
        errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)),
    })?;
    let bad = |reason: String| {
        Error::invalid(
            "security.seccomp.profile",
            format!("{}: {reason}", path.display()),
        )
    };
    let p: Profile = serde_json::from_str(&text)
        .map_err(|e| bad(format!("not a supported seccomp profile: {e}")))?;
    let default = action(&p.default_action, p.default_errno_ret).map_err(bad)?;
    let mut ctx = ScmpFilterContext::new(default).map_err(err)?;
    ctx.set_act_badarch(ScmpAction::KillProcess).map_err(err)?;
    ctx.set_ctl_nnp(false).map_err(err)?;
    // A binary tree over the syscall numbers: see rules::default_context. As a chain, an
    // allow-list of every syscall takes up to 372 comparisons per number where the tree takes 17
    // (see the tests), a walk the kernel makes for every number at each attach.
    ctx.set_ctl_optimize(2).map_err(err)?;
    for a in &p.architectures {
        let arch = match a.as_str() {
            "SCMP_ARCH_X86_64" => ScmpArch::X8664,
            "SCMP_ARCH_X86" => ScmpArch::X86,
            "SCMP_ARCH_X32" => ScmpArch::X32,
            "SCMP_ARCH_AARCH64" => ScmpArch::Aarch64,
            other => return Err(bad(format!("unsupported architecture {other}"))),
        };
        if arch != ScmpArch::native() {
            ctx.add_arch(arch).map_err(err)?;
        }
    }
    let mut count = 0;
    for (i, rule) in p.syscalls.iter().enumerate() {
        let act =
            action(&rule.action, rule.errno_ret).map_err(|e| bad(format!("syscalls[{i}]: {e}")))?;
        if act == default {
            continue;
        }
        let mut conds = Vec::new();
        for a in &rule.args {
            let op = match a.op.as_str() {
                "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
                "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
                "SCMP_CMP_LT" => ScmpCompareOp::Less,
                "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
                "SCMP_CMP_GT" => ScmpCompareOp::Greater,
                "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
                "SCMP_CMP_MASKED_EQ" => ScmpCompareOp::MaskedEqual(a.value),
                other => return Err(bad(format!("syscalls[{i}]: unknown comparison {other}"))),
            };
            let datum = if a.op == "SCMP_CMP_MASKED_EQ" {
                a.value_two
            } else {
                a.value
            };
            conds.push(ScmpArgCompare::new(a.index, op, datum));
        }
        for name in &rule.names {
            let sc = ScmpSyscall::from_name(name)
                .map_err(|_| bad(format!("syscalls[{i}]: unknown syscall {name:?} (not known to this kernel or libseccomp)")))?;
            ctx.add_rule_conditional(act, sc, &conds)
                .map_err(|e| bad(format!("syscalls[{i}] {name}: {e}")))?;
            count += 1;
        }
    }
    Ok(Filter {
        program: export(&ctx)?,
        summary: format!(
            "profile {} ({count} rules, default {})",
            path.display(),
            p.default_action
        ),
    })
}

fn action(name: &str, errno: Option<i32>) -> std::result::Result<ScmpAction, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno.unwrap_or(libc::EPERM)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        other => return Err(format!("unsupported action {other}")),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<i32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    syscalls: Vec<Rule>,
    #[serde(default)]
    #[allow(dead_code)]
    comment: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<i32>,
    #[serde(default)]
    args: Vec<Arg>,
    #[serde(default)]
    #[allow(dead_code)]
    comment: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

/// Exports the filter's BPF through a memfd (libseccomp 2.5 has no in-memory export).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>> {
    let fd =
        nix::sys::memfd::memfd_create(c"rsandbox-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| Error::os("memfd_create", e))?;
    let mut file = std::fs::File::from(fd);
    ctx.export_bpf(file.as_fd()).map_err(err)?;
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| Error::io("read seccomp BPF", None, e))?;
    Ok(decode(&bytes))
}

/// A BPF program from its bytes as libseccomp exports them (8 bytes per instruction).
fn decode(bytes: &[u8]) -> Vec<libc::sock_filter> {
    bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

/// Loads a compiled program into the calling thread. Raw syscall: safe between clone and exec.
pub(crate) fn load(program: &[libc::sock_filter]) -> std::result::Result<(), nix::errno::Errno> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prog points to a valid BPF program that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1, /* SECCOMP_SET_MODE_FILTER */
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if ret < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const fn ret_errno(errno: i32) -> u32 {
        0x0005_0000 | errno as u32
    }

    /// Runs a classic BPF seccomp program on (nr, arch, args) as the kernel would; returns its
    /// verdict and how many instructions it took.
    fn evaluate(prog: &[libc::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> (u32, usize) {
        let word = |off: u32| -> u32 {
            match off {
                0 => nr,
                4 => arch,
                8 | 12 => 0, // instruction pointer
                16..=63 if off % 4 == 0 => {
                    let arg = args[(off as usize - 16) / 8];
                    if off % 8 == 0 {
                        arg as u32
                    } else {
                        (arg >> 32) as u32
                    }
                }
                _ => panic!("load from offset {off}"),
            }
        };
        let (mut a, mut x, mut mem, mut pc, mut steps) = (0u32, 0u32, [0u32; 16], 0usize, 0);
        loop {
            let i = prog[pc];
            steps += 1;
            pc += 1;
            let src = if i.code & 0x08 != 0 { x } else { i.k };
            match i.code & 0x07 {
                0x00 => {
                    a = match i.code & 0xe0 {
                        0x00 => i.k,
                        0x20 => word(i.k),
                        0x60 => mem[i.k as usize],
                        mode => panic!("ld mode {mode:#x}"),
                    }
                }
                0x01 => {
                    x = match i.code & 0xe0 {
                        0x00 => i.k,
                        0x60 => mem[i.k as usize],
                        mode => panic!("ldx mode {mode:#x}"),
                    }
                }
                0x02 => mem[i.k as usize] = a,
                0x03 => mem[i.k as usize] = x,
                0x04 => {
                    a = match i.code & 0xf0 {
                        0x00 => a.wrapping_add(src),
                        0x10 => a.wrapping_sub(src),
                        0x40 => a | src,
                        0x50 => a & src,
                        0x60 => a.wrapping_shl(src),
                        0x70 => a.wrapping_shr(src),
                        0xa0 => a ^ src,
                        op => panic!("alu op {op:#x}"),
                    }
                }
                0x05 => {
                    let op = i.code & 0xf0;
                    if op == 0x00 {
                        pc += i.k as usize;
                        continue;
                    }
                    let taken = match op {
                        0x10 => a == src,
                        0x20 => a > src,
                        0x30 => a >= src,
                        0x40 => a & src != 0,
                        _ => panic!("jmp op {op:#x}"),
                    };
                    pc += if taken { i.jt } else { i.jf } as usize;
                }
                0x06 => return (if i.code & 0x18 == 0x10 { a } else { i.k }, steps),
                _ => match i.code {
                    0x07 => x = a,
                    0x87 => a = x,
                    code => panic!("misc {code:#x}"),
                },
            }
        }
    }

    fn number(name: &str) -> u32 {
        libseccomp::ScmpSyscall::from_name(name)
            .unwrap()
            .as_raw_syscall() as u32
    }

    /// The default program refuses exactly what it lists, whatever the syscall number, and
    /// reaches each verdict in a few instructions: the kernel runs it for every syscall number
    /// at each attach to cache the ones it always allows (attaching took ~130 µs here with a
    /// chain of comparisons, ~68 µs with the tree).
    #[test]
    fn default_program_refuses_its_list_and_decides_in_a_few_steps() {
        for nested in [false, true] {
            let program = default_filter(nested).unwrap().program;
            let denied: Vec<u32> = rules::DENIED
                .iter()
                .filter_map(|n| libseccomp::ScmpSyscall::from_name(n).ok())
                .map(|s| s.as_raw_syscall() as u32)
                .collect();
            let (mut longest, mut total) = (0, 0);
            for nr in 0..512 {
                let (verdict, steps) = evaluate(&program, nr, AUDIT_ARCH_X86_64, [0; 6]);
                longest = longest.max(steps);
                total += steps;
                let expected = if denied.contains(&nr)
                    || rules::DENIED_NUMBERS.iter().any(|&(_, n)| n as u32 == nr)
                {
                    ret_errno(libc::EPERM)
                } else if nr >= rules::FIRST_UNREVIEWED || (!nested && nr == number("clone3")) {
                    ret_errno(libc::ENOSYS)
                } else {
                    RET_ALLOW
                };
                assert_eq!(verdict, expected, "syscall {nr}, nested={nested}");
            }
            // 13 instructions per number on average with the tree (26 at most), 54 (69) chained;
            // the guard adds 6 to 8 in front.
            assert!(
                total <= 512 * 24 && longest <= 36,
                "{total} instructions over 512 syscall numbers, {longest} at most"
            );
            // Argument patterns and foreign ABIs.
            let ioctl = number("ioctl");
            let tiocsti = [0, rules::TIOCSTI | 0xdead_0000_0000, 0, 0, 0, 0];
            assert_eq!(
                evaluate(&program, ioctl, AUDIT_ARCH_X86_64, tiocsti).0,
                ret_errno(libc::EPERM)
            );
            let fionread = [0, libc::FIONREAD, 0, 0, 0, 0];
            assert_eq!(
                evaluate(&program, ioctl, AUDIT_ARCH_X86_64, fionread).0,
                RET_ALLOW
            );
            // personality: a flag weakening memory protections is refused, the query is not.
            let personality = number("personality");
            let rie = [0x0040_0000, 0, 0, 0, 0, 0];
            assert_eq!(
                evaluate(&program, personality, AUDIT_ARCH_X86_64, rie).0,
                ret_errno(libc::EPERM)
            );
            let query = [0xffff_ffff, 0, 0, 0, 0, 0];
            assert_eq!(
                evaluate(&program, personality, AUDIT_ARCH_X86_64, query).0,
                RET_ALLOW
            );
            // Any other value with a dangerous flag, bit 31 set or not, is refused.
            for value in [0x8040_0000u64, 0xfff0_0000, 0x0010_0000, 0x0800_0000] {
                let args = [value, 0, 0, 0, 0, 0];
                assert_eq!(
                    evaluate(&program, personality, AUDIT_ARCH_X86_64, args).0,
                    ret_errno(libc::EPERM),
                    "personality({value:#x})"
                );
            }
            let newuser = [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0];
            let unshare = evaluate(&program, number("unshare"), AUDIT_ARCH_X86_64, newuser).0;
            let expected = if nested {
                RET_ALLOW
            } else {
                ret_errno(libc::EPERM)
            };
            assert_eq!(unshare, expected, "unshare(CLONE_NEWUSER), nested={nested}");
            let x32_getpid = 0x4000_0000 | number("getpid");
            for (nr, arch) in [(x32_getpid, AUDIT_ARCH_X86_64), (20, AUDIT_ARCH_I386)] {
                let verdict = evaluate(&program, nr, arch, [0; 6]).0;
                assert_eq!(verdict, RET_KILL_PROCESS, "nr {nr:#x} arch {arch:#x}");
            }
        }
    }

    /// A user's allow-list profile of every syscall libseccomp knows is compiled to a tree too.
    #[test]
    fn a_long_profile_decides_in_a_few_steps() {
        let names: Vec<String> = (0..512)
            .filter_map(|nr| {
                libseccomp::ScmpSyscall::from_raw_syscall(nr)
                    .get_name()
                    .ok()
            })
            .filter(|n| n != "mkdir")
            .collect();
        assert!(names.len() > 300, "{} names", names.len());
        let dir = std::env::temp_dir().join(format!("rsbx-seccomp-tree-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("allow.json");
        let profile = serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": libc::EACCES,
            "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}],
        });
        std::fs::write(&path, profile.to_string()).unwrap();
        let program = profile_filter(&path).unwrap().program;
        std::fs::remove_dir_all(&dir).unwrap();
        let mut longest = 0;
        for name in ["read", "mkdir", "openat", "clone3", "getpid"] {
            let (verdict, steps) = evaluate(&program, number(name), AUDIT_ARCH_X86_64, [0; 6]);
            longest = longest.max(steps);
            let expected = if name == "mkdir" {
                ret_errno(libc::EACCES)
            } else {
                RET_ALLOW
            };
            assert_eq!(verdict, expected, "{name}");
        }
        for nr in 0..512 {
            longest = longest.max(evaluate(&program, nr, AUDIT_ARCH_X86_64, [0; 6]).1);
        }
        // 17 with the tree, 372 chained.
        assert!(longest <= 32, "a verdict took {longest} instructions");
    }

    /// The program compiled ahead by build.rs is the one libseccomp compiles here and now, for
    /// both variants: a stale or foreign prebuilt program would load other rules than the report
    /// describes.
    #[test]
    fn prebuilt_default_profile_matches_a_fresh_compile() {
        for nested in [false, true] {
            let (ctx, count) = rules::default_context(nested).unwrap();
            let fresh = export(&ctx).unwrap();
            let (prebuilt, prebuilt_count) = prebuilt::program(nested)
                .expect("a native build compiles the default profile ahead (see build.rs)");
            assert_eq!(count, prebuilt_count, "rule count, nested={nested}");
            let bytes = |p: &[libc::sock_filter]| -> Vec<(u16, u8, u8, u32)> {
                p.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
            };
            assert_eq!(bytes(&fresh), bytes(&prebuilt), "program, nested={nested}");
            assert!(
                fresh.len() > 20,
                "a real program: {} instructions",
                fresh.len()
            );
        }
    }
}
