//! Layered roots: kernel overlayfs and fuse-overlayfs, ephemeral and persistent uppers, diff, and
//! the promise that lower layers are never modified.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use rsandbox::{ErrorKind, Overlay, OverlayDriver, Root, Spec, Status, Upper};

/// Three layers (bottom: busybox; middle; top), every file owned by the caller.
struct Layers {
    _dir: TempDir,
    bottom: PathBuf,
    middle: PathBuf,
    top: PathBuf,
}

fn layers() -> Option<Layers> {
    let bottom_fs = busybox_rootfs()?;
    let dir = TempDir::new("layers");
    let bottom = dir.path().join("bottom");
    std::fs::rename(bottom_fs.path(), &bottom).unwrap();
    std::mem::forget(bottom_fs); // moved into dir
    for d in ["run", "data/keep", "data/gone"] {
        std::fs::create_dir_all(bottom.join(d)).unwrap();
    }
    std::fs::write(bottom.join("data/base.txt"), "bottom\n").unwrap();
    std::fs::write(bottom.join("data/shadowed.txt"), "bottom\n").unwrap();
    std::fs::write(bottom.join("data/keep/k"), "keep\n").unwrap();
    std::fs::write(bottom.join("data/gone/g"), "gone\n").unwrap();
    let middle = dir.path().join("middle");
    std::fs::create_dir_all(middle.join("data")).unwrap();
    std::fs::write(middle.join("data/shadowed.txt"), "middle\n").unwrap();
    std::fs::write(middle.join("data/mid.txt"), "middle\n").unwrap();
    let top = dir.path().join("top");
    std::fs::create_dir_all(top.join("data")).unwrap();
    std::fs::write(top.join("data/top.txt"), "top\n").unwrap();
    Some(Layers {
        _dir: dir,
        bottom,
        middle,
        top,
    })
}

/// Runs `script` over the layers with `upper` as the persistent upper; then its diff.
fn run_then_diff(l: &Layers, driver: OverlayDriver, upper: &Path, script: &str) -> rsandbox::Diff {
    let path = upper.to_path_buf();
    let r = run(&overlay_spec(l, driver, Upper::Persistent { path }, script));
    assert!(r.status.success(), "{driver:?}: {}", err(&r));
    rsandbox::diff(upper, &[]).unwrap()
}

fn overlay_spec(l: &Layers, driver: OverlayDriver, upper: Upper, script: &str) -> Spec {
    let mut spec = Spec::new(["/bin/sh", "-c", script]);
    spec.filesystem.root = Root::Overlay(Overlay {
        lowers: vec![l.top.clone(), l.middle.clone(), l.bottom.clone()],
        image: None,
        upper,
        driver,
    });
    spec.timeout = Some(60.0);
    spec
}

fn drivers() -> Vec<OverlayDriver> {
    let mut d = vec![OverlayDriver::Kernel];
    if fuse_usable() {
        d.push(OverlayDriver::Fuse);
    }
    d
}

/// Every entry of a tree with its type, mode, size, content hash and link target.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let desc = if meta.is_dir() {
                walk(root, &path, out);
                format!("dir {:o}", meta.mode())
            } else if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else {
                let mut data = Vec::new();
                std::fs::File::open(&path)
                    .unwrap()
                    .read_to_end(&mut data)
                    .unwrap();
                let sum = data.iter().fold(0xcbf29ce484222325u64, |h, b| {
                    (h ^ *b as u64).wrapping_mul(0x100000001b3)
                });
                format!(
                    "file {:o} {} {:x} links={} mtime={}",
                    meta.mode(),
                    meta.len(),
                    sum,
                    meta.nlink(),
                    meta.mtime()
                )
            };
            out.insert(rel, desc);
        }
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn layers_stack_top_most_first_and_writes_stay_in_the_upper() {
    let Some(l) = layers() else { return };
    for driver in drivers() {
        let spec = overlay_spec(
            &l,
            driver,
            Upper::default(),
            "cat /data/shadowed.txt /data/base.txt /data/mid.txt /data/top.txt; echo new > /data/new.txt; cat /data/new.txt",
        );
        let r = run(&spec);
        assert!(r.status.success(), "{driver:?}: {}", err(&r));
        assert_eq!(out(&r), "middle\nbottom\nmiddle\ntop\nnew\n", "{driver:?}");
        assert!(!l.top.join("data/new.txt").exists());
        let root = r
            .report
            .mounts
            .iter()
            .find(|m| m.destination == "/")
            .unwrap();
        assert_eq!(root.kind, "overlay");
        let expect = if driver == OverlayDriver::Fuse {
            "fuse-overlayfs"
        } else {
            "kernel overlayfs"
        };
        assert!(root.source.starts_with(expect), "{driver:?}: {root:?}");
    }
}

