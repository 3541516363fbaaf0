//! User namespace id mapping.
//!
//! A single-id mapping (the caller's uid/gid, seen inside as any chosen id) is written by the
//! sandbox itself: the kernel lets a process map its own euid without privilege, which saves a
//! round trip to the caller. A subordinate range needs the setuid helpers `newuidmap`/`newgidmap`
//! (or root), so the caller writes it while the sandbox waits.

use std::ffi::CString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::report::IdRange;
use crate::spec::{IdMapping, User};
use crate::sys;

/// Number of ids a subordinate-range mapping covers (inside 0..=65535).
pub const RANGE_SIZE: u32 = 65536;

/// The planned mapping.
pub(crate) struct IdMaps {
    pub uid: Vec<IdRange>,
    pub gid: Vec<IdRange>,
    /// The command's ids inside.
    pub inside_uid: u32,
    pub inside_gid: u32,
    /// Who writes the maps.
    pub writer: MapWriter,
}

pub(crate) enum MapWriter {
    /// The sandbox writes its own single-line maps: these are the file contents.
    Child { uid_map: Vec<u8>, gid_map: Vec<u8> },
    /// The caller writes them with newuidmap/newgidmap (or directly when it is root).
    Parent { helpers: Option<(PathBuf, PathBuf)> },
}

impl IdMaps {
    /// Plans the mapping for `user` as requested by the process with host ids `caller`.
    pub fn plan(user: &User, caller: (u32, u32)) -> Result<IdMaps> {
        match user.mapping {
            IdMapping::Single => {
                let inside_uid = user.uid.unwrap_or(caller.0);
                let inside_gid = user.gid.unwrap_or(caller.1);
                check_id("uid", inside_uid)?;
                check_id("gid", inside_gid)?;
                Ok(IdMaps {
                    uid: vec![range(inside_uid, caller.0, 1)],
                    gid: vec![range(inside_gid, caller.1, 1)],
                    inside_uid,
                    inside_gid,
                    writer: MapWriter::Child {
                        uid_map: format!("{inside_uid} {} 1\n", caller.0).into_bytes(),
                        gid_map: format!("{inside_gid} {} 1\n", caller.1).into_bytes(),
                    },
                })
            }
            IdMapping::SubordinateRange => {
                let name = nix::unistd::User::from_uid(caller.0.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name);
                let sub_uid =
                    subordinate_range(Path::new("/etc/subuid"), name.as_deref(), caller.0)
                        .ok_or_else(|| no_range("uid", "/etc/subuid", name.as_deref(), caller.0))?;
                let sub_gid =
                    subordinate_range(Path::new("/etc/subgid"), name.as_deref(), caller.1)
                        .ok_or_else(|| no_range("gid", "/etc/subgid", name.as_deref(), caller.0))?;
                let helpers = if caller.0 == 0 {
                    None
                } else {
                    Some((find_helper("newuidmap")?, find_helper("newgidmap")?))
                };
                let uid = vec![
                    range(0, caller.0, 1),
                    range(1, sub_uid.0, sub_uid.1.min(RANGE_SIZE - 1)),
                ];
                let gid = vec![
                    range(0, caller.1, 1),
                    range(1, sub_gid.0, sub_gid.1.min(RANGE_SIZE - 1)),
                ];
                let inside_uid = user.uid.unwrap_or(0);
                let inside_gid = user.gid.unwrap_or(0);
                for (which, id, map) in [("uid", inside_uid, &uid), ("gid", inside_gid, &gid)] {
                    let top = map.iter().map(|r| r.inside + r.count).max().unwrap_or(0);
                    if id >= top {
                        return Err(Error::UnmappableId {
                            which,
                            id,
                            reason: format!("the subordinate range maps inside ids 0..{top} only"),
                        });
                    }
                }
                Ok(IdMaps {
                    uid,
                    gid,
                    inside_uid,
                    inside_gid,
                    writer: MapWriter::Parent { helpers },
                })
            }
        }
    }

    /// Installs parent-written maps for the sandbox `pid` (range mappings only).
    pub fn install(&self, pid: libc::pid_t) -> Result<()> {
        let MapWriter::Parent { helpers } = &self.writer else {
            return Ok(());
        };
        match helpers {
            Some((newuidmap, newgidmap)) => {
                run_helper(newuidmap, pid, "uid_map", &self.uid)?;
                run_helper(newgidmap, pid, "gid_map", &self.gid)
            }
            None => {
                write_map(pid, "uid_map", &self.uid)?;
                write_map(pid, "gid_map", &self.gid)
            }
        }
    }
}

