//! Named crash points for the tests of multi-step operations.

/// Stops the process at a named step when the `failpoints` feature is on and
/// `PHIVAULT_FAILPOINT` names it — how the tests prove that a crash at each
/// step of a multi-step operation leaves a usable vault. Compiled out
/// otherwise.
pub(crate) fn failpoint(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("PHIVAULT_FAILPOINT").is_ok_and(|f| f == name) {
        eprintln!("phivault: failpoint {name}: aborting");
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