#[test]
fn lower_layers_are_never_modified() {
    let Some(l) = layers() else { return };
    for driver in drivers() {
        let before: Vec<_> = [&l.bottom, &l.middle, &l.top]
            .iter()
            .map(|p| snapshot(p))
            .collect();
        // Write, delete, rename, chmod and hard-link files from every layer, and replace a directory.
        let script = "set -e
            echo more >> /data/base.txt
            echo more >> /data/mid.txt
            echo more >> /data/top.txt
            rm /data/shadowed.txt
            mv /data/mid.txt /data/moved.txt
            chmod 600 /data/top.txt
            ln /data/base.txt /data/hardlink.txt
            rm -r /data/gone
            mkdir /data/gone && echo replaced > /data/gone/new
            touch /data/keep/k
            rm /bin/ls
            echo ok";
        let r = run(&overlay_spec(&l, driver, Upper::default(), script));
        assert_eq!(out(&r), "ok\n", "{driver:?}: {}", err(&r));
        let after: Vec<_> = [&l.bottom, &l.middle, &l.top]
            .iter()
            .map(|p| snapshot(p))
            .collect();
        assert_eq!(before, after, "{driver:?}: a lower layer changed");
    }
}

#[test]
fn persistent_upper_holds_exactly_the_changes_and_stacks_as_a_lower() {
    let Some(l) = layers() else { return };
    for driver in drivers() {
        let up = TempDir::new("upper");
        let upper = up.path().join("changes");
        let script = "echo more >> /data/base.txt; rm /data/mid.txt; mkdir -p /data/d/e; echo f > /data/d/e/f; ln -s top.txt /data/link";
        let d = run_then_diff(&l, driver, &upper, script);
        assert_eq!(
            d.added,
            ["/data/d", "/data/d/e", "/data/d/e/f", "/data/link"],
            "{driver:?}"
        );
        assert_eq!(d.modified, ["/data/base.txt"], "{driver:?}");
        assert_eq!(d.deleted, ["/data/mid.txt"], "{driver:?}");
        // Nothing of the sandbox's own mount points was recorded.
        let top: Vec<String> = std::fs::read_dir(&upper)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(top, ["data"], "{driver:?}");

        // The upper, stacked as a lower of the next run, replays the changes.
        let mut spec = overlay_spec(
            &l,
            driver,
            Upper::default(),
            "cat /data/base.txt /data/d/e/f; test -e /data/mid.txt && echo mid-visible; true",
        );
        if let Root::Overlay(ov) = &mut spec.filesystem.root {
            ov.lowers.insert(0, upper.clone());
        }
        let r = run(&spec);
        assert_eq!(out(&r), "bottom\nmore\nf\n", "{driver:?}: {}", err(&r));
    }
}

