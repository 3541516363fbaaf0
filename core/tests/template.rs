//! Sandboxes of the default host view start from a template of their mount tree, built once per
//! process: its mounts are shared, read-only and locked; each sandbox's scratch filesystems and
//! /proc are its own. These run as root and as an unprivileged user.

mod common;

use common::*;
use rsandbox::{Feature, Landlock, Mount, RunResult, Seccomp, Spec, Status, Stdio, Want};

fn template_feature(r: &RunResult) -> Option<Feature> {
    r.report
        .features
        .iter()
        .find(|f| f.name == "mount-template")
        .cloned()
}

/// Prints how /dev is mounted: `ro` or `rw`.
const DEV_MODE: &str = "grep ' /dev tmpfs ' /proc/self/mounts | cut -d' ' -f4 | cut -d, -f1";

/// A template is made at the second start of a kind of tree: this is a first one.
fn warm_up() {
    let r = run(&sh("true"));
    assert!(r.status.success(), "{}", err(&r));
}

/// Whether `r` came from a template (after warm_up); a skip (with why) where this lane builds
/// trees in full.
fn from_template(r: &RunResult) -> bool {
    match template_feature(r) {
        Some(f) if f.status == Status::Enforced => true,
        Some(f) => {
            skip(&format!("no template here: {}", f.detail));
            false
        }
        None => {
            // Only a start that copies the caller goes without, or root's start into a cgroup
            // (see sandbox.rs: root may not enter a delegated cgroup from the template's user
            // namespace).
            let start = r.report.feature("start-without-copy").cloned();
            let copied = start.as_ref().is_some_and(|s| s.status != Status::Enforced);
            let root_in_cgroup = nix::unistd::geteuid().is_root()
                && r.report
                    .feature("cgroup")
                    .is_some_and(|c| c.status == Status::Enforced);
            assert!(
                copied || root_in_cgroup,
                "no mount-template entry although the start did not copy the caller: {start:?}"
            );
            false
        }
    }
}

#[test]
fn sandboxes_share_the_template_and_nothing_one_writes_reaches_the_next() {
    warm_up();
    use std::io::{BufRead, BufReader};
    let probe = "stat -c %d / /usr /dev /proc /tmp /run /work /dev/shm";
    // The first sandbox stays alive (waiting on its stdin) while the second runs: the kernel
    // would otherwise give the second's filesystems the device numbers the first's just freed.
    let mut first = sh(&format!(
        "{probe} && echo a >/tmp/a && echo a >/run/a && echo a >/work/a && echo a >/dev/shm/a \
         && ! touch /dev/a 2>/dev/null && ! mkdir /a 2>/dev/null && echo ready && {{ read x || true; }}"
    ));
    first.process.stdin = Stdio::Pipe;
    first.process.stdout = Stdio::Pipe;
    let mut child = rsandbox::spawn(&first).expect("spawn");
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("read");
        if line == "ready" {
            break;
        }
        lines.push(line);
    }
    let second = run(&sh(&format!(
        "{probe} && ls -A /tmp /run /work /dev/shm && ls /dev | tr '\\n' ' '"
    )));
    drop(child.stdin.take());
    let done = child.wait().expect("wait");
    if !from_template(&done) {
        return;
    }
    assert!(done.status.success(), "{lines:?} {}", err(&done));
    assert!(second.status.success(), "{}", err(&second));
    let theirs = out(&second);
    let b: Vec<&str> = theirs.lines().collect();
    // The template's filesystems (/, /usr, /dev) are the same ones in both...
    assert_eq!(lines[..3], b[..3], "first: {lines:?}\nsecond:\n{theirs}");
    // ...while /proc and the scratch filesystems are each sandbox's own.
    for (i, path) in ["/proc", "/tmp", "/run", "/work", "/dev/shm"]
        .iter()
        .enumerate()
    {
        assert_ne!(lines[3 + i], b[3 + i], "{path} is shared: {lines:?} {b:?}");
    }
    assert!(
        !theirs.contains("\na\n") && !theirs.contains(" a "),
        "{theirs}"
    );
    assert!(b.last().unwrap_or(&"").contains("null"), "{theirs}");
}

