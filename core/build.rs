//! Builds the tiny init (src/child/init.c) that a sandbox started without copying the caller's
//! address space executes after setup. It needs a C compiler that can make a static, libc-free
//! x86_64 executable; without one (or on another architecture) the library keeps the other start,
//! which forks the setup process and lets it stay on as the init.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(rsandbox_small_init)");
    println!("cargo:rerun-if-changed=src/child/init.c");
    println!("cargo:rerun-if-env-changed=CC");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
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