#[test]
fn a_killed_sandbox_keeps_completed_writes_in_a_persistent_upper() {
    let Some(l) = layers() else { return };
    for driver in drivers() {
        let up = TempDir::new("killed");
        let upper = up.path().join("u");
        let m = marker();
        let mut spec = overlay_spec(
            &l,
            driver,
            Upper::Persistent {
                path: upper.clone(),
            },
            // The marker reaches only sleep's argv (not sh's), so seeing it means the write is done.
            &format!("m={m}; echo done > /data/written.txt; sleep 500$m"),
        );
        spec.process.stdout = rsandbox::Stdio::Null;
        let mut child = rsandbox::spawn(&spec).unwrap();
        let start = Instant::now();
        while pids_with(&format!("sleep 500{m}")).is_empty()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill(libc::SIGKILL).unwrap();
        child.wait().unwrap();
        assert_eq!(
            std::fs::read_to_string(upper.join("data/written.txt")).unwrap(),
            "done\n",
            "{driver:?}"
        );
    }
}

#[test]
fn a_full_ephemeral_upper_gives_enospc_and_keeps_earlier_writes() {
    let Some(l) = layers() else { return };
    let script = "echo first > /data/first.txt
        dd if=/dev/zero of=/data/big bs=65536 count=32 && echo big-fit
        cat /data/first.txt";
    for driver in drivers() {
        let spec = overlay_spec(
            &l,
            driver,
            Upper::Ephemeral {
                size: Some(1 << 20),
            },
            script,
        );
        let r = run(&spec);
        let text = out(&r);
        assert!(
            !text.contains("big-fit"),
            "{driver:?}: 2 MiB fit in a 1 MiB upper: {text}"
        );
        assert!(
            err(&r).contains("No space left on device"),
            "{driver:?}: {}",
            err(&r)
        );
        assert!(
            text.ends_with("first\n"),
            "{driver:?}: earlier write lost: {text}"
        );
    }
}

#[test]
fn auto_driver_uses_the_kernel_here() {
    let Some(l) = layers() else { return };
    let r = run(&overlay_spec(
        &l,
        OverlayDriver::Auto,
        Upper::default(),
        "true",
    ));
    let root = r
        .report
        .mounts
        .iter()
        .find(|m| m.destination == "/")
        .unwrap();
    assert!(root.source.starts_with("kernel overlayfs"), "{root:?}");
    assert_eq!(root.status, Status::Enforced);
}

#[test]
fn fuse_daemon_is_invisible_to_the_sandbox() {
    let Some(l) = layers() else { return };
    if !fuse_usable() {
        return;
    }
    let r = run(&overlay_spec(
        &l,
        OverlayDriver::Fuse,
        Upper::default(),
        "ls /proc | grep -c '^[0-9]'",
    ));
    let count: u32 = out(&r).trim().parse().unwrap();
    assert!(
        count <= 4,
        "{count} processes visible (the fuse daemon must not be one): {}",
        err(&r)
    );
    let root = r
        .report
        .mounts
        .iter()
        .find(|m| m.destination == "/")
        .unwrap();
    assert!(
        root.detail.contains("outside the sandbox's PID namespace"),
        "{root:?}"
    );
}

#[test]
fn layer_names_with_commas_and_colons_work_with_the_kernel_driver() {
    let Some(l) = layers() else { return };
    let dir = TempDir::new("odd");
    let odd = dir.path().join("a,b:c\\d");
    std::fs::create_dir_all(odd.join("data")).unwrap();
    std::fs::write(odd.join("data/odd.txt"), "odd\n").unwrap();
    let mut spec = overlay_spec(
        &l,
        OverlayDriver::Kernel,
        Upper::default(),
        "cat /data/odd.txt",
    );
    if let Root::Overlay(ov) = &mut spec.filesystem.root {
        ov.lowers.insert(0, odd);
    }
    let r = run(&spec);
    assert_eq!(out(&r), "odd\n", "{}", err(&r));
}

