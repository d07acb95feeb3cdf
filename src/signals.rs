//! Signals: how `refresh` stops cleanly, and how the secret prompt gives the terminal back.
//! The handlers only touch atomics and call async-signal-safe functions (`tcsetattr`,
//! `_exit`, `raise`), which is all a signal handler may do.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

/// The exit code of a process that a second stop signal ends at once: `Exit::Interrupted`'s,
/// kept here so that this module imports nothing of wxtoken's (`exit` checks they agree).
pub const INTERRUPTED_CODE: i32 = 8;

/// The first stop signal received, 0 if none.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// The signals that ask a process to stop: the service manager, Ctrl-C, a closed terminal.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

extern "C" fn on_stop(sig: libc::c_int) {
    if CAUGHT.swap(sig, Ordering::SeqCst) != 0 {
        // A second signal: the user means it.
        // SAFETY: _exit is async-signal-safe and ends the process at once.
        unsafe { libc::_exit(INTERRUPTED_CODE) };
    }
}

/// From now on a stop signal only sets a flag (see `caught`), so that `refresh` can start
/// no new fetch, record the ones in flight and exit; a second one exits at once.
pub fn catch_stop_signals() {
    for sig in STOP_SIGNALS {
        install(sig, on_stop as *const () as libc::sighandler_t);
    }
}

/// The name of the first stop signal received, if any.
pub fn caught() -> Option<&'static str> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGTERM => Some("SIGTERM"),
        libc::SIGINT => Some("SIGINT"),
        libc::SIGHUP => Some("SIGHUP"),
        _ => Some("a signal"),
    }
}

/// The terminal settings to restore if a signal ends the process during a prompt.
static TTY: OnceLock<(libc::c_int, libc::termios)> = OnceLock::new();

extern "C" fn restore_tty_and_die(sig: libc::c_int) {
    if let Some((fd, saved)) = TTY.get() {
        // SAFETY: tcsetattr, signal and raise are async-signal-safe; `saved` is initialised.
        unsafe {
            libc::tcsetattr(*fd, libc::TCSANOW, saved);
        }
    }
    // SAFETY: back to the default action, then die of the same signal, as expected.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Turns echo off on the terminal `fd` until the returned guard drops, and makes sure a
/// signal during that time (Ctrl-C at the prompt) turns it back on before the process dies.
/// `None` when `fd` is not a terminal.
pub fn echo_off(fd: libc::c_int) -> Option<EchoGuard> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return None;
    }
    let _ = TTY.set((fd, saved));
    for sig in STOP_SIGNALS
        .into_iter()
        .chain([libc::SIGQUIT, libc::SIGTSTP])
    {
        install(sig, restore_tty_and_die as *const () as libc::sighandler_t);
    }
    let mut quiet = saved;
    quiet.c_lflag &= !(libc::ECHO | libc::ECHONL);
    quiet.c_lflag |= libc::ICANON;
    // SAFETY: fd is a terminal (tcgetattr worked) and `quiet` is a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
        return None;
    }
    Some(EchoGuard { fd, saved })
}

/// Restores the terminal when dropped.
pub struct EchoGuard {
    fd: libc::c_int,
    saved: libc::termios,
}

impl Drop for EchoGuard {
    fn drop(&mut self) {
        // SAFETY: the same fd and the settings read from it.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

fn install(sig: libc::c_int, handler: libc::sighandler_t) {
    // SAFETY: a zeroed sigaction with a handler that is async-signal-safe; SA_RESTART so
    // that a signal does not turn reads in flight (network, database) into errors.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(sig, &action, std::ptr::null_mut());
    }
}
