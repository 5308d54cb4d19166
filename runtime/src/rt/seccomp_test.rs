//! Test-only: proves the real fallback path. A seccomp filter on one test
//! thread makes `io_uring_setup` fail with EPERM, as container runtimes'
//! default profiles do; building the runtime with `Auto` on that thread
//! must then give the polling driver.

#![allow(unsafe_code)]

use compio::driver::{DriverType, ProactorBuilder};
use compio::runtime::RuntimeBuilder;

use super::{DriverChoice, build_with_fallback};

/// Installs a filter on the calling thread only (no TSYNC): every
/// `io_uring_setup` fails with EPERM, everything else is allowed.
fn deny_io_uring_setup_on_this_thread() -> bool {
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let nr = libc::SYS_io_uring_setup as u32;
    let filter = [
        // A = seccomp_data.nr (offset 0)
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: nr,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: plain prctl calls; `prog` and `filter` outlive the call, and
    // the kernel copies the program. NO_NEW_PRIVS only affects this thread
    // (and its future children), which is a test thread that ends soon.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return false;
        }
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        ) == 0
    }
}

#[test]
fn io_uring_blocked_by_seccomp_falls_back_to_poll() {
    let outcome = std::thread::spawn(|| {
        if !deny_io_uring_setup_on_this_thread() {
            return None;
        }
        let built = build_with_fallback(DriverChoice::Auto, |t| {
            let mut p = ProactorBuilder::new();
            p.driver_type(t);
            RuntimeBuilder::new().with_proactor(p).build()
        });
        let forced = build_with_fallback(DriverChoice::IoUring, |t| {
            let mut p = ProactorBuilder::new();
            p.driver_type(t);
            RuntimeBuilder::new().with_proactor(p).build()
        });
        Some((
            built
                .map(|(rt, t, why)| (rt.driver_type(), t, why.is_some()))
                .ok(),
            forced.is_err(),
        ))
    })
    .join()
    .unwrap_or(None);
    match outcome {
        // Seccomp unavailable here (not Linux x86_64, or prctl refused): nothing to prove.
        None => eprintln!("seccomp unavailable here: fallback test skipped"),
        Some((auto, forced_failed)) => {
            assert_eq!(auto, Some((DriverType::Poll, DriverType::Poll, true)));
            assert!(
                forced_failed,
                "forcing io-uring must fail, not silently poll"
            );
        }
    }
}
