//! The shared library's soname: `libsandbox.so.0` (bumped only when the ABI breaks).
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libsandbox.so.0");
}
