//! The backend under the safe API: the ABI v1 imports on wasm, the in-memory
//! test host ([`crate::testing`]) elsewhere. Slices in, raw codes out.

#[cfg(target_family = "wasm")]
mod imports {
    #[link(wasm_import_module = "runbox:step/v1")]
    unsafe extern "C" {
        pub(super) fn input_len() -> i32;
        pub(super) fn input_read(ptr: i32, len: i32) -> i32;
        pub(super) fn log(level: i32, ptr: i32, len: i32);
        pub(super) fn finish(outcome: i32, ptr: i32, len: i32);
        pub(super) fn last_tool_answer(buf: i32, cap: i32) -> i64;
    }
    #[link(wasm_import_module = "runbox:kv-read/v1")]
    unsafe extern "C" {
        #[link_name = "get"]
        pub(super) fn kv_get(kp: i32, kl: i32, buf: i32, cap: i32) -> i64;
    }
    #[link(wasm_import_module = "runbox:kv-write/v1")]
    unsafe extern "C" {
        #[link_name = "put"]
        pub(super) fn kv_put(kp: i32, kl: i32, vp: i32, vl: i32) -> i32;
        #[link_name = "delete"]
        pub(super) fn kv_delete(kp: i32, kl: i32) -> i32;
    }
    #[link(wasm_import_module = "runbox:tool-read/v1")]
    unsafe extern "C" {
        #[link_name = "call"]
        pub(super) fn tool_read(np: i32, nl: i32, ap: i32, al: i32, buf: i32, cap: i32) -> i64;
    }
    #[link(wasm_import_module = "runbox:tool-mutate/v1")]
    unsafe extern "C" {
        #[link_name = "call"]
        pub(super) fn tool_mutate(np: i32, nl: i32, ap: i32, al: i32, buf: i32, cap: i32) -> i64;
    }
}

// `wasm_import_module` takes only a literal, so the names above are spelled
// out; this check ties each to its definition in `runbox-abi`.
const _: () = {
    const fn eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    assert!(eq(runbox_abi::STEP, "runbox:step/v1"));
    assert!(eq(runbox_abi::KV_READ, "runbox:kv-read/v1"));
    assert!(eq(runbox_abi::KV_WRITE, "runbox:kv-write/v1"));
    assert!(eq(runbox_abi::TOOL_READ, "runbox:tool-read/v1"));
    assert!(eq(runbox_abi::TOOL_MUTATE, "runbox:tool-mutate/v1"));
    assert!(eq(runbox_abi::LAST_TOOL_ANSWER, "last_tool_answer"));
};

#[cfg(target_family = "wasm")]
mod backend {
    //! Every `unsafe` below is a call into a host import that reads or
    //! writes guest memory only inside the (pointer, length) ranges passed;
    //! each range comes from a live slice, and the host bounds-checks it
    //! again.
    use super::imports as ffi;

    fn p(b: &[u8]) -> i32 {
        b.as_ptr() as usize as i32
    }
    fn l(b: &[u8]) -> i32 {
        b.len() as i32
    }
    fn out(b: &mut [u8]) -> i32 {
        b.as_mut_ptr() as usize as i32
    }

    pub(crate) fn input_bytes() -> Vec<u8> {
        // SAFETY: takes no pointer.
        let n = unsafe { ffi::input_len() }.max(0) as usize;
        let mut buf = vec![0u8; n];
        // SAFETY: writes at most `buf.len()` bytes into `buf`.
        let got = unsafe { ffi::input_read(out(&mut buf), l(&buf)) };
        buf.truncate(got.max(0) as usize);
        buf
    }
    pub(crate) fn log(level: i32, msg: &[u8]) {
        // SAFETY: reads `msg` only.
        unsafe { ffi::log(level, p(msg), l(msg)) }
    }
    pub(crate) fn finish(code: i32, bytes: &[u8]) -> ! {
        // SAFETY: reads `bytes` only.
        unsafe { ffi::finish(code, p(bytes), l(bytes)) };
        // The host unwinds the guest inside `finish`.
        std::process::abort()
    }
    pub(crate) fn kv_get(key: &[u8], buf: &mut [u8]) -> i64 {
        // SAFETY: reads `key`, writes at most `buf.len()` bytes into `buf`.
        unsafe { ffi::kv_get(p(key), l(key), out(buf), l(buf)) }
    }
    pub(crate) fn kv_put(key: &[u8], value: &[u8]) -> i64 {
        // SAFETY: reads `key` and `value` only.
        unsafe { ffi::kv_put(p(key), l(key), p(value), l(value)) }.into()
    }
    pub(crate) fn kv_delete(key: &[u8]) -> i64 {
        // SAFETY: reads `key` only.
        unsafe { ffi::kv_delete(p(key), l(key)) }.into()
    }
    // Two functions, never one with a `mutate` flag: a flag known only at
    // run time (an unoptimized build) would reference both imports, and a
    // step that only reads would import `tool-mutate`, which its policy
    // does not grant, and be refused.
    pub(crate) fn tool_read(name: &[u8], args: &[u8], buf: &mut [u8]) -> i64 {
        let (o, cap) = (out(buf), l(buf));
        // SAFETY: reads `name` and `args`, writes at most `cap` bytes into `buf`.
        unsafe { ffi::tool_read(p(name), l(name), p(args), l(args), o, cap) }
    }
    pub(crate) fn tool_mutate(name: &[u8], args: &[u8], buf: &mut [u8]) -> i64 {
        let (o, cap) = (out(buf), l(buf));
        // SAFETY: reads `name` and `args`, writes at most `cap` bytes into `buf`.
        unsafe { ffi::tool_mutate(p(name), l(name), p(args), l(args), o, cap) }
    }
    pub(crate) fn last_tool_answer(buf: &mut [u8]) -> i64 {
        // SAFETY: writes at most `buf.len()` bytes into `buf`.
        unsafe { ffi::last_tool_answer(out(buf), l(buf)) }
    }
}

#[cfg(not(target_family = "wasm"))]
pub(crate) use crate::testing::host as backend;

pub(crate) use backend::*;
