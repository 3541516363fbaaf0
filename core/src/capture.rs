//! Feeding stdin and collecting stdout/stderr of a running sandbox without deadlock: one poll loop
//! over every pipe, so a command that floods both streams while waiting for input never blocks.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::sandbox::Child;
use crate::sys;

/// What [`communicate`] collected.
pub(crate) struct Captured {
    pub stdout: Option<Vec<u8>>,
    pub stderr: Option<Vec<u8>>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// `interrupt` asked for the end, and the sandbox was killed.
    pub interrupted: bool,
}

struct Sink {
    file: Option<File>,
    data: Vec<u8>,
    truncated: bool,
    present: bool,
}

impl Sink {
    fn new(file: Option<File>) -> Sink {
        Sink {
            present: file.is_some(),
            file,
            data: Vec::new(),
            truncated: false,
        }
    }

    /// Reads what is available; false once the stream is at end of file.
    fn drain(&mut self, limit: Option<u64>) -> Result<bool> {
        let Some(file) = &mut self.file else {
            return Ok(false);
        };
        let mut buf = [0u8; 65536];
        loop {
            match file.read(&mut buf) {
                Ok(0) => {
                    self.file = None;
                    return Ok(false);
                }
                Ok(n) => {
                    let room =
                        limit.map_or(n, |l| (l as usize).saturating_sub(self.data.len()).min(n));
                    self.data.extend_from_slice(&buf[..room]);
                    if room < n {
                        self.truncated = true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read sandbox output", None, e)),
            }
        }
    }
}

fn set_nonblocking(f: &File) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(f, FcntlArg::F_GETFL).map_err(|e| Error::os("fcntl(F_GETFL)", e))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(f, FcntlArg::F_SETFL(flags)).map_err(|e| Error::os("fcntl(F_SETFL)", e))?;
    Ok(())
}

/// Runs the exchange until both output streams are closed (or the sandbox is gone).
/// `interrupt` is called at least every `every`; when it returns true the sandbox is killed and
/// the exchange stops with what was read so far.
pub(crate) fn communicate(
    child: &mut Child,
    input: Option<&[u8]>,
    limit: Option<u64>,
    every: Duration,
    interrupt: &mut dyn FnMut() -> bool,
) -> Result<Captured> {
    let mut pending: &[u8] = input.unwrap_or(&[]);
    // The write end of the command's stdin, held while the input is fed (without input it
    // closes here: the command reads end of file). Marked for forks (forksafe::Ends): a copy
    // in a child forked meanwhile would keep the command from ever reading end of file.
    let (mut stdin_end, stdin_fd) = match child.stdin_held.take() {
        // Kept marked since the start (run, a pool's run): no moment unmarked.
        Some((ends, fd)) => (ends, Some(fd)),
        None => {
            let mut ends = crate::forksafe::Ends::new();
            let window = crate::forksafe::Creating::begin();
            let fd = child.stdin.take().map(|f| ends.keep(f.into()));
            drop(window);
            (ends, fd)
        }
    };
    // Without input it closes at once: the command reads end of file.
    let stdin_fd = match stdin_fd {
        Some(_) if pending.is_empty() => {
            stdin_end.close();
            None
        }
        fd => fd,
    };
    // SAFETY: a view of the descriptor `stdin_end` owns, never closed through the view
    // (ManuallyDrop); `stdin_end` outlives every use of it.
    let mut stdin =
        stdin_fd.map(|fd| std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) }));
    let mut out = Sink::new(child.stdout.take());
    let mut err = Sink::new(child.stderr.take());
    for f in [stdin.as_deref(), out.file.as_ref(), err.file.as_ref()]
        .into_iter()
        .flatten()
    {
        set_nonblocking(f)?;
    }
    let mut exited = false;
    let mut interrupted = false;
    while out.file.is_some() || err.file.is_some() || stdin.is_some() {
        let mut fds = [
            pollfd(stdin.as_ref().map(|f| f.as_raw_fd()), libc::POLLOUT),
            pollfd(out.file.as_ref().map(|f| f.as_raw_fd()), libc::POLLIN),
            pollfd(err.file.as_ref().map(|f| f.as_raw_fd()), libc::POLLIN),
            pollfd(Some(child.pidfd()), libc::POLLIN),
        ];
        let sleep = match child.watch_interval() {
            Some(w) => w.min(every),
            None => every,
        };
        let timeout = if sleep == Duration::MAX {
            -1
        } else {
            // Round up so a deadline a fraction of a millisecond away does not spin.
            (sleep.as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32
        };
        sys::retry(|| sys::poll(&mut fds, timeout))
            .map_err(|e| Error::os("poll sandbox pipes", e))?;
        child.watch()?;
        if interrupt() {
            child.kill(libc::SIGKILL)?;
            interrupted = true;
            break;
        }
        if fds[0].revents != 0 {
            if let Some(f) = &mut stdin {
                // (Without SIGPIPE: a C host would die of it when the command stops reading.)
                match sys::write_nosigpipe(f.as_raw_fd(), pending) {
                    Ok(n) => pending = &pending[n..],
                    Err(Errno::EAGAIN) => {}
                    // The command stopped reading: what it did not take is dropped, as with a shell pipe.
                    Err(_) => pending = &[],
                }
                if pending.is_empty() {
                    // Closed (with its mark): the command reads end of file.
                    stdin = None;
                    stdin_end.close();
                }
            }
        }
        out.drain(limit)?;
        err.drain(limit)?;
        if exited {
            // The init is gone, and with it every writer in a PID namespace; without one, a process
            // that left the sandbox may hold the pipes: stop at what is there now.
            break;
        }
        if fds[3].revents != 0 {
            exited = true;
        }
    }
    let finish = |s: Sink| (s.present.then_some(s.data), s.truncated);
    let (stdout, stdout_truncated) = finish(out);
    let (stderr, stderr_truncated) = finish(err);
    Ok(Captured {
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        interrupted,
    })
}

fn pollfd(fd: Option<i32>, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: fd.unwrap_or(-1),
        events,
        revents: 0,
    }
}
