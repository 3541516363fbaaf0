//! Landlock: filesystem rights derived from the mounts (read and execute everywhere, write only
//! where the mount is writable), caller-given extra rules, TCP port rules (ABI ≥ 4) and scoping
//! of abstract unix sockets and signals (ABI ≥ 6) when the network is shared with the host.
//!
//! Planned in the caller (ABI probe, access masks, C strings); applied inside the sandbox after
//! pivot_root with raw syscalls, because the rules name paths of the sandbox's own tree.

use std::ffi::CString;

use crate::error::{Error, Result};
use crate::report::{Report, Status};
use crate::spec::{Landlock, Network, Want};

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;
const NET_BIND_TCP: u64 = 1;
const NET_CONNECT_TCP: u64 = 2;
const SCOPE_ABSTRACT_UNIX: u64 = 1;
const SCOPE_SIGNAL: u64 = 2;

/// Every filesystem right the given ABI knows.
fn all_fs(abi: u32) -> u64 {
    let mut all = (1 << 13) - 1; // ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2 {
        all |= 1 << 13; // REFER
    }
    if abi >= 3 {
        all |= TRUNCATE;
    }
    if abi >= 5 {
        all |= IOCTL_DEV;
    }
    all
}

/// The kernel's Landlock ABI version (0 when unavailable), probed once.
pub(crate) fn abi() -> u32 {
    static ABI: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ABI.get_or_init(|| {
        // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null attribute only queries.
        let v = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u8>(),
                0usize,
                1u32,
            )
        };
        if v < 0 {
            0
        } else {
            v as u32
        }
    })
}

/// One path rule: a path inside the sandbox and the rights beneath it.
pub(crate) struct Rule {
    pub path: CString,
    pub access: u64,
}

/// A ruleset to apply in the sandbox.
pub(crate) struct Plan {
    pub abi: u32,
    pub handled_fs: u64,
    pub handled_net: u64,
    pub scoped: u64,
    pub rules: Vec<Rule>,
    pub ports: Vec<(u64, u64)>,
}

/// Plans the ruleset. `writable` lists sandbox paths mounted writable (the root itself when it is);
/// `own_pids`: the sandbox has its own PID namespace.
pub(crate) fn plan(
    spec: &Landlock,
    network: Network,
    own_pids: bool,
    writable: &[String],
    report: &mut Report,
) -> Result<Option<Plan>> {
    if spec.want == Want::Off {
        let rules: Vec<&str> = spec
            .write
            .iter()
            .chain(&spec.read)
            .map(String::as_str)
            .collect();
        let detail = if rules.is_empty() {
            "off, as asked".to_string()
        } else {
            format!(
                "off, as asked: its rules ({}) are not applied",
                rules.join(", ")
            )
        };
        report.push("landlock", Want::Off, Status::Off, detail);
        return Ok(None);
    }
    let abi = abi();
    let min = spec.min_abi.unwrap_or(1);
    if abi < min {
        let reason = if abi == 0 {
            "Landlock is not enabled in this kernel".to_string()
        } else {
            format!("the kernel offers Landlock ABI {abi}, {min} is required")
        };
        if spec.want == Want::Required {
            return Err(Error::Unsupported {
                errno: None,
                feature: "Landlock".into(),
                reason,
                remedy: Some("boot a kernel with CONFIG_SECURITY_LANDLOCK and `lsm=landlock,...`, or lower min_abi".into()),
            });
        }
        report.push("landlock", spec.want, Status::Skipped, reason);
        return Ok(None);
    }
    let all = all_fs(abi);
    let read = EXECUTE | READ_FILE | READ_DIR;
    let mut rules = vec![Rule {
        path: c"/".to_owned(),
        access: read,
    }];
    let mut described = vec!["/ read+exec".to_string()];
    let dev = read
        | WRITE_FILE
        | if abi >= 3 { TRUNCATE } else { 0 }
        | if abi >= 5 { IOCTL_DEV } else { 0 };
    rules.push(Rule {
        path: c"/dev".to_owned(),
        access: dev,
    });
    // Writing a proc file opens it with O_TRUNC, which needs TRUNCATE from ABI 3 on.
    rules.push(Rule {
        path: c"/proc".to_owned(),
        access: read | WRITE_FILE | if abi >= 3 { TRUNCATE } else { 0 },
    });
    described.push("/dev read+write+ioctl".into());
    described.push("/proc read+write".into());
    let cstr = |p: &str| {
        if !p.starts_with('/') {
            return Err(Error::invalid(
                "security.landlock",
                format!("{p:?} is not an absolute path in the sandbox"),
            ));
        }
        CString::new(p).map_err(|_| Error::invalid("security.landlock", "path contains a NUL byte"))
    };
    for w in writable.iter().chain(&spec.write) {
        rules.push(Rule {
            path: cstr(w)?,
            access: all,
        });
        described.push(format!("{w} all"));
    }
    for r in &spec.read {
        rules.push(Rule {
            path: cstr(r)?,
            access: read,
        });
        described.push(format!("{r} read+exec"));
    }
    let mut handled_net = 0;
    let mut ports = Vec::new();
    let mut notes = Vec::new();
    if !spec.tcp_bind.is_empty() || !spec.tcp_connect.is_empty() {
        if abi >= 4 {
            handled_net = NET_BIND_TCP | NET_CONNECT_TCP;
            ports.extend(spec.tcp_bind.iter().map(|p| (NET_BIND_TCP, *p as u64)));
            ports.extend(
                spec.tcp_connect
                    .iter()
                    .map(|p| (NET_CONNECT_TCP, *p as u64)),
            );
            notes.push(format!(
                "TCP bind {:?}, connect {:?} only",
                spec.tcp_bind, spec.tcp_connect
            ));
        } else if spec.want == Want::Required {
            return Err(Error::Unsupported {
                errno: None,
                feature: "Landlock TCP rules".into(),
                reason: format!("they need ABI 4, the kernel has {abi}"),
                remedy: None,
            });
        } else {
            notes.push(format!("TCP port rules SKIPPED (need ABI 4, have {abi})"));
        }
    }
    // What reaches the host without scoping: its abstract unix sockets through the host's
    // network namespace, and its processes (the caller's user's) through the host's PID
    // namespace. In namespaces of its own there is nothing of the host's to reach.
    let mut scoped = 0;
    let mut reach = Vec::new();
    if network == Network::Host {
        scoped |= SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL;
        reach.push("abstract unix sockets");
    }
    if !own_pids {
        scoped |= SCOPE_SIGNAL;
        reach.push("processes (signals)");
    }
    if scoped != 0 {
        if abi >= 6 {
            notes.push(format!(
                "scoped: {} of the host stay out of reach",
                reach.join(" and ")
            ));
        } else {
            scoped = 0;
            notes.push(format!(
                "scoping SKIPPED (needs ABI 6, have {abi}): the host's {} are reachable",
                reach.join(" and ")
            ));
        }
    }
    let status = if notes.iter().any(|n| n.contains("SKIPPED")) {
        Status::Skipped
    } else {
        Status::Enforced
    };
    report.push(
        "landlock",
        spec.want,
        status,
        format!(
            "ABI {abi}; filesystem rights {all:#x} handled; {}{}",
            described.join(", "),
            notes.iter().map(|n| format!("; {n}")).collect::<String>()
        ),
    );
    Ok(Some(Plan {
        abi,
        handled_fs: all,
        handled_net,
        scoped,
        rules,
        ports,
    }))
}

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