fn range(inside: u32, outside: u32, count: u32) -> IdRange {
    IdRange {
        inside,
        outside,
        count,
    }
}

fn check_id(which: &'static str, id: u32) -> Result<()> {
    if id == u32::MAX {
        return Err(Error::UnmappableId {
            which,
            id,
            reason: "4294967295 is (uid_t)-1, which the kernel reserves".into(),
        });
    }
    Ok(())
}

fn no_range(which: &'static str, file: &str, name: Option<&str>, uid: u32) -> Error {
    let who = name.map_or_else(|| uid.to_string(), str::to_string);
    Error::Unsupported {
        errno: None,
        feature: format!("subordinate {which} range"),
        reason: format!("{file} has no entry for {who}"),
        remedy: Some(format!(
            "usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {who}"
        )),
    }
}

/// The first range for `name` or `uid` in a subuid/subgid file: (start, count).
pub(crate) fn subordinate_range(file: &Path, name: Option<&str>, uid: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    parse_subordinate(&text, name, uid)
}

pub(crate) fn parse_subordinate(text: &str, name: Option<&str>, uid: u32) -> Option<(u32, u32)> {
    subordinate_ranges(text, name, uid).into_iter().next()
}

/// Every range (start, count) for the user `name` or numeric `uid` in a subuid/subgid file.
pub(crate) fn subordinate_ranges(text: &str, name: Option<&str>, uid: u32) -> Vec<(u32, u32)> {
    let uid = uid.to_string();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(':');
            let (who, start, count) = (parts.next()?, parts.next()?, parts.next()?);
            if who != uid && Some(who) != name {
                return None;
            }
            let (start, count) = (start.parse().ok()?, count.parse::<u32>().ok()?);
            (count > 0).then_some((start, count))
        })
        .collect()
}

fn find_helper(name: &str) -> Result<PathBuf> {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::Unsupported {
        errno: None,
        feature: format!("subordinate id mapping ({name})"),
        reason: format!("{name} is not installed"),
        remedy: Some("apt-get install uidmap".into()),
    })
}

fn run_helper(helper: &Path, pid: libc::pid_t, file: &str, map: &[IdRange]) -> Result<()> {
    let mut cmd = Command::new(helper);
    cmd.arg(pid.to_string());
    for r in map {
        cmd.args([
            r.inside.to_string(),
            r.outside.to_string(),
            r.count.to_string(),
        ]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("exec id-map helper", Some(helper.to_path_buf()), e))?;
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_end(&mut stderr);
    }
    let stderr = String::from_utf8_lossy(&stderr);
    let outcome = match child.wait() {
        Ok(status) if status.success() => return Ok(()),
        Ok(status) => status.to_string(),
        // Another part of this process reaped it (it ignores SIGCHLD, or waits for every child):
        // the map itself says whether it worked.
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
            if map_in_place(pid, file, map) {
                return Ok(());
            }
            "its exit status was reaped by another part of this process, and the map is not in \
             place"
                .to_string()
        }
        Err(e) => {
            return Err(Error::io(
                "wait for id-map helper",
                Some(helper.to_path_buf()),
                e,
            ))
        }
    };
    // A setuid helper gains nothing in a process with no_new_privs (set by systemd's
    // NoNewPrivileges=, or by an unprivileged parent that installed a seccomp filter).
    let remedy = if sys::prctl(libc::PR_GET_NO_NEW_PRIVS, 0) == Ok(1) {
        "this process runs with no_new_privs, so the setuid newuidmap/newgidmap gain no \
         privileges: start it without no_new_privs (systemd: NoNewPrivileges=no, and no \
         SystemCallFilter= for a non-root service), or use a single-id mapping"
    } else {
        "check /etc/subuid and /etc/subgid and that newuidmap/newgidmap are setuid root"
    };
    Err(Error::Unsupported {
        errno: None,
        feature: "subordinate id mapping".into(),
        reason: format!("{} failed ({outcome}): {}", helper.display(), stderr.trim()),
        remedy: Some(remedy.into()),
    })
}