#[test]
fn dev_and_the_root_are_read_only_and_the_report_says_so() {
    warm_up();
    let r = run(&sh("touch /dev/x; touch /x; echo > /dev/null && echo ok"));
    if !from_template(&r) {
        return;
    }
    let text = err(&r);
    assert_eq!(text.matches("Read-only file system").count(), 2, "{text}");
    assert_eq!(out(&r), "ok\n", "writing to device nodes still works");
    let dev = r
        .report
        .mounts
        .iter()
        .find(|m| m.destination == "/dev")
        .expect("a /dev entry");
    assert!(dev.options.contains(&"ro".to_string()), "{dev:?}");
    let mnt = r.report.feature("namespace.mnt").expect("namespace.mnt");
    assert!(mnt.detail.contains("template"), "{mnt:?}");
}

#[test]
fn template_mounts_are_locked_even_for_a_command_with_cap_sys_admin() {
    warm_up();
    // A command keeping CAP_SYS_ADMIN, without seccomp or Landlock (both would refuse mount
    // changes on their own), may change the mounts it made itself but not the template's: the
    // kernel locked them when it copied them into the sandbox's less privileged namespace.
    let mut spec = sh("mount -o remount,bind,ro /tmp && echo own-changed; \
         mount -o remount,bind,rw /dev 2>&1; mount -o remount,bind,rw / 2>&1; \
         umount /usr 2>&1; grep -E ' /(dev|usr)? ' /proc/self/mounts");
    // Root inside: mount(8) refuses other users before asking the kernel.
    spec.user.uid = Some(0);
    spec.user.gid = Some(0);
    spec.security.capabilities = vec!["CAP_SYS_ADMIN".into()];
    spec.security.seccomp = Seccomp::None;
    spec.security.landlock = Landlock {
        want: Want::Off,
        ..Default::default()
    };
    let r = run(&spec);
    if !from_template(&r) {
        return;
    }
    let text = out(&r);
    assert!(text.contains("own-changed"), "negative control: {text}");
    assert!(
        !text.contains(" /dev tmpfs rw"),
        "/dev was made writable: {text}"
    );
    assert!(!text.contains(" / tmpfs rw"), "/ was made writable: {text}");
    assert!(text.contains(" /usr "), "/usr was unmounted: {text}");
}

#[test]
fn a_filesystem_other_than_the_default_view_is_built_in_full() {
    // Negative control of the template's reach: a caller's mount makes the tree the sandbox's own.
    let mut spec = sh(DEV_MODE);
    spec.filesystem.mounts.push(Mount::Tmpfs {
        destination: "/scratch".into(),
        size: None,
        mode: None,
    });
    let r = run(&spec);
    assert!(r.status.success(), "{}", err(&r));
    assert_eq!(
        out(&r),
        "rw\n",
        "/dev is the sandbox's own, not the template's"
    );
    assert!(template_feature(&r).is_none(), "{:?}", template_feature(&r));
    let mnt = r.report.feature("namespace.mnt").expect("namespace.mnt");
    assert!(mnt.detail.contains("pivot_root"), "{mnt:?}");
}

#[test]
fn a_tree_asked_to_be_built_in_full_is() {
    warm_up();
    let mut spec = sh(DEV_MODE);
    spec.filesystem.template = false;
    for _ in 0..2 {
        let r = run(&spec);
        assert_eq!(out(&r), "rw\n", "{}", err(&r));
        assert!(template_feature(&r).is_none(), "{:?}", template_feature(&r));
    }
}

/// For the root-only tests that change mounts: an empty directory under the host view's /opt, a
/// spec listing it (without a cgroup: root starting into one makes no template) and that spec's
/// second run, which came from a template. None (and why) when not root.
fn template_listing(tag: &str, why_root: &str) -> Option<(String, Spec, RunResult)> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("root only: {why_root}");
        return None;
    }
    let dir = format!("/opt/rsbx-{tag}-{}", std::process::id());
    std::fs::create_dir_all(&dir).unwrap();
    let mut look = Spec::new(["/bin/ls", "-A", dir.as_str()]);
    look.cgroup.want = Want::Off;
    run(&look);
    let second = run(&look);
    assert!(from_template(&second), "{:?}", second.report);
    Some((dir, look, second))
}

