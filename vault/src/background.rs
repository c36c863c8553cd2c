//! CPU work that can wait: collision searches of nearly full token spaces.
//!
//! A search of a full namespace draws and checks a quarter of a million
//! candidates per request. On the blocking pool it would compete on equal
//! terms with the threads answering reveals, and on a two-core machine a
//! stream of such requests made every reveal several times slower. Here it
//! runs on threads of their own whose scheduling priority is lowered (nice
//! 10): the kernel hands a runnable reveal the core first, and the search
//! takes what is left. There are one fewer of them than cores, so a flood of
//! searches never holds every core either; searches beyond that wait their
//! turn, which only a request for an exhausted space notices.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;

use tokio::sync::oneshot;

/// How much the background threads' nice value is raised (capped at 19): a
/// thread at 0 gets about nine times the share of a contended core of one
/// at 10.
const NICENESS: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The queue of the background threads, started on first use; `None` if
/// not one could be started.
fn queue() -> Option<&'static mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (sender, receiver) = mpsc::channel::<Job>();
            let receiver = Arc::new(Mutex::new(receiver));
            let threads = thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1);
            let started = (0..threads)
                .filter(|index| {
                    let receiver = Arc::clone(&receiver);
                    thread::Builder::new()
                        .name(format!("phivault-background-{index}"))
                        .spawn(move || serve(&receiver))
                        .inspect_err(
                            |e| tracing::error!(error = %e, "cannot start a background thread"),
                        )
                        .is_ok()
                })
                .count();
            (started > 0).then_some(sender)
        })
        .as_ref()
}

/// A background thread: lowers its priority, then runs jobs until the
/// process ends.
fn serve(receiver: &Mutex<mpsc::Receiver<Job>>) {
    lower_priority();
    loop {
        // The guard is dropped before the job runs, so the other threads
        // take jobs meanwhile.
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Lowers the calling thread's scheduling priority. Raising it back would
/// need a privilege, which is why these threads are not borrowed from a
/// shared pool.
fn lower_priority() {
    let me = rustix::thread::gettid();
    // Relative to the process's own: a service already started under nice
    // keeps its searches below its reveals.
    let current = rustix::process::getpriority_process(Some(me)).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(Some(me), (current + NICENESS).min(19)) {
        // Still correct, only not yielding to reveals.
        tracing::warn!(error = %e, "cannot lower the priority of a background thread");
    }
}

/// The background work was lost: the job panicked.
#[derive(Debug)]
pub(crate) struct Lost;

/// Runs `job` on a background thread and waits for its result without
/// holding up an async worker. Should no background thread start, the job
/// runs on the blocking pool at normal priority rather than not at all.
pub(crate) async fn run<T, F>(job: F) -> Result<T, Lost>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let Some(queue) = queue() else {
        return tokio::task::spawn_blocking(job).await.map_err(|_| Lost);
    };
    let (reply, result) = oneshot::channel();
    let job: Job = Box::new(move || {
        // A panic stays in the job: the thread lives on for the next one.
        if let Ok(value) = catch_unwind(AssertUnwindSafe(job)) {
            let _ = reply.send(value);
        }
    });
    queue.send(job).map_err(|_| Lost)?;
    result.await.map_err(|_| Lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_runs_at_lowered_priority_and_a_panic_loses_only_itself() {
        let ours = rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            .expect("getpriority");
        let nice = run(|| rustix::process::getpriority_process(Some(rustix::thread::gettid())))
            .await
            .expect("ran")
            .expect("getpriority");
        assert_eq!(nice, (ours + NICENESS).min(19));
        assert!(run(|| panic!("a job fails")).await.is_err());
        assert_eq!(run(|| 2 + 2).await.expect("ran"), 4);
    }
}
