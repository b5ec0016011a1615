use std::thread;

/// Runs each task (one per connection) on a thread of its own.
///
/// vendetta patch: upstream kept a pool that handed a task to an idle
/// thread when its count of waiting threads was above zero, but a woken
/// thread stays counted until it runs; in a burst of connections a task
/// could be queued with no thread to take it, and wait until some other
/// connection closed (minutes, with keep-alive). The server runs one task
/// per connection, and their number is capped, so a thread per task is
/// simple and enough; the pool itself is gone.
pub struct TaskPool {
    /// vendetta patch: the name its threads get, if any.
    name: Option<String>,
}

impl TaskPool {
    pub fn new(name: Option<String>) -> TaskPool {
        TaskPool { name }
    }

    /// Executes a function in a thread of its own. A failed spawn (EAGAIN
    /// at the thread limit) drops the task, and so its connection, instead
    /// of panicking.
    pub fn spawn(&self, mut code: Box<dyn FnMut() + Send>) {
        let mut builder = thread::Builder::new();
        if let Some(name) = &self.name {
            builder = builder.name(name.clone());
        }
        if let Err(e) = builder.spawn(move || code()) {
            log::warn!("cannot start a connection thread: {}", e);
        }
    }
}
