//! Background threads the process cannot run without. Commits wait for the write-ahead log's
//! sync thread, memory and checkpoints for the maintenance thread: if one of them died of a
//! panic, every later commit, and shutdown itself, would wait forever while the server still
//! answered reads. So a panic in one ends the process at once (`abort`): clients see their
//! connections close, nothing acknowledged is lost (it is durable), and a supervisor restarts
//! the server, which recovers as after any crash.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

/// Start a thread named `name` running `body`; if `body` panics, the process aborts. Errors
/// only if the thread cannot be started.
pub fn spawn_essential<F>(name: &str, body: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let thread_name = name.to_string();
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            if catch_unwind(AssertUnwindSafe(body)).is_err() {
                // Best effort: stderr may be the full disk that caused this.
                let _ = writeln!(
                    std::io::stderr(),
                    "potok: the {thread_name} thread panicked; aborting (recovery on restart)"
                );
                std::process::abort();
            }
        })
}
