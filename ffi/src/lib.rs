//! The C ABI of rsandbox, built as `libsandbox.so`.
//!
//! Only the version query exists so far; the full ABI (config builder, spawn, results, report)
//! follows the conventions of `include/sandbox.h`.

use std::ffi::c_char;

/// The library version as a static NUL-terminated string; never free it.
#[no_mangle]
pub extern "C" fn sbx_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_nul_terminated() {
        // SAFETY: sbx_version returns a pointer to a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(super::sbx_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
