//! Builds the tiny init (src/child/init.c) that a sandbox started without copying the caller's
//! address space executes after setup. It needs a C compiler that can make a static, libc-free
//! x86_64 executable; without one (or on another architecture) the library keeps the other start,
//! which forks the setup process and lets it stay on as the init.
//!
//! Also compiles the default seccomp profile (src/seccomp_rules.rs) to BPF with libseccomp, so
//! that a process's first sandbox does not pay for it; when building for another machine than
//! this one, the library compiles it at run time instead.

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
    let native = std::env::var("TARGET").ok() == std::env::var("HOST").ok();
    if native {
        match prebuild_seccomp(&out) {
            Ok(()) => println!("cargo:rustc-cfg=rsandbox_prebuilt_seccomp"),
            Err(e) => println!(
                "cargo:warning=the default seccomp profile could not be compiled ahead ({e}); it is compiled at run time"
            ),
        }
    }
    small_init(&out);
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
