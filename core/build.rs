//! Builds the tiny init (src/child/init.c) that a sandbox started without copying the caller's
//! address space executes after setup. It needs a C compiler that can make a static, libc-free
//! x86_64 executable; without one (or on another architecture) the library keeps the other start,
//! which forks the setup process and lets it stay on as the init.
//!
//! Also compiles the default seccomp profile (src/seccomp_rules.rs) to BPF with libseccomp, so
//! that a process's first sandbox does not pay for it; when building for another architecture,
//! the library compiles it at run time instead.
//!
//! For a musl target it also supplies the one glibc-only symbol Debian's static libseccomp needs
//! (src/libseccomp_musl.c), so a static musl executable can link it.

use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
mod rules {
    include!("src/seccomp_rules.rs");
}

fn main() {
    println!("cargo:rustc-check-cfg=cfg(rsandbox_small_init)");
    println!("cargo:rustc-check-cfg=cfg(rsandbox_prebuilt_seccomp)");
    println!("cargo:rerun-if-changed=src/seccomp_rules.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    // The filter depends on the architecture only (not on the C library), and libseccomp here
    // compiles for this machine's.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch == std::env::consts::ARCH && os == "linux" {
        match prebuild_seccomp(&out) {
            Ok(()) => println!("cargo:rustc-cfg=rsandbox_prebuilt_seccomp"),
            Err(e) => println!(
                "cargo:warning=the default seccomp profile could not be compiled ahead ({e}); it is compiled at run time"
            ),
        }
    }
    small_init(&out);
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl") {
        musl_compat(&out);
    }
}

/// Compiles src/libseccomp_musl.c into a static library linked whole (it must be there before
/// the linker reaches libseccomp, which comes later on its command line).
fn musl_compat(out: &Path) {
    println!("cargo:rerun-if-changed=src/libseccomp_musl.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let obj = out.join("libseccomp_musl.o");
    let lib = out.join("librsandbox_libseccomp_musl.a");
    let run = |cmd: &mut Command| match cmd.status() {
        Ok(s) if s.success() => {}
        other => panic!("building src/libseccomp_musl.c: {cmd:?}: {other:?}"),
    };
    run(Command::new(&cc)
        .args([
            "-c",
            "-O2",
            "-fPIC",
            "-fno-stack-protector",
            "-ffreestanding",
            "-o",
        ])
        .arg(&obj)
        .arg("src/libseccomp_musl.c"));
    let _ = std::fs::remove_file(&lib);
    run(
        Command::new(std::env::var("AR").unwrap_or_else(|_| "ar".into()))
            .arg("crs")
            .arg(&lib)
            .arg(&obj),
    );
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static:+whole-archive=rsandbox_libseccomp_musl");
}

/// Writes OUT_DIR/seccomp_prebuilt.rs: `PREBUILT[nested as usize]` = (BPF bytes, rule count).
fn prebuild_seccomp(out: &Path) -> Result<(), String> {
    let mut entries = Vec::new();
    for nested in [false, true] {
        let (ctx, count) = rules::default_context(nested).map_err(|e| e.to_string())?;
        let name = format!(
            "seccomp-default-{}.bpf",
            if nested { "nested" } else { "plain" }
        );
        let file = std::fs::File::create(out.join(&name)).map_err(|e| e.to_string())?;
        ctx.export_bpf(&file).map_err(|e| e.to_string())?;
        entries.push(format!(
            "(include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}\")), {count})"
        ));
    }
    let code = format!(
        "/// The default profile's BPF and rule count, without and with nested user namespaces.\npub(super) const PREBUILT: [(&[u8], usize); 2] = [{}];\n",
        entries.join(", ")
    );
    std::fs::write(out.join("seccomp_prebuilt.rs"), code).map_err(|e| e.to_string())
}

/// The tiny init, where this target and compiler allow it.
fn small_init(out: &Path) {
    println!("cargo:rerun-if-changed=src/child/init.c");
    println!("cargo:rerun-if-env-changed=CC");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        return;
    }
    let exe = out.join("rsandbox-init");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-static",
            "-nostdlib",
            "-nostartfiles",
            "-ffreestanding",
            "-fno-builtin",
            "-no-pie",
            "-fno-pie",
            "-Os",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-fno-strict-aliasing",
            "-Wl,--build-id=none",
            "-Wl,-z,noexecstack",
            "-s",
            "-o",
        ])
        .arg(&exe)
        .arg("src/child/init.c")
        .status();
    match status {
        Ok(s) if s.success() => println!("cargo:rustc-cfg=rsandbox_small_init"),
        Ok(s) => println!(
            "cargo:warning=building the sandbox init with {cc} failed ({s}); sandboxes start by copying the caller's address space"
        ),
        Err(e) => println!(
            "cargo:warning=no C compiler ({cc}: {e}); sandboxes start by copying the caller's address space"
        ),
    }
}