#[test]
fn bad_overlay_input_is_refused_clearly() {
    let Some(l) = layers() else { return };
    // A missing lower.
    let mut spec = overlay_spec(&l, OverlayDriver::Kernel, Upper::default(), "true");
    if let Root::Overlay(ov) = &mut spec.filesystem.root {
        ov.lowers.push("/nonexistent/layer".into());
    }
    let e = rsandbox::spawn(&spec).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PathNotFound);
    assert!(e.to_string().contains("/nonexistent/layer"), "{e}");
    // A lower that is a file.
    let file = l.bottom.join("data/base.txt");
    let mut spec = overlay_spec(&l, OverlayDriver::Kernel, Upper::default(), "true");
    if let Root::Overlay(ov) = &mut spec.filesystem.root {
        ov.lowers.push(file);
    }
    assert_eq!(
        rsandbox::spawn(&spec).unwrap_err().kind(),
        ErrorKind::PathNotFound
    );
    // An upper inside a lower.
    let spec = overlay_spec(
        &l,
        OverlayDriver::Kernel,
        Upper::Persistent {
            path: l.top.join("upper"),
        },
        "true",
    );
    let e = rsandbox::spawn(&spec).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    assert!(e.to_string().contains("overlap"), "{e}");
    // Refused before anything is made in the lower.
    assert!(!l.top.join("upper").exists() && !l.top.join(".upper.work").exists());
    // A lower that is the upper's work directory beside it.
    let beside = l.top.parent().unwrap().join("beside");
    let work = l.top.parent().unwrap().join(".beside.work");
    std::fs::create_dir_all(&work).unwrap();
    let mut spec = overlay_spec(
        &l,
        OverlayDriver::Kernel,
        Upper::Persistent {
            path: beside.clone(),
        },
        "true",
    );
    if let Root::Overlay(ov) = &mut spec.filesystem.root {
        ov.lowers.push(work.clone());
    }
    let e = rsandbox::spawn(&spec).unwrap_err();
    assert!(e.to_string().contains("work directory"), "{e}");
    assert!(!beside.exists(), "{}", beside.display());
    // No lowers at all.
    let mut spec = overlay_spec(&l, OverlayDriver::Kernel, Upper::default(), "true");
    if let Root::Overlay(ov) = &mut spec.filesystem.root {
        ov.lowers.clear();
    }
    assert_eq!(
        rsandbox::spawn(&spec).unwrap_err().kind(),
        ErrorKind::InvalidSpec
    );
    // The upper's diff of a missing directory.
    assert_eq!(
        rsandbox::diff(Path::new("/nonexistent/upper"), &[])
            .unwrap_err()
            .kind(),
        ErrorKind::PathNotFound
    );
}

#[test]
fn inaccessible_dev_fuse_is_explained() {
    // Only meaningful where /dev/fuse is closed to this user; elsewhere there is nothing to show.
    let open_errno = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => {
            eprintln!("/dev/fuse is open to this user: nothing to check");
            return;
        }
        Err(e) => e.raw_os_error(),
    };
    let Some(l) = layers() else { return };
    let e = rsandbox::spawn(&overlay_spec(
        &l,
        OverlayDriver::Fuse,
        Upper::default(),
        "true",
    ))
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.to_string().contains("chmod 0666 /dev/fuse") || e.to_string().contains("fuse-overlayfs"),
        "{e}"
    );
    // Where the device is the cause (fuse-overlayfs installed), the error carries its errno.
    if std::path::Path::new("/usr/bin/fuse-overlayfs").exists() {
        assert_eq!(e.errno().map(|n| n as i32), open_errno, "{e}");
    }
}

#[test]
fn kernel_refusal_carries_its_errno() {
    // Real root can take a lower with mounts below it; a user namespace cannot (they are locked).
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("root can mount a lower with submounts: nothing to refuse");
        return;
    }
    let mut spec = Spec::new(["true"]);
    spec.filesystem.root = Root::Overlay(Overlay {
        lowers: vec!["/".into()],
        image: None,
        upper: Upper::default(),
        driver: OverlayDriver::Kernel,
    });
    let e = rsandbox::spawn(&spec).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("mounts below it"), "{e}");
    assert_eq!(e.errno(), Some(rsandbox::Errno::EINVAL), "{e}");
}