#[test]
fn a_change_to_the_callers_mounts_reaches_the_next_sandbox() {
    // Needs a mount in the caller's own namespace (the unprivileged lane has none of its own).
    let Some((dir, look, before)) = template_listing(
        "template",
        "an unprivileged caller cannot change its mount table",
    ) else {
        return;
    };
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "rsbx-template", &dir])
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mount tmpfs on {dir}");
    let result = std::panic::catch_unwind(|| {
        std::fs::write(format!("{dir}/marker"), "x").unwrap();
        let after = run(&look);
        (out(&before), out(&after), from_template(&after))
    });
    let _ = std::process::Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir(&dir);
    let (before, after, templated) = result.unwrap();
    assert!(templated);
    assert_eq!(before, "");
    assert_eq!(
        after, "marker\n",
        "the template still shows the mount table of before"
    );
}

#[test]
fn a_thread_in_a_mount_namespace_of_its_own_gets_its_own_view() {
    // A thread may unshare its mount namespace (root only here): its sandboxes show its mounts,
    // not a template made from the process's (made first).
    let Some((dir, look, _)) = template_listing(
        "thread",
        "an unprivileged thread cannot make a mount namespace of its own",
    ) else {
        return;
    };
    let inside = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare and mount with valid arguments; they change this thread only.
            unsafe {
                assert_eq!(libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS), 0);
                let none = std::ptr::null::<libc::c_void>();
                let private = libc::MS_REC | libc::MS_PRIVATE;
                assert_eq!(
                    libc::mount(none.cast(), c"/".as_ptr(), none.cast(), private, none),
                    0
                );
                let target = std::ffi::CString::new(dir.as_str()).unwrap();
                let tmpfs = c"tmpfs".as_ptr();
                assert_eq!(libc::mount(tmpfs, target.as_ptr(), tmpfs, 0, none), 0);
            }
            std::fs::write(format!("{dir}/marker"), "x").unwrap();
            // Twice: the second start of a kind is the one a template would serve.
            let first = run(&look);
            let second = run(&look);
            (out(&first), out(&second), from_template(&second))
        })
        .join()
        .unwrap()
    });
    let outside = run(&look);
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(inside.0, "marker\n");
    assert_eq!(
        inside.1, "marker\n",
        "the thread's second sandbox shows another view"
    );
    assert_eq!(
        out(&outside),
        "",
        "the thread's mount leaked to the process's view"
    );
    let _ = inside.2;
}

/// Whether the start joined a network namespace made ahead of it (the report says so).
fn net_made_ahead(report: &rsandbox::Report) -> bool {
    report
        .feature("namespace.net")
        .is_some_and(|f| f.detail.contains("made ahead"))
}

/// Reads `child`'s stdout up to a line "ready"; returns the lines before it.
fn lines_until_ready(child: &mut rsandbox::Child) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut lines = Vec::new();
    let stdout = child.stdout.take().expect("stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read");
        if line == "ready" {
            return lines;
        }
        lines.push(line);
    }
    panic!("no ready line: {lines:?}");
}

