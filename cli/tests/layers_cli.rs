//! The CLI's layered-root and limit options: what they put in the spec and what the user sees.

mod common;

use std::path::Path;

use common::*;

fn layer(dir: &Path, name: &str, files: &[(&str, &str)]) -> String {
    let root = dir.join(name);
    for (path, content) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    root.display().to_string()
}

/// A bottom layer holding static busybox as /bin/sh (the overlay root has nothing else).
fn base(dir: &Path) -> Option<String> {
    let Some(bb) = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        skip("busybox-static is not installed (apt-get install busybox-static)");
        return None;
    };
    let root = dir.join("base");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(bb, root.join("bin/busybox")).unwrap();
    for tool in ["sh", "cat", "echo", "rm", "dd", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/shadowed"), "base\n").unwrap();
    std::fs::write(root.join("etc/doomed"), "doomed\n").unwrap();
    Some(root.display().to_string())
}

#[test]
fn overlay_reads_through_layers_and_reports_the_driver() {
    let dir = TempDir::new("cli-overlay");
    let Some(base) = base(dir.path()) else { return };
    let top = layer(dir.path(), "top", &[("etc/shadowed", "top\n")]);
    let lowers = format!("{top}:{base}");
    let r = rsandbox(&[
        "run",
        "--report",
        "--overlay",
        &lowers,
        "--overlay-driver",
        "kernel",
        "--",
        "/bin/sh",
        "-c",
        "cat /etc/shadowed; echo new > /etc/new",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "top\n");
    assert!(
        r.stderr.lines().any(|l| l.starts_with("mount /")
            && l.contains("overlay")
            && l.contains("kernel overlayfs")),
        "{}",
        r.stderr
    );
    assert!(
        !Path::new(&top).join("etc/new").exists(),
        "a write reached a lower layer"
    );
}

#[test]
fn persistent_upper_and_diff() {
    let dir = TempDir::new("cli-diff");
    let Some(base) = base(dir.path()) else { return };
    let upper = dir.path().join("upper").display().to_string();
    let r = rsandbox(&[
        "run",
        "--overlay",
        &base,
        "--upper",
        &upper,
        "--",
        "/bin/sh",
        "-c",
        "echo more >> /etc/shadowed; echo n > /etc/new; rm /etc/doomed",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let d = rsandbox(&["diff", &upper]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_eq!(d.stdout, "A /etc/new\nM /etc/shadowed\nD /etc/doomed\n");
    let j = rsandbox(&["diff", "--json", "--lower", &base, &upper]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["deleted"][0], "/etc/doomed");
    let missing = rsandbox(&["diff", "/nonexistent/upper"]);
    assert_eq!(missing.code, 125);
    assert!(
        missing.stderr.contains("/nonexistent/upper"),
        "{}",
        missing.stderr
    );
}

#[test]
fn upper_size_caps_the_ephemeral_upper() {
    let dir = TempDir::new("cli-size");
    let Some(base) = base(dir.path()) else { return };
    let r = rsandbox(&[
        "run",
        "--overlay",
        &base,
        "--overlay-driver",
        "kernel",
        "--upper-size",
        "1M",
        "--",
        "/bin/sh",
        "-c",
        "dd if=/dev/zero of=/big bs=65536 count=32",
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    let bad = rsandbox(&[
        "run",
        "--overlay",
        &base,
        "--upper-size",
        "12Q",
        "--",
        "true",
    ]);
    assert_eq!(bad.code, 125, "{}", bad.stderr);
}

#[test]
fn layer_options_need_a_layered_root() {
    let r = rsandbox(&["run", "--upper", "/tmp/x", "--", "true"]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("--overlay"), "{}", r.stderr);
    let r = rsandbox(&["run", "--image", "/tmp/x", "--rootfs", "/tmp", "--", "true"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
}

#[test]
fn overlay_options_round_trip_through_the_spec() {
    let dir = TempDir::new("cli-spec");
    let printed = rsandbox(&[
        "run",
        "--print-spec",
        "--overlay",
        "/a:/b",
        "--upper",
        "/u",
        "--overlay-driver",
        "fuse",
        "--memory",
        "64M",
        "--limits",
        "best-effort",
        "--seccomp",
        "none",
        "--cap-keep",
        "CAP_CHOWN",
        "--",
        "true",
    ]);
    assert_eq!(printed.code, 0, "{}", printed.stderr);
    let v: serde_json::Value = serde_json::from_str(&printed.stdout).unwrap();
    let ov = &v["filesystem"]["root"]["overlay"];
    assert_eq!(ov["lowers"], serde_json::json!(["/a", "/b"]));
    assert_eq!(ov["upper"]["persistent"]["path"], "/u");
    assert_eq!(ov["driver"], "fuse");
    assert_eq!(v["limits"]["memory"], 64 << 20);
    assert_eq!(v["limits"]["level"], "best-effort");
    assert_eq!(v["security"]["seccomp"], "none");
    let file = dir.path().join("spec.json");
    std::fs::write(&file, &printed.stdout).unwrap();
    let again = rsandbox(&["run", "--print-spec", "--spec", file.to_str().unwrap()]);
    assert_eq!(again.stdout, printed.stdout);
}

#[test]
fn best_effort_limits_run_and_required_limits_explain() {
    let nowhere = "/sys/fs/cgroup/rsandbox-no-such-parent";
    let r = rsandbox(&[
        "run",
        "--cgroup-parent",
        nowhere,
        "--memory",
        "64M",
        "--",
        "true",
    ]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("remedy"), "{}", r.stderr);
    let r = rsandbox(&[
        "run",
        "--cgroup-parent",
        nowhere,
        "--memory",
        "64M",
        "--limits",
        "best-effort",
        "--report",
        "--",
        "true",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.lines().any(|l| l.starts_with("limit.memory")
            && l.contains("SKIPPED")
            && l.contains("RLIMIT_AS")),
        "{}",
        r.stderr
    );
}

#[test]
fn tmpfs_size_cap() {
    let r = run_sh(
        &["--tmpfs", "/scratch:1M"],
        "dd if=/dev/zero of=/scratch/x bs=65536 count=32",
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    let r = run_sh(&["--tmpfs", "/scratch:1X"], "true");
    assert_eq!(r.code, 125, "{}", r.stderr);
}