#[test]
fn persistent_upper_mode_bits_follow_chmod() {
    let Some(l) = layers() else { return };
    let up = TempDir::new("mode");
    let upper = up.path().join("u");
    let r = run(&overlay_spec(
        &l,
        OverlayDriver::Kernel,
        Upper::Persistent {
            path: upper.clone(),
        },
        "chmod 640 /data/base.txt",
    ));
    assert!(r.status.success(), "{}", err(&r));
    let mode = std::fs::metadata(upper.join("data/base.txt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);
}

#[test]
fn persistent_upper_passes_between_the_drivers() {
    let Some(l) = layers() else { return };
    if !fuse_usable() {
        return;
    }
    let up = TempDir::new("drivers");
    let upper = up.path().join("u");
    let step = |driver: OverlayDriver, script: &str| {
        let spec = overlay_spec(
            &l,
            driver,
            Upper::Persistent {
                path: upper.clone(),
            },
            script,
        );
        let r = run(&spec);
        assert!(r.status.success(), "{driver:?}: {}", err(&r));
        out(&r)
    };
    // Kernel first (it leaves its work directory's inner directory at mode 000), then fuse, then
    // the kernel again: each sees what the one before wrote.
    assert_eq!(
        step(OverlayDriver::Kernel, "echo k >/data/k; cat /data/k"),
        "k\n"
    );
    assert_eq!(
        step(OverlayDriver::Fuse, "echo f >/data/f; cat /data/k /data/f"),
        "k\nf\n"
    );
    assert_eq!(
        step(OverlayDriver::Kernel, "cat /data/k /data/f /data/base.txt"),
        "k\nf\nbottom\n"
    );
}

#[path = "oci_util/mod.rs"]
mod oci_util;

#[test]
fn runs_from_a_local_oci_image_with_its_config() {
    use oci_util::{
        dir, file, file_mode, opaque, symlink, whiteout, Comp, ImageSpec, LayerSpec, Layout,
    };
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(busybox) = busybox else {
        return skip("busybox-static is not installed (apt-get install busybox-static)");
    };
    let bottom = vec![
        dir("bin", 0o755),
        file_mode("bin/busybox", std::fs::read(busybox).unwrap(), 0o755),
        symlink("bin/sh", "busybox"),
        symlink("bin/cat", "busybox"),
        symlink("bin/ls", "busybox"),
        symlink("bin/id", "busybox"),
        file(
            "etc/passwd",
            "root:x:0:0::/root:/bin/sh\napp:x:1234:4321::/opt:/bin/sh\n",
        ),
        file("data/old.txt", "old\n"),
        file("opt/keep/lower", "lower\n"),
    ];
    let middle = vec![whiteout("data/old.txt"), file("etc/motd", "welcome\n")];
    let top = vec![opaque("opt/keep"), file("opt/keep/upper", "upper\n")];
    let mut image = ImageSpec::new(vec![
        LayerSpec::new(Comp::Gzip, bottom),
        LayerSpec::new(Comp::Zstd, middle),
        LayerSpec::new(Comp::None, top),
    ]);
    image.config = serde_json::json!({
        "Env": ["GREETING=hello", "PATH=/bin"],
        "Cmd": ["/bin/sh", "-c", "echo $GREETING; cat /etc/motd; ls /opt/keep; cat /data/old.txt 2>/dev/null || echo old-gone; pwd; id -u; id -g"],
        "WorkingDir": "/opt",
        "User": "app",
    });
    let tmp = TempDir::new("image-run");
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add(Some("v1"), &image);
    for driver in drivers() {
        let mut spec = Spec::default();
        spec.filesystem.root = Root::Overlay(Overlay {
            lowers: vec![],
            image: Some(rsandbox::ImageSource {
                layout: layout.dir.clone(),
                tag: Some("v1".into()),
                store: Some(tmp.path().join("store")),
            }),
            upper: Upper::default(),
            driver,
        });
        let r = run(&spec);
        assert_eq!(
            out(&r),
            "hello\nwelcome\nupper\nold-gone\n/opt\n1234\n4321\n",
            "{driver:?}: {}",
            err(&r)
        );
        let image = r.report.feature("image").expect("image in the report");
        assert!(
            image.detail.contains("sha256:") && image.detail.contains("3 layers"),
            "{image:?}"
        );

        // The caller's choices win over the image's defaults.
        if let Root::Overlay(ov) = &mut spec.filesystem.root {
            ov.image.as_mut().unwrap().tag = Some("v1".into());
        }
        spec.process.args = vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo $GREETING; id -u".into(),
        ];
        spec.process.env.insert("GREETING".into(), "mine".into());
        spec.user.uid = Some(77);
        assert_eq!(out(&run(&spec)), "mine\n77\n", "{driver:?}");
    }
    // A missing tag names the tags there are.
    let mut spec = Spec::new(["/bin/true"]);
    spec.filesystem.root = Root::Overlay(Overlay {
        lowers: vec![],
        image: Some(rsandbox::ImageSource {
            layout: layout.dir.clone(),
            tag: Some("nope".into()),
            store: Some(tmp.path().join("store")),
        }),
        upper: Upper::default(),
        driver: OverlayDriver::Kernel,
    });
    let e = rsandbox::spawn(&spec).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidImage);
    assert!(e.to_string().contains("v1"), "{e}");
}