#[repr(C)]
struct NetPort {
    allowed_access: u64,
    port: u64,
}

/// Adds one path-beneath rule for `path` to the ruleset `fd`.
fn add_path_rule(
    fd: i32,
    path: &std::ffi::CStr,
    access: u64,
) -> std::result::Result<(), nix::errno::Errno> {
    use nix::errno::Errno;
    // SAFETY: path is NUL-terminated.
    let pfd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if pfd < 0 {
        return Err(Errno::last());
    }
    let beneath = PathBeneath {
        allowed_access: access,
        parent_fd: pfd,
    };
    // SAFETY: beneath is a valid landlock_path_beneath_attr; pfd is closed right after.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            fd,
            1u32,
            &beneath as *const PathBeneath,
            0u32,
        )
    };
    let e = Errno::last();
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(pfd) };
    if ret < 0 {
        Err(e)
    } else {
        Ok(())
    }
}

/// A record on the error pipe that is not a failure: rule `index` of the Landlock plan names
/// a path the sandbox does not have (its errno says how), and was left out.
pub(crate) const RULE_SKIPPED: u32 = 0x1a1d;

/// Applies the ruleset to the calling thread (after no_new_privs). Raw syscalls only; a rule
/// whose path the sandbox does not have is left out, and `skipped` is called with its index
/// and errno.
pub(crate) fn apply(
    plan: &Plan,
    skipped: &mut dyn FnMut(usize, nix::errno::Errno),
) -> std::result::Result<(), nix::errno::Errno> {
    use nix::errno::Errno;
    let attr = RulesetAttr {
        handled_access_fs: plan.handled_fs,
        handled_access_net: plan.handled_net,
        scoped: plan.scoped,
    };
    let size = if plan.abi >= 6 {
        24
    } else if plan.abi >= 4 {
        16
    } else {
        8
    };
    // SAFETY: attr is valid for `size` bytes (a prefix of the struct, as the ABI defines).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            size as usize,
            0u32,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = fd as i32;
    let res = (|| {
        for (index, rule) in plan.rules.iter().enumerate() {
            let access = rule.access & plan.handled_fs;
            match add_path_rule(fd, &rule.path, access) {
                Ok(()) => {}
                Err(e @ (Errno::ENOENT | Errno::ENOTDIR)) => skipped(index, e),
                // A file takes only the rights that make sense for files.
                Err(Errno::EINVAL) => {
                    let files = access & (EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV);
                    add_path_rule(fd, &rule.path, files)?;
                }
                Err(e) => return Err(e),
            }
        }
        for &(access, port) in &plan.ports {
            let rule = NetPort {
                allowed_access: access,
                port,
            };
            // SAFETY: rule is a valid landlock_net_port_attr.
            if unsafe {
                libc::syscall(
                    libc::SYS_landlock_add_rule,
                    fd,
                    2u32,
                    &rule as *const NetPort,
                    0u32,
                )
            } < 0
            {
                return Err(Errno::last());
            }
        }
        // SAFETY: fd is the ruleset created above.
        if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) } < 0 {
            return Err(Errno::last());
        }
        Ok(())
    })();
    // SAFETY: closing the ruleset descriptor.
    unsafe { libc::close(fd) };
    res
}
