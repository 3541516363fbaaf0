//! The sandbox's init: reaps orphans, forwards signals, and reports the command's status.
//!
//! With a PID namespace this process is pid 1; when it exits the kernel kills everything left in the
//! namespace, so the command's exit (or the caller's death) ends the whole sandbox. Without one,
//! the command's process group stands in for "the whole sandbox".

use std::os::raw::c_int;

use super::Plan;
use crate::sys;

/// Runs the init loop for the command `main`. Never returns.
pub(super) fn run(plan: &Plan, main: libc::pid_t) -> ! {
    // Tell the caller the command's pid (meaningful to it when there is no PID namespace).
    let _ = sys::write_all(plan.status_w, &main.to_ne_bytes());

    // Signals are still blocked from setup; a signalfd collects them, SIGCHLD included, so none is
    // lost between the fork and this point.
    let sfd = match sys::signalfd(&sys::sigset_full()) {
        Ok(fd) => fd,
        Err(_) => finish(plan, main, None, false),
    };
    // The deadline, kept here too (as child/init.c): -1 without one, or without a timer.
    let timer = match plan.deadline_ns {
        0 => -1,
        at => sys::timer_at(at).unwrap_or(-1),
    };
    let mut fds = [
        libc::pollfd {
            fd: sfd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            // The caller holds the write end for the sandbox's life (or until it lets go of a
            // sandbox that does not die with it): hang-up means it is gone.
            fd: plan.ctl_r,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: timer,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        if sys::retry(|| sys::poll(&mut fds, -1)).is_err() {
            continue;
        }
        if fds[1].revents != 0 {
            let mut byte = [0u8; 1];
            if sys::read_full(plan.ctl_r, &mut byte) != Ok(1) {
                if plan.die_with_parent {
                    kill_all(plan, main);
                    sys::exit(super::EXIT_SETUP_FAILED);
                }
                // The caller let go of the sandbox: it runs on alone.
                sys::close(plan.ctl_r);
                fds[1].fd = -1;
            } else if byte[0] == super::CTL_END {
                end_all(plan, main, false);
            } else if byte[0] == super::CTL_STOP {
                forward(plan, main, libc::SIGSTOP);
            } else if byte[0] == super::CTL_DEADLINE {
                let mut at = [0u8; 8];
                if sys::read_full(plan.ctl_r, &mut at) == Ok(8) && fds[2].fd < 0 {
                    fds[2].fd = sys::timer_at(u64::from_ne_bytes(at)).unwrap_or(-1);
                }
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            if sys::read_full(sfd, &mut info) != Ok(info.len()) {
                continue;
            }
            let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as c_int;
            if signo != libc::SIGCHLD {
                forward(plan, main, signo);
            }
            // Reap on every wakeup: SIGCHLDs coalesce.
            while let Some((pid, status)) = sys::reap_any() {
                if pid == main {
                    finish(plan, main, Some(status), false);
                }
            }
        }
        // After the reaping: a command that ended by its deadline was in time.
        if fds[2].revents != 0 {
            end_all(plan, main, true);
        }
    }
}

/// The caller's end of the sandbox, as child/init.c's end_all: every process killed and reaped
/// here, so that their usage is this process's to report (the kernel reaps a dying init's
/// children without counting them).
fn end_all(plan: &Plan, main: libc::pid_t, deadline_hit: bool) -> ! {
    kill_all(plan, main);
    // As a wait status: killed by SIGKILL.
    let mut main_status = libc::SIGKILL;
    while let Ok((pid, status)) = sys::wait_any() {
        if pid == main {
            main_status = status;
            // Without a PID namespace the others are not this process's to wait for.
            if !plan.pid_ns {
                break;
            }
        }
    }
    finish(plan, main, Some(main_status), deadline_hit)
}

/// Sends `sig` to every process of the sandbox.
fn forward(plan: &Plan, main: libc::pid_t, sig: c_int) {
    if plan.pid_ns {
        // kill(-1) from pid 1 reaches every other process of the namespace, and nothing else.
        let _ = sys::kill(-1, sig);
    } else {
        let _ = sys::kill(-main, sig);
    }
}

fn kill_all(plan: &Plan, main: libc::pid_t) {
    forward(plan, main, libc::SIGKILL);
}

/// Reports the command's wait status and exits; the kernel tears down the PID namespace.
fn finish(plan: &Plan, main: libc::pid_t, status: Option<c_int>, deadline_hit: bool) -> ! {
    let ended = sys::monotonic_ns();
    if !plan.pid_ns {
        kill_all(plan, main);
    }
    if let Some(status) = status {
        // The status record, as child/init.c writes it (sandbox::parse_record reads it).
        let mut record = [0u8; crate::sandbox::RECORD];
        record[..4].copy_from_slice(&status.to_ne_bytes());
        let usage = crate::sandbox::RUSAGE;
        // SAFETY: rusage is plain data getrusage fills; its first RUSAGE bytes are the kernel's.
        unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
            std::ptr::copy_nonoverlapping(
                (&ru as *const libc::rusage).cast::<u8>(),
                record[4..].as_mut_ptr(),
                usage,
            );
        }
        record[4 + usage..12 + usage].copy_from_slice(&ended.to_le_bytes());
        let flags = if deadline_hit {
            super::RECORD_DEADLINE
        } else {
            0
        };
        record[12 + usage..].copy_from_slice(&flags.to_le_bytes());
        let _ = sys::write_all(plan.status_w, &record);
        // As child/init.c: the caller, just woken, takes the result before this exit's teardown.
        sys::yield_now();
    }
    sys::exit(0)
}