/// A persistent upper serves one sandbox at a time: a second one while the first runs is
/// refused by name; once the first has ended, the upper is free again.
#[test]
fn a_persistent_upper_is_not_shared_by_two_running_sandboxes() {
    let Some(l) = layers() else { return };
    let upper = l.top.parent().unwrap().join("shared-upper");
    let spec = |script: &str| {
        overlay_spec(
            &l,
            OverlayDriver::Kernel,
            Upper::Persistent {
                path: upper.clone(),
            },
            script,
        )
    };
    let mut first = rsandbox::spawn(&spec("sleep 30")).unwrap();
    let e = rsandbox::spawn(&spec("true")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{e}");
    assert!(e.to_string().contains("still running"), "{e}");
    first.kill(libc::SIGKILL).unwrap();
    first.wait().unwrap();
    drop(first);
    // The init holds the lock until the sandbox is gone; it may still be exiting.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rsandbox::run(&spec("echo free")) {
            Ok(r) => {
                assert_eq!(out(&r), "free\n", "{}", err(&r));
                break;
            }
            Err(e) if Instant::now() < deadline && e.to_string().contains("still running") => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Makes every directory under `dir` writable and searchable again (a sandbox may have closed
/// some, the kernel driver leaves its work directory's inner one at 000), so it can be removed.
fn open_up(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            open_up(&entry.path());
        }
    }
}

/// Names a sandbox chooses cannot forge or merge the changes `diff` lists: a name holding a
/// newline and the text of another change stays one escaped line, a non-UTF-8 name and its
/// lossy twin (U+FFFD) stay two changes, and the JSON form keeps every byte.
#[test]
fn diff_keeps_hostile_names_exact_and_one_line_each() {
    let Some(l) = layers() else { return };
    for driver in drivers() {
        let up = TempDir::new("names");
        let upper = up.path().join("u");
        let script = r#"set -e; cd /data
            forged=$(printf 'z\nD ')
            mkdir -p "$forged/data"; echo x > "$forged/data/base.txt"
            echo x > "$(printf 'bad\377name')"; echo x > "$(printf 'bad\357\277\275name')"
            echo x > 'back\slash'; rm mid.txt"#;
        let d = run_then_diff(&l, driver, &upper, script);
        let added: Vec<&[u8]> = d.added.iter().map(|p| p.as_bytes()).collect();
        assert_eq!(
            added,
            [
                &b"/data/back\\slash"[..],
                b"/data/bad\xef\xbf\xbdname",
                b"/data/bad\xffname",
                b"/data/z\nD ",
                b"/data/z\nD /data",
                b"/data/z\nD /data/base.txt",
            ],
            "{driver:?}: {d:?}"
        );
        assert!(d.modified.is_empty(), "{driver:?}: {d:?}");
        assert_eq!(d.deleted, ["/data/mid.txt"], "{driver:?}");
        assert_eq!(
            d.to_text(),
            "A /data/back\\\\slash\n\
             A /data/bad\u{fffd}name\n\
             A /data/bad\\xffname\n\
             A /data/z\\nD \n\
             A /data/z\\nD /data\n\
             A /data/z\\nD /data/base.txt\n\
             D /data/mid.txt\n",
            "{driver:?}"
        );
        // Display is the same escaped text.
        assert_eq!(d.added[2].to_string(), "/data/bad\\xffname");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json["added"][2],
            serde_json::json!({"base64": "L2RhdGEvYmFk/25hbWU="}),
            "{driver:?}"
        );
        assert_eq!(json["added"][1], "/data/bad\u{fffd}name", "{driver:?}");
        assert_eq!(json["added"][3], "/data/z\nD ", "{driver:?}");
        let back: rsandbox::Diff = serde_json::from_value(json).unwrap();
        assert_eq!(back, d, "{driver:?}");
        open_up(up.path());
    }
}