/// A running sandbox of `spec` that joined a network namespace made ahead. They are made in the
/// background once a start has taken one: a few starts, a few milliseconds apart, find one.
fn spawn_on_net_ahead(spec: &Spec) -> rsandbox::Child {
    for _ in 0..100 {
        let mut child = rsandbox::spawn(spec).expect("spawn");
        if net_made_ahead(child.report()) {
            return child;
        }
        drop(child.stdin.take());
        child.kill(libc::SIGKILL).expect("kill");
        child.wait().expect("wait");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no start joined a network namespace made ahead in 100 tries");
}

/// The network namespace of this process, as /proc shows it (net:[inode]).
fn own_net() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn network_namespaces_made_ahead_are_new_and_each_sandbox_has_its_own() {
    // Without a cgroup: root starting into one makes no template.
    let mut probe = sh("true");
    probe.cgroup.want = Want::Off;
    run(&probe);
    if !from_template(&run(&probe)) {
        return;
    }
    let mut spec = sh(
        "readlink /proc/self/ns/net; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; \
         echo ready; read x || true",
    );
    spec.cgroup.want = Want::Off;
    spec.process.stdin = Stdio::Pipe;
    spec.process.stdout = Stdio::Pipe;
    // Two alive at once: the kernel could give a namespace freed before the inode of the next.
    let mut a = spawn_on_net_ahead(&spec);
    let mut b = spawn_on_net_ahead(&spec);
    let (seen_a, seen_b) = (lines_until_ready(&mut a), lines_until_ready(&mut b));
    for child in [&mut a, &mut b] {
        drop(child.stdin.take());
        assert!(child.wait().expect("wait").status.success());
    }
    assert_eq!(seen_a[1..], ["lo"], "only loopback: {seen_a:?}");
    assert_eq!(seen_b[1..], ["lo"], "only loopback: {seen_b:?}");
    assert!(seen_a[0].starts_with("net:["), "{seen_a:?}");
    assert_ne!(
        seen_a[0], seen_b[0],
        "two sandboxes share a network namespace"
    );
    assert_ne!(
        seen_a[0],
        own_net(),
        "a sandbox is in the caller's network namespace"
    );
    assert_ne!(
        seen_b[0],
        own_net(),
        "a sandbox is in the caller's network namespace"
    );

    // Loopback is up in it: the kernel has made 127.0.0.1's local route, which it does when lo
    // comes up (a namespace with lo down has none); and where python3 is at hand, a TCP
    // connection to 127.0.0.1 succeeds.
    let mut spec = sh("grep -c '127.0.0.1' /proc/net/fib_trie; \
         test -x /usr/bin/python3 && exec python3 -c \"import socket; s=socket.socket(); \
         s.bind(('127.0.0.1',0)); s.listen(); \
         c=socket.create_connection(s.getsockname(), timeout=5); print('connected')\"");
    spec.cgroup.want = Want::Off;
    spec.timeout = Some(30.0);
    spec.process.stdout = Stdio::Pipe;
    let mut child = spawn_on_net_ahead(&spec);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).unwrap();
    let status = child.wait().expect("wait").status;
    let mut lines = text.lines();
    let routes: u32 = lines.next().unwrap_or("").parse().unwrap_or(0);
    assert!(
        routes > 0,
        "no local route to 127.0.0.1: lo is down ({text:?})"
    );
    if std::path::Path::new("/usr/bin/python3").exists() {
        assert!(status.success(), "{text:?}");
        assert_eq!(lines.next(), Some("connected"), "{text:?}");
    } else {
        eprintln!("no python3 here: loopback checked by its route only");
    }
}

#[test]
fn a_command_keeping_a_capability_makes_its_own_network_namespace() {
    // Over a namespace made ahead (owned by the template's user namespace) the command would hold
    // no capability: one that keeps any gets a namespace of its own user namespace instead.
    let mut probe = sh("true");
    probe.cgroup.want = Want::Off;
    run(&probe);
    if !from_template(&run(&probe)) {
        return;
    }
    // Negative control: the same start without the capability does join one.
    let mut plain = sh("true");
    plain.cgroup.want = Want::Off;
    let mut child = spawn_on_net_ahead(&plain);
    assert!(child.wait().expect("wait").status.success());

    let mut spec = sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '");
    spec.cgroup.want = Want::Off;
    spec.security.capabilities = vec!["CAP_NET_BIND_SERVICE".into()];
    for _ in 0..20 {
        let r = run(&spec);
        assert_eq!(out(&r), "lo\n", "{}", err(&r));
        assert!(from_template(&r));
        let net = r.report.feature("namespace.net").expect("namespace.net");
        assert!(!net_made_ahead(&r.report), "{net:?}");
        assert_eq!(net.status, Status::Enforced, "{net:?}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
