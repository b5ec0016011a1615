//! The signal thread: forwards SIGTERM/SIGINT/SIGHUP to the main loop as
//! [`Control`] messages and does nothing else.

use super::threads::{self, Control, Thread};
use crossbeam_channel::Sender;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

pub(crate) fn spawn(control: Sender<Control>) -> std::io::Result<Thread> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    threads::spawn("signals", None, move || {
        for sig in signals.forever() {
            let msg = match sig {
                SIGHUP => Control::Reload,
                SIGINT => Control::Shutdown("SIGINT"),
                _ => Control::Shutdown("SIGTERM"),
            };
            if control.send(msg).is_err() {
                break;
            }
        }
    })
}
