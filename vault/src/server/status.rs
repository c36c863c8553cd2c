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
            Error::AuditUnavailable(ref detail) => {
                tracing::error!(error = %detail, "an audit record could not be written; the call is refused (fail closed)");
                Status::unavailable(
                    "the vault cannot write its audit trail; the call was refused (retry later)",
                )
            }
            Error::Store(crate::store::StoreError::Tampered { table, ref row }) => {
                tracing::error!(table, row = %row, "a row failed its integrity check; the call is refused");
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
            | Error::Corrupt(_)
            | Error::KeyIntegrity
            | Error::Crypto(_) => {
                tracing::error!(error = %e, "internal failure");
                Status::internal("internal error")
            }
        }
    }
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
