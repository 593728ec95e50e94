//! The local terminal of `berth run` with a TTY: raw mode for the length
//! of the session (restored when the guard drops, on every way out) and
//! the window size.

use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};

/// A terminal's size in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub cols: u16,
    pub rows: u16,
}

/// The window size of the first of stdout, stdin, stderr that is a
/// terminal with a size; `None` when none is.
pub fn size() -> Option<Size> {
    let out = std::io::stdout();
    let inp = std::io::stdin();
    let err = std::io::stderr();
    let found = [out.as_fd(), inp.as_fd(), err.as_fd()]
        .into_iter()
        .find_map(size_of);
    found
}

fn size_of(fd: BorrowedFd<'_>) -> Option<Size> {
    let w = rustix::termios::tcgetwinsize(fd).ok()?;
    (w.ws_col > 0 && w.ws_row > 0).then_some(Size {
        cols: w.ws_col,
        rows: w.ws_row,
    })
}

/// Puts stdin's terminal in raw mode (keys, Ctrl-C included, go to the
/// remote process as they are typed; nothing is echoed locally) until it
/// is dropped, which restores the settings it found.
pub struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    /// `Ok(None)` when stdin is not a terminal (nothing to change).
    pub fn enable() -> std::io::Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let fd = stdin.as_fd();
        let saved = rustix::termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &raw)?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        // Drain: output already written is shown before the settings change.
        let _ = rustix::termios::tcsetattr(
            stdin.as_fd(),
            rustix::termios::OptionalActions::Drain,
            &self.saved,
        );
    }
}