/// Whether /proc/PID/FILE (an id map) holds exactly `map`.
fn map_in_place(pid: libc::pid_t, file: &str, map: &[IdRange]) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/{file}")) else {
        return false;
    };
    let found: Vec<Vec<u32>> = text
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .collect();
    let wanted: Vec<Vec<u32>> = map
        .iter()
        .map(|r| vec![r.inside, r.outside, r.count])
        .collect();
    found == wanted
}

fn write_map(pid: libc::pid_t, file: &str, map: &[IdRange]) -> Result<()> {
    let path = format!("/proc/{pid}/{file}");
    let text: String = map
        .iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect();
    let c = CString::new(path.clone()).map_err(|_| Error::invalid("pid", "NUL"))?;
    sys::write_file(&c, text.as_bytes()).map_err(|e| {
        Error::io(
            "write id map",
            Some(PathBuf::from(path)),
            std::io::Error::from_raw_os_error(e as i32),
        )
    })
}

/// When the host refuses unprivileged user namespaces, the error naming the cause and the remedy.
pub(crate) fn userns_refusal() -> Option<Error> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let (reason, remedy) = if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        (
            "user.max_user_namespaces is 0",
            "sysctl -w user.max_user_namespaces=15000",
        )
    } else if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        (
            "kernel.unprivileged_userns_clone is 0",
            "sysctl -w kernel.unprivileged_userns_clone=1",
        )
    } else if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1")
    {
        (
            "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)",
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or install an AppArmor profile that allows userns for this program",
        )
    } else {
        return None;
    };
    Some(Error::Unsupported {
        errno: None,
        feature: "user namespaces".into(),
        reason: reason.into(),
        remedy: Some(remedy.into()),
    })
}

/// Where this process runs under seccomp filters (a container's profile, a service manager's
/// policy, an outer sandbox), what to do about an EPERM that may be theirs: they often refuse new
/// namespaces and mounts. None without a filter.
pub(crate) fn confinement_remedy() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    confinement_remedy_from(&status)
}

fn confinement_remedy_from(status: &str) -> Option<String> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    if field("Seccomp") != Some("2") {
        return None;
    }
    let count = match field("Seccomp_filters") {
        Some(n) => format!(" (Seccomp_filters: {n} in /proc/self/status)"),
        None => String::new(),
    };
    Some(format!(
        "this process runs under seccomp filters{count}, which may refuse new namespaces or mounts: a container's seccomp profile, systemd's RestrictNamespaces= or \
         SystemCallFilter=, or an outer sandbox; allow them there (an outer rsandbox: \
         --allow-nested-userns, and --seccomp none --landlock off where the inner one mounts)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seccomp_filter_in_the_status_gives_the_confinement_remedy() {
        let filtered = "Name:\tx\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t3\n";
        let remedy = confinement_remedy_from(filtered).expect("a remedy");
        assert!(remedy.contains("Seccomp_filters: 3"), "{remedy}");
        // Controls: no filter (0), strict mode (1), no field (an old kernel).
        for status in ["Seccomp:\t0\n", "Seccomp:\t1\n", "Name:\tx\n"] {
            assert_eq!(confinement_remedy_from(status), None, "{status:?}");
        }
    }

    #[test]
    fn parses_subordinate_entries_by_name_or_uid() {
        let text = "alice:100000:65536\n1001:200000:1000\nbad line\n";
        assert_eq!(
            parse_subordinate(text, Some("alice"), 5),
            Some((100000, 65536))
        );
        assert_eq!(
            parse_subordinate(text, Some("bob"), 1001),
            Some((200000, 1000))
        );
        assert_eq!(parse_subordinate(text, Some("carol"), 7), None);
    }

    #[test]
    fn single_mapping_defaults_to_caller_ids() {
        let maps = IdMaps::plan(&User::default(), (1001, 1002)).unwrap();
        assert_eq!((maps.inside_uid, maps.inside_gid), (1001, 1002));
        assert_eq!(maps.uid, vec![range(1001, 1001, 1)]);
    }

    #[test]
    fn reserved_id_is_unmappable() {
        let user = User {
            uid: Some(u32::MAX),
            ..User::default()
        };
        let err = IdMaps::plan(&user, (1000, 1000)).err().unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::UnmappableId);
    }
}
