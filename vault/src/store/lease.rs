//! Leases on background jobs: the one operation of the storage boundary
//! that only matters with more than one node. A job (a key rotation, a
//! checkpoint of the audit chains) runs on the node that holds its lease;
//! every grant to a new holder raises a fencing counter, so that the steps
//! of a holder that lost its lease can be told from the new holder's.

use std::time::Duration;

use super::StoreFuture;

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub job: String,
    /// Who holds it.
    pub holder: String,
    /// Raised by every grant to a new holder; kept by renewals.
    pub fence: u64,
}

/// The lease operations of a backend.
pub trait LeaseStore: Send + Sync {
    /// Grants or renews `job`'s lease to `holder` for `ttl`: granted when
    /// nobody holds it, its holder's time ran out, or `holder` holds it
    /// already. `None` while another holder has it.
    fn acquire_lease<'a>(
        &'a self,
        job: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<Lease>>;

    /// Gives the lease up, if `lease` still is it.
    fn release_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, ()>;
}

/// A name for this process as a lease holder: host, process id and a random
/// part, so that a restarted process is a new holder whose grants raise the
/// fence.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}:{}:{random}", std::process::id())
}