/// A sandbox can nest directories deeper than the host's PATH_MAX allows with the upper's path
/// in front, and close a directory to search: `diff` still lists everything else, the
/// directories too deep to list (past `Diff::MAX_PATH`) or closed as unreadable.
#[test]
fn diff_stands_when_a_directory_is_too_deep_or_closed() {
    let Some(l) = layers() else { return };
    for driver in drivers() {
        let up = TempDir::new("deep");
        let upper = up.path().join("u");
        // 45 levels of 200-character names: past PATH_MAX from level 21, past MAX_PATH (8192)
        // from level 41 (/deep is 5 bytes, each level 201 more). No path that long can be
        // named, so three chains of 15 are made and moved one into another.
        let script = r#"set -e
            mkdir /data/ro; echo x > /data/ro/f; chmod 444 /data/ro; rm /data/mid.txt
            n=$(printf %0200d 0); c=$n/$n/$n/$n/$n/$n/$n/$n/$n/$n/$n/$n/$n/$n/$n
            mkdir -p /deep/$c /a/$c /b/$c; echo x > /b/$c/f
            mv /b/$n /a/$c/; mv /a/$n /deep/$c/; echo moved"#;
        let r = run(&overlay_spec(
            &l,
            driver,
            Upper::Persistent {
                path: upper.clone(),
            },
            script,
        ));
        assert_eq!(out(&r), "moved\n", "{driver:?}: {}", err(&r));
        let depth = 45;
        let d = rsandbox::diff(&upper, &[]).unwrap_or_else(|e| panic!("{driver:?}: {e}"));
        assert_eq!(d.deleted, ["/data/mid.txt"], "{driver:?}");
        let name = "0".repeat(200);
        let level = |k: usize| format!("/deep{}", format!("/{name}").repeat(k));
        // The deepest directory listed in full; the one below it is unreadable (too deep).
        let last = (0..depth)
            .rev()
            .find(|&k| level(k).len() <= rsandbox::Diff::MAX_PATH)
            .unwrap();
        assert!(level(last + 1).len() > rsandbox::Diff::MAX_PATH);
        let mut want: Vec<String> = (0..=last + 1).map(level).collect();
        want.push("/data/ro".into());
        // As a user, a directory that may be listed but not searched: its names are known, not
        // what they are. Root searches any.
        let as_root = my_uid() == 0;
        if as_root {
            want.push("/data/ro/f".into());
        }
        want.sort();
        let added: Vec<String> = d
            .added
            .iter()
            .map(|p| p.to_string())
            .filter(|p| p != "/a" && p != "/b")
            .collect();
        assert_eq!(added, want, "{driver:?}");
        let mut unreadable = vec![level(last + 1)];
        if !as_root {
            unreadable.push("/data/ro".into());
        }
        unreadable.sort();
        let got: Vec<String> = d.unreadable.iter().map(|p| p.to_string()).collect();
        assert_eq!(got, unreadable, "{driver:?}");
        open_up(up.path());
    }
}

