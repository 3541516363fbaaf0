//! A host that ignores SIGCHLD (its children are then reaped by the kernel as they exit) or
//! reaps every child from a SIGCHLD handler still gets every sandbox's result, and the sandbox
//! never inherits the host's handling of SIGCHLD.
//!
//! The disposition of SIGCHLD belongs to the whole process, so this file holds one test, which
//! tries each host in turn, with starts from the mount tree's template and without one.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;

use common::{busybox_rootfs, fuse_usable, gone_within, out, sh, skip, subordinate_ids_missing};
use rsandbox::{ExitStatus, IdMapping, Overlay, OverlayDriver, Root, Spec, Upper, Verdict};

/// Children reaped by the host's handler, sandboxes' or not.
static REAPED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn reap_every_child(_: libc::c_int) {
    // SAFETY: waitpid with a null status pointer and WNOHANG is async-signal-safe.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {
        REAPED.fetch_add(1, Ordering::SeqCst);
    }
}

fn set_sigchld(handler: libc::sighandler_t) {
    // SAFETY: a zeroed sigaction with a valid handler (SIG_IGN or an async-signal-safe
    // function) and SA_RESTART.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler;
        act.sa_flags = libc::SA_RESTART;
        assert_eq!(
            libc::sigaction(libc::SIGCHLD, &act, std::ptr::null_mut()),
            0
        );
    }
}

/// Runs a script with a wall-clock limit (a start that never reports ends there, as a failure).
#[track_caller]
fn run(script: &str, timeout: f64, template: bool) -> rsandbox::RunResult {
    let mut spec = sh(script);
    spec.timeout = Some(timeout);
    spec.filesystem.template = template;
    match rsandbox::run(&spec) {
        Ok(r) => r,
        Err(e) => panic!("{script:?} (template {template}): {e}"),
    }
}

/// SIGCHLD's bit in a /proc/PID/status signal mask.
const SIGCHLD_BIT: u64 = 1 << (libc::SIGCHLD - 1);

/// The SigIgn mask of a /proc/PID/status text, for `pid` ("self" or "1").
fn ignored(status_lines: &str, which: &str) -> u64 {
    let line = status_lines
        .lines()
        .find(|l| l.starts_with(which))
        .unwrap_or_else(|| panic!("no {which} line in {status_lines:?}"));
    let hex = line.split_whitespace().last().expect("mask");
    u64::from_str_radix(hex, 16).expect("hex mask")
}

fn every_result_arrives(host: &str) {
    eprintln!("host: {host}");
    // A range mapping: the maps are written by the caller (through newuidmap and newgidmap,
    // which are its children, as a user).
    match subordinate_ids_missing() {
        Some(why) => skip(&why),
        None => {
            let mut spec = sh("cat /proc/self/uid_map /proc/self/gid_map | wc -l; exit 4");
            spec.user.mapping = IdMapping::SubordinateRange;
            spec.timeout = Some(20.0);
            let r = rsandbox::run(&spec).unwrap_or_else(|e| panic!("{host}, range mapping: {e}"));
            assert_eq!(
                r.status,
                ExitStatus::Exited(4),
                "{host}: {}",
                common::err(&r)
            );
            assert_eq!(out(&r).trim(), "4", "{host}");
        }
    }
    // A fuse-overlayfs root: its daemon is another child of this process, stopped and waited
    // for when the sandbox has ended (and whose exit the host may take first).
    if let Some(lower) = busybox_rootfs().filter(|_| fuse_usable()) {
        let mut spec = Spec::new([
            "/bin/sh",
            "-c",
            "echo layered > /etc/written; cat /etc/marker /etc/written; exit 6",
        ]);
        spec.filesystem.root = Root::Overlay(Overlay {
            lowers: vec![lower.path().to_path_buf()],
            image: None,
            upper: Upper::default(),
            driver: OverlayDriver::Fuse,
        });
        spec.timeout = Some(60.0);
        let r = rsandbox::run(&spec).unwrap_or_else(|e| panic!("{host}, fuse-overlayfs: {e}"));
        assert_eq!(
            r.status,
            ExitStatus::Exited(6),
            "{host}, fuse-overlayfs: {}",
            common::err(&r)
        );
        assert_eq!(
            out(&r),
            "busybox-rootfs\nlayered\n",
            "{host}, fuse-overlayfs"
        );
        assert!(
            !lower.path().join("etc/written").exists(),
            "{host}: the write reached the lower layer"
        );
        // Its command line names the lower layer.
        assert!(
            gone_within(&lower.arg(), Duration::from_secs(10)),
            "{host}: fuse-overlayfs still runs after the sandbox ended"
        );
    }
    for (round, template) in [false, true, true, false].into_iter().enumerate() {
        let what = format!("{host}, round {round}, template {template}");
        let run = |script: &str, timeout: f64| run(script, timeout, template);
        let r = run("exit 0", 20.0);
        assert_eq!(r.verdict, Verdict::Ok, "{what}: {r:?}");
        let r = run("exit 3", 20.0);
        assert_eq!(r.status, ExitStatus::Exited(3), "{what}");
        let r = run("kill -9 $$", 20.0);
        assert_eq!(r.status, ExitStatus::Signaled(libc::SIGKILL), "{what}");
        assert_eq!(r.verdict, Verdict::Signaled, "{what}");

        // Neither the command nor the sandbox's init ignores SIGCHLD, and a shell in the sandbox
        // gets its child's status.
        let r = run(
            "sh -c 'exit 5'; echo status $?; grep SigIgn /proc/self/status; \
             echo init; grep SigIgn /proc/1/status",
            20.0,
        );
        let text = out(&r);
        assert!(text.contains("status 5"), "{what}: {text:?}");
        let (command, init) = text.split_once("init").expect("two parts");
        assert_eq!(
            ignored(command, "SigIgn") & SIGCHLD_BIT,
            0,
            "{what}: {text:?}"
        );
        assert_eq!(ignored(init, "SigIgn") & SIGCHLD_BIT, 0, "{what}: {text:?}");

        // Killed at the wall-clock limit: the init ends the sandbox and reports the status and
        // usage before it exits, so they reach the result whoever reaps the init.
        let r = run("sleep 30", 0.3);
        assert_eq!(r.verdict, Verdict::WallTimeout, "{what}: {r:?}");
        assert_eq!(r.status, ExitStatus::Signaled(libc::SIGKILL), "{what}");
        let lost = r.report.feature("result.usage");
        assert!(lost.is_none(), "{what}: {lost:?}");
    }
}

#[test]
fn a_host_ignoring_or_reaping_every_child_gets_every_result() {
    // Control: the default disposition.
    every_result_arrives("default SIGCHLD");

    set_sigchld(libc::SIG_IGN);
    every_result_arrives("SIGCHLD ignored");

    set_sigchld(reap_every_child as *const () as libc::sighandler_t);
    every_result_arrives("SIGCHLD handler reaping every child");
    set_sigchld(libc::SIG_DFL);
    eprintln!(
        "the handler reaped {} processes",
        REAPED.load(Ordering::SeqCst)
    );
}
