//! A caller that closes descriptors it does not know (as daemons and some runtimes do) closes the
//! template's: the next start notices, builds a new template and never touches the numbers the
//! caller reused. Alone in its process, as it closes descriptors under everything else.

mod common;

use std::os::fd::AsRawFd;

use common::*;
use rsandbox::Status;

/// The descriptors of this process that refer to user or mount namespaces.
fn namespace_fds() -> Vec<i32> {
    fds_to(&["user:[", "mnt:["])
}

/// The descriptors of this process whose /proc/self/fd link starts with one of `kinds`.
fn fds_to(kinds: &[&str]) -> Vec<i32> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if kinds.iter().any(|k| target.starts_with(k)) {
            fds.push(entry.file_name().to_string_lossy().parse().unwrap());
        }
    }
    fds
}

/// Whether a template was used; None where none can be: a start that copies the caller (a skip:
/// the machine lacks something) or root starting into a cgroup (by design).
fn templated(r: &rsandbox::RunResult) -> Option<bool> {
    if r.report.feature("start-without-copy").map(|f| f.status) != Some(Status::Enforced) {
        skip("the start copies the caller here: no template");
        return None;
    }
    if nix::unistd::geteuid().is_root()
        && r.report.feature("cgroup").map(|f| f.status) == Some(Status::Enforced)
    {
        eprintln!("root starting into a cgroup makes no template");
        return None;
    }
    Some(r.report.feature("mount-template").map(|f| f.status) == Some(Status::Enforced))
}

#[test]
fn closed_template_descriptors_are_noticed_and_reused_numbers_left_alone() {
    run(&sh("true"));
    let r = run(&sh("true"));
    match templated(&r) {
        None => return,
        Some(t) => assert!(t, "the second start of a kind comes from a template"),
    }
    let fds = namespace_fds();
    assert_eq!(
        fds.len(),
        2,
        "the template's user and mount namespaces: {fds:?}"
    );
    for fd in &fds {
        // SAFETY: closing descriptors the library holds, as a careless caller would.
        unsafe { libc::close(*fd) };
    }
    // Reuse the numbers for files of our own.
    let ours: Vec<std::fs::File> = fds
        .iter()
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let reused: Vec<i32> = ours.iter().map(|f| f.as_raw_fd()).collect();
    let r = run(&sh("echo fine"));
    assert!(r.status.success(), "{}", err(&r));
    assert_eq!(out(&r), "fine\n");
    assert_eq!(templated(&r), Some(true), "a new template: {:?}", r.report);
    for fd in &reused {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(*fd, libc::F_GETFD) };
        assert!(flags >= 0, "fd {fd} was closed");
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(link.to_string_lossy(), "/dev/null", "fd {fd}");
    }
    assert_eq!(namespace_fds().len(), 2, "the new template's descriptors");
    closed_network_namespaces_made_ahead_are_noticed();
    a_forked_process_never_joins_its_parents_network_namespaces();
}

/// The network namespaces made ahead for starts from a template are descriptors too: closed and
/// reused by the caller, they are left alone and the starts make their own.
fn closed_network_namespaces_made_ahead_are_noticed() {
    let net_ahead = |r: &rsandbox::RunResult| {
        r.report
            .feature("namespace.net")
            .is_some_and(|f| f.detail.contains("made ahead"))
    };
    // The first starts take them and the library makes others in the background.
    let mut found = Vec::new();
    for _ in 0..100 {
        found = fds_to(&["net:["]);
        if !found.is_empty() {
            break;
        }
        run(&sh("true"));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!found.is_empty(), "no network namespace was made ahead");
    for fd in &found {
        // SAFETY: closing descriptors the library holds, as a careless caller would.
        unsafe { libc::close(*fd) };
    }
    let ours: Vec<std::fs::File> = found
        .iter()
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    // Joining one of the reused numbers would fail the start (setns on /dev/null).
    let mut ahead = 0;
    for _ in 0..found.len() + 8 {
        let r = run(&sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"));
        assert_eq!(out(&r), "lo\n", "{}", err(&r));
        ahead += net_ahead(&r) as usize;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        ahead > 0,
        "no start joined a namespace made after the closing"
    );
    for file in &ours {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        assert_eq!(
            link.to_string_lossy(),
            "/dev/null",
            "fd {}",
            file.as_raw_fd()
        );
    }
}

/// What /proc/self/fd says descriptor `fd` refers to.
fn link_of(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A process forked from one holding network namespaces made ahead holds copies of their
/// descriptors. Joining one would put a sandbox of each process in the same namespace: the
/// child makes its own instead.
fn a_forked_process_never_joins_its_parents_network_namespaces() {
    // Let the library's background thread finish its work (nothing held across the fork).
    let mut held = Vec::new();
    for _ in 0..100 {
        run(&sh("true"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now: Vec<String> = fds_to(&["net:["]).into_iter().map(link_of).collect();
        if now.len() >= 2 && now == held {
            break;
        }
        held = now;
    }
    assert!(!held.is_empty(), "no network namespace was made ahead");
    let script = "readlink /proc/self/ns/net";
    let mut pipe = [0; 2];
    // SAFETY: pipe fills the two-element array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child runs sandboxes (the library supports a forked caller), writes to the pipe
    // and leaves with _exit, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut text = String::new();
        for _ in 0..3 {
            let r = rsandbox::run(&sh(script)).expect("run in the forked child");
            text.push_str(&out(&r));
        }
        // SAFETY: writing a buffer we own to our end of the pipe, then leaving.
        unsafe {
            libc::write(pipe[1], text.as_ptr().cast(), text.len());
            libc::_exit(0);
        }
    }
    assert!(pid > 0, "fork");
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(pipe[1]) };
    // SAFETY: the read end is ours; File takes it.
    let mut reader = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(pipe[0]) };
    let mut child_saw = String::new();
    std::io::Read::read_to_string(&mut reader, &mut child_saw).unwrap();
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(status, 0, "the forked child failed: {child_saw}");
    assert_eq!(child_saw.lines().count(), 3, "{child_saw}");
    for ns in child_saw.lines() {
        assert!(
            !held.iter().any(|h| h == ns),
            "the forked child joined its parent's {ns}"
        );
    }
    // Negative control: this process's next start does join one of them.
    let r = run(&sh(script));
    let ns = out(&r);
    assert!(
        held.iter().any(|h| *h == ns.trim_end()),
        "the parent's start did not join a namespace it made ahead: {ns} not in {held:?}"
    );
}