/// A persistent upper, or its work directory, that another user made or could write to is
/// refused before anything runs: that user could have planted files for the sandbox to run, or
/// write to its upper still. So is one below a directory others can write that is not sticky;
/// below a sticky one (as /tmp) it is used.
/// The record beside a persistent upper is never written through a link (one planted there by
/// another user would have the caller overwrite its target), and `diff` does not take a record
/// others could have written. Control: without the link the record is written and read.
#[test]
fn the_record_beside_an_upper_is_neither_followed_nor_taken_from_others() {
    let Some(l) = layers() else { return };
    let dir = TempDir::new("record");
    let upper = dir.path().join("u");
    let record = dir.path().join(".u.layers.json");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, &record).unwrap();
    let spec = overlay_spec(
        &l,
        OverlayDriver::Kernel,
        Upper::Persistent {
            path: upper.clone(),
        },
        "echo x > /data/new",
    );
    let e = rsandbox::spawn(&spec).unwrap_err();
    assert!(e.to_string().contains("layer record"), "{e}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    // Control: the record is written, and names the lowers diff uses.
    std::fs::remove_file(&record).unwrap();
    assert!(run(&spec).status.success());
    assert!(std::fs::symlink_metadata(&record).unwrap().is_file());
    assert_eq!(rsandbox::diff(&upper, &[]).unwrap().added, ["/data/new"]);
    // A record others could have written is not taken: without lowers, everything is added.
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o666)).unwrap();
    let d = rsandbox::diff(&upper, &[]).unwrap();
    assert!(d.added.iter().any(|p| p == "/data"), "{d:?}");
}

#[test]
fn a_persistent_upper_others_could_write_is_refused() {
    let Some(l) = layers() else { return };
    let dir = TempDir::new("foreign-upper");
    let spec = |upper: &Path| {
        overlay_spec(
            &l,
            OverlayDriver::Kernel,
            Upper::Persistent {
                path: upper.to_path_buf(),
            },
            "echo ran",
        )
    };
    let refused = |upper: &Path, needle: &str| {
        let e = rsandbox::spawn(&spec(upper)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{e}");
        let text = e.to_string();
        assert!(text.contains(needle), "{needle:?} missing: {text}");
        assert!(text.contains("only uid"), "no remedy: {text}");
    };
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // Writable by others, or by the group.
    let upper = dir.path().join("open");
    std::fs::create_dir(&upper).unwrap();
    chmod(&upper, 0o777);
    refused(&upper, "writable by others");
    assert_eq!(std::fs::read_dir(&upper).unwrap().count(), 0);
    chmod(&upper, 0o775);
    refused(&upper, "writable by its group");
    // Its work directory writable by others.
    let upper = dir.path().join("w");
    let work = dir.path().join(".w.work");
    std::fs::create_dir(&work).unwrap();
    chmod(&work, 0o777);
    refused(&upper, "work directory");
    // Below a directory others can write that is not sticky.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    refused(&shared.join("u"), "writable by others");
    assert!(!shared.join("u").exists(), "created before it was refused");
    // Below a sticky one: fine, and created 0755 whatever the umask.
    chmod(&shared, 0o1777);
    let r = run(&spec(&shared.join("u")));
    assert_eq!(out(&r), "ran\n", "{}", err(&r));
    let mode = std::fs::metadata(shared.join("u")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755);
    // Made by another user (only root can make one here).
    if my_uid() == 0 {
        let upper = dir.path().join("theirs");
        std::fs::create_dir(&upper).unwrap();
        std::os::unix::fs::chown(&upper, Some(65534), Some(65534)).unwrap();
        refused(&upper, "owned by uid 65534");
        let upper = dir.path().join("their-work");
        let work = dir.path().join(".their-work.work");
        std::fs::create_dir(&work).unwrap();
        std::os::unix::fs::chown(&work, Some(65534), Some(65534)).unwrap();
        refused(&upper, "owned by uid 65534");
    }
    open_up(dir.path());
}
