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

    /// Publishes what node `node` admitted under the rate limits and quotas
    /// it enforces (each a running total, kept for `keep_for`), and returns
    /// what every other node published and still keeps: how nodes that
    /// share storage share their clients' limits. A backend only one
    /// process uses shares nothing.
    fn share_usage<'a>(
        &'a self,
        node: &'a str,
        mine: Vec<Usage>,
    ) -> StoreFuture<'a, Vec<SharedUsage>> {
        let _ = (node, mine);
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
}

/// What this node admitted under one limit, as it publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The limit: client, kind, namespace (and window, for a quota).
    pub key: String,
    /// Items admitted under it by this node, from the node's start (a rate)
    /// or the window's (a quota).
    pub total: u64,
    /// How long the figure is worth keeping: to the end of a quota's window;
    /// a minute for a rate, renewed as long as the node publishes it.
    pub keep_for: Duration,
}

/// Another node's figure for one limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedUsage {
    /// The node that published it.
    pub node: String,
    /// The limit.
    pub key: String,
    /// Its running total.
    pub total: u64,
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
