//! The one place where core errors become gRPC statuses. Messages are fixed
//! or name only what the caller sent that is not PHI (a namespace, a client
//! id, a limit); the details of storage and crypto failures go to the log.

use tonic::{Code, Status};

use crate::Error;
use crate::auth::AuthError;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::NamespaceNotFound(_) | Error::ClientNotFound(_) => {
                Status::not_found(e.to_string())
            }
            Error::NamespaceExists(_) => Status::already_exists(e.to_string()),
            Error::RotationInProgress | Error::BackupsDisabled => {
                Status::failed_precondition(e.to_string())
            }
            Error::InvalidBackupPath(_) => Status::invalid_argument(e.to_string()),
            Error::InvalidNamespace(_) | Error::InvalidClient(_) | Error::TooManyItems { .. } => {
                Status::invalid_argument(e.to_string())
            }
            Error::InvalidToken(_) => Status::invalid_argument(e.to_string()),
            Error::Limited { what, retry_after } => limited(&what, retry_after),
            Error::AuditUnavailable(ref detail) if detail.is_data_loss() => {
                tracing::error!(error = %detail, "the audit trail failed its integrity check; the call is refused (fail closed)");
                Status::data_loss(
                    "the vault's audit trail failed its integrity check; the call was refused",
                )
            }
            Error::AuditUnavailable(ref detail) => {
                tracing::error!(error = %detail, "an audit record could not be written; the call is refused (fail closed)");
                Status::unavailable(
                    "the vault cannot write its audit trail; the call was refused (retry later)",
                )
            }
            Error::Store(ref detail) if detail.is_data_loss() => {
                tracing::error!(error = %detail, "stored data failed its integrity check; the call is refused");
                Status::data_loss("stored data failed its integrity check")
            }
            Error::Corrupt(_) | Error::KeyIntegrity => {
                tracing::error!(error = %e, "stored data failed its integrity check; the call is refused");
                Status::data_loss("stored data failed its integrity check")
            }
            Error::Store(ref detail) => {
                tracing::error!(error = %detail, "storage failure");
                Status::unavailable("the vault's storage is unavailable; retry later")
            }
            Error::WrongMasterKey
            | Error::MasterKey(_)
            | Error::WeakPassphrase { .. }
            | Error::NotInitialized(_)
            | Error::AlreadyInitialized(_)
            | Error::Export(_)
            | Error::Crypto(_) => {
                tracing::error!(error = %e, "internal failure");
                Status::internal("internal error")
            }
        }
    }
}

/// The metadata key of gRPC's retry pushback (gRFC A6): how many
/// milliseconds the caller should wait before it sends the call again.
pub(crate) const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// `RESOURCE_EXHAUSTED` for a spent rate limit or quota, with the time
/// until the call would be allowed in words and in `grpc-retry-pushback-ms`.
/// Without one (waiting does not help) the pushback is `-1`, which gRFC A6
/// defines as "do not retry".
pub(crate) fn limited(what: &str, retry_after: Option<std::time::Duration>) -> Status {
    let (message, pushback) = match retry_after {
        Some(wait) => {
            // Rounded up: a caller that waits exactly this long is allowed.
            let ms = wait.as_millis().saturating_add(1);
            (
                format!("{what}; retry in {:.1} s", ms as f64 / 1000.0),
                ms.to_string(),
            )
        }
        None => (what.to_owned(), "-1".to_owned()),
    };
    let mut status = Status::resource_exhausted(message);
    if let Ok(value) = pushback.parse() {
        status.metadata_mut().insert(RETRY_PUSHBACK, value);
    }
    status
}

/// Missing, malformed, unknown and revoked keys look alike to the caller;
/// the log says which it was.
pub(crate) fn unauthenticated(e: AuthError) -> Status {
    // Debug, not info: refusals cost a peer nothing, and a log line each
    // would let any peer fill the disk; the audit trail tallies them.
    tracing::debug!(reason = %e, "unauthenticated call refused");
    Status::new(
        Code::Unauthenticated,
        "a valid API key is required (authorization: Bearer pv_...)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn code(e: Error) -> Code {
        Status::from(e).code()
    }

    #[test]
    fn damaged_data_is_data_loss_and_unreachable_storage_is_unavailable() {
        let tampered = || StoreError::Tampered {
            table: "clients",
            row: "c1".into(),
        };
        let corrupt = || StoreError::Corrupt {
            table: "meta",
            what: "the audit head is unreadable",
        };
        assert_eq!(code(Error::Store(tampered())), Code::DataLoss);
        assert_eq!(code(Error::Store(corrupt())), Code::DataLoss);
        assert_eq!(code(Error::Corrupt("keyset row")), Code::DataLoss);
        assert_eq!(code(Error::KeyIntegrity), Code::DataLoss);
        assert_eq!(code(Error::AuditUnavailable(corrupt())), Code::DataLoss);

        let unavailable = || StoreError::Unavailable("No space left on device".into());
        assert_eq!(code(Error::Store(unavailable())), Code::Unavailable);
        assert_eq!(
            code(Error::Store(StoreError::WriterStopped)),
            Code::Unavailable
        );
        assert_eq!(
            code(Error::AuditUnavailable(unavailable())),
            Code::Unavailable
        );
    }

    #[test]
    fn no_storage_detail_reaches_the_client() {
        let status = Status::from(Error::Store(StoreError::Unavailable(
            "IO error: /var/lib/phivault/000042.sst".into(),
        )));
        assert!(!status.message().contains("sst"), "{}", status.message());
    }
}
