//! The `Admin` service: namespaces, clients, keys, backups and the audit
//! trail. Every call needs `admin`, but the audit calls need `audit`, and
//! a client that may reveal is made or re-keyed only with `grant` too
//! (separation of duties); every call is recorded in the audit trail before
//! it is answered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{Stream, TryStreamExt, stream};
use phivault_proto::v1 as pb;
use phivault_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use super::call::Call;
use super::convert;
use crate::auth::{Action, Client};
use crate::{AuditEvent, NamespaceSpec, TokenMark, Vault};

/// Records read per step of an export.
const EXPORT_CHUNK: usize = 1000;
/// Longest grace period a rotated key may have.
const MAX_GRACE_SECS: u64 = 30 * 86_400;

/// Serves `phivault.v1.Admin`.
pub struct AdminService {
    vault: Arc<Vault>,
    backup_dir: Option<PathBuf>,
}

impl AdminService {
    /// The service over an unsealed vault.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self {
            vault,
            backup_dir: None,
        }
    }

    /// Confines `Backup` to paths inside `dir`.
    pub fn with_backup_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.backup_dir = dir;
        self
    }

    /// Authorises the call for `action` (a refusal is recorded).
    async fn begin<T>(
        &self,
        request: &Request<T>,
        action: Action<'_>,
    ) -> Result<(Call, Arc<Client>), Status> {
        let call = Call::of(request);
        let client = call.authorize(&self.vault, action, 0).await?;
        Ok((call, client))
    }

    /// Separation of duties for a change to client `id`: when it may
    /// reveal, grant or read the trail (or is not known here), the caller
    /// needs `grant`, which `admin` does not imply.
    fn needs_grant_for(&self, caller: &Client, id: &str, what: &str) -> Result<(), Status> {
        let privileged = self.vault.client(id).is_none_or(|c| c.is_privileged());
        if privileged && !caller.allows(Action::Grant) {
            return Err(Status::permission_denied(format!(
                "{what} a client that may reveal, grant or read the audit trail needs the grant scope, which admin does not imply (separation of duties)"
            )));
        }
        Ok(())
    }

    /// Answers a call whose success was recorded in the commit of its change
    /// (see the vault's `*_with_record` methods); a failure, which changed
    /// nothing, is recorded now.
    async fn end_recorded<T>(
        &self,
        (call, client): (Call, Arc<Client>),
        subject: AuditEvent,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        match result {
            Ok(answer) => Ok(call.respond(answer)),
            Err(status) => self.end((call, client), subject, Err(status)).await,
        }
    }

    /// Records the call with `subject` and answers it (fail closed).
    async fn end<T>(
        &self,
        (call, client): (Call, Arc<Client>),
        subject: AuditEvent,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        let answer = call.finish(&self.vault, &client, subject, result).await?;
        Ok(call.respond(answer))
    }
}

fn target(target: impl Into<String>) -> AuditEvent {
    AuditEvent {
        target: target.into(),
        ..AuditEvent::default()
    }
}

fn namespace(namespace: impl Into<String>) -> AuditEvent {
    AuditEvent {
        namespace: namespace.into(),
        ..AuditEvent::default()
    }
}

/// Where an export stands: the vault, the last record id read, the record
/// it stops at (read when the first chunk is), and the time before which
/// records are left out.
type ExportState = (Arc<Vault>, u64, Option<u64>, u64);
type RecordChunk = stream::Iter<std::vec::IntoIter<Result<pb::AuditRecord, Status>>>;

/// The next chunk of an export, read off the async workers. Records read
/// lane by lane (on the embedded store, one lane: in order), so a lane after
/// the first may hold records older than `--since`: they are left out here.
async fn export_chunk(
    (vault, after, up_to, since_ms): ExportState,
) -> Result<Option<(RecordChunk, ExportState)>, Status> {
    let up_to = match up_to {
        Some(seq) => seq,
        None => vault.audit_head_seq().await.map_err(Status::from)?,
    };
    let chunk = vault
        .audit_records(after, up_to, EXPORT_CHUNK)
        .await
        .map_err(Status::from)?;
    let Some(last) = chunk.last().map(|r| r.seq) else {
        return Ok(None);
    };
    let messages: Vec<Result<pb::AuditRecord, Status>> = chunk
        .iter()
        .filter(|r| r.time_ms >= since_ms)
        .map(|r| Ok(convert::audit_record(r)))
        .collect();
    Ok(Some((
        stream::iter(messages),
        (vault, last, Some(up_to), since_ms),
    )))
}

type RecordStream = std::pin::Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        let call = self.begin(&request, Action::Admin).await?;
        let request = request.into_inner();
        let subject = namespace(&request.name);
        let record = call.0.success_record(&call.1, subject.clone());
        let result = match NamespaceSpec::try_from(request) {
            Ok(spec) => self
                .vault
                .create_namespace_with_record(spec, Some(record))
                .await
                .map(|ns| convert::namespace(&ns))
                .map_err(Status::from),
            Err(status) => Err(status),
        };
        self.end_recorded(call, subject, result).await
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let call = self.begin(&request, Action::Admin).await?;
        let namespaces = self
            .vault
            .namespaces()
            .iter()
            .map(convert::namespace)
            .collect();
        let result = Ok(pb::ListNamespacesResponse { namespaces });
        self.end(call, AuditEvent::default(), result).await
    }

    async fn create_client(
        &self,
        request: Request<pb::CreateClientRequest>,
    ) -> Result<Response<pb::CreateClientResponse>, Status> {
        let call = self.begin(&request, Action::Admin).await?;
        let request = request.into_inner();
        // Separation of duties: a client that may reveal (or grant) is made
        // only by a caller holding `grant`, which `admin` does not imply.
        let scopes: Vec<crate::auth::Scope> = request
            .scopes
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        if crate::auth::needs_grant(&scopes) && !call.1.allows(Action::Grant) {
            let refusal = Status::permission_denied(
                "creating a client that may reveal, grant or read the audit trail needs the grant scope, which admin does not imply (separation of duties)",
            );
            return self.end(call, AuditEvent::default(), Err(refusal)).await;
        }
        let record = call.0.success_record(&call.1, AuditEvent::default());
        let result = self
            .vault
            .create_client_with_record(
                &crate::ClientSpec {
                    name: request.name,
                    scopes: request.scopes,
                    allow_masked_oracle: request.allow_masked_oracle,
                    limits: request.limits,
                    require_purpose: request.require_purpose,
                    key_lifetime: (request.key_lifetime_secs > 0)
                        .then(|| std::time::Duration::from_secs(request.key_lifetime_secs)),
                    suspend_on_alert: request.suspend_on_alert,
                },
                Some(record),
            )
            .await
            .map_err(Status::from)
            .map(|(client, key)| pb::CreateClientResponse {
                client: Some(convert::client(&client)),
                api_key: key.expose().to_owned(),
            });
        self.end_recorded(call, AuditEvent::default(), result).await
    }

    async fn list_clients(
        &self,
        request: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        let call = self.begin(&request, Action::Admin).await?;
        let clients = self.vault.clients().iter().map(convert::client).collect();
        let result = Ok(pb::ListClientsResponse { clients });
        self.end(call, AuditEvent::default(), result).await
    }

    async fn revoke_client(
        &self,
        request: Request<pb::RevokeClientRequest>,
    ) -> Result<Response<pb::Client>, Status> {
        let call = self.begin(&request, Action::Admin).await?;
        let id = request.into_inner().client_id;
        let record = call.0.success_record(&call.1, AuditEvent::default());
        let result = self
            .vault
            .revoke_client_with_record(&id, Some(record))
            .await
            .map(|c| convert::client(&c))
            .map_err(Status::from);
        self.end_recorded(call, target(id), result).await
    }

    async fn rotate_client_key(
        &self,
        request: Request<pb::RotateClientKeyRequest>,
    ) -> Result<Response<pb::CreateClientResponse>, Status> {
        let call = self.begin(&request, Action::Admin).await?;
        let request = request.into_inner();
        let id = request.client_id;
        // A new key for a client that may reveal is as good as creating
        // one: it needs `grant` too.
        if let Err(refusal) = self.needs_grant_for(&call.1, &id, "a new key for") {
            return self.end(call, target(id), Err(refusal)).await;
        }
        let grace_secs = request.grace_secs.unwrap_or(86_400);
        if grace_secs > MAX_GRACE_SECS {
            let refusal = Status::invalid_argument(format!(
                "the grace period is at most {MAX_GRACE_SECS} seconds (30 days)"
            ));
            return self.end(call, target(id), Err(refusal)).await;
        }
        let grace = std::time::Duration::from_secs(grace_secs);
        let record = call.0.success_record(&call.1, AuditEvent::default());
        let result = self
            .vault
            .rotate_client_key_with_record(&id, grace, Some(record))
            .await
            .map_err(Status::from)
            .map(|(client, key)| pb::CreateClientResponse {
                client: Some(convert::client(&client)),
                api_key: key.expose().to_owned(),
            });
        self.end_recorded(call, target(id), result).await
    }

    async fn release_client(
        &self,
        request: Request<pb::ReleaseClientRequest>,
    ) -> Result<Response<pb::Client>, Status> {
        let call = self.begin(&request, Action::Admin).await?;
        let id = request.into_inner().client_id;
        if let Err(refusal) = self.needs_grant_for(&call.1, &id, "releasing") {
            return self.end(call, target(id), Err(refusal)).await;
        }
        let record = call.0.success_record(&call.1, AuditEvent::default());
        let change = Box::new(|row: &mut crate::store::ClientRow| {
            row.break_glass_opened_at = None;
            row.suspended = None;
            true
        });
        let result = self
            .vault
            .update_client_with_record(&id, change, Some(record))
            .await
            .map(|c| convert::client(&c))
            .map_err(Status::from);
        self.end_recorded(call, target(id), result).await
    }

    async fn rotate_keys(
        &self,
        request: Request<pb::RotateKeysRequest>,
    ) -> Result<Response<pb::RotateKeysResponse>, Status> {
        let call = self.begin(&request, Action::Admin).await?;
        let record = call.0.success_record(&call.1, AuditEvent::default());
        let result = self
            .vault
            .rotate_keys_with_record(Some(record))
            .await
            .map(|new_version| pb::RotateKeysResponse { new_version })
            .map_err(Status::from);
        self.end_recorded(call, AuditEvent::default(), result).await
    }

    async fn get_key_status(
        &self,
        request: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::KeyStatus>, Status> {
        let call = self.begin(&request, Action::Admin).await?;
        let result = self
            .vault
            .key_status()
            .await
            .map(|s| convert::key_status(&s))
            .map_err(Status::from);
        self.end(call, AuditEvent::default(), result).await
    }

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        let call = self.begin(&request, Action::Admin).await?;
        let path = request.into_inner().path;
        // Without a configured directory, a caller with `admin` could make
        // the server write (and RocksDB first empty) any path it can reach.
        let result = match self.backup_dir.as_deref() {
            Some(dir) => self.vault.backup(Path::new(&path), Some(dir)).await,
            None => Err(crate::Error::BackupsDisabled),
        };
        let result = result
            .map(|info| pb::BackupResponse {
                path: info.path.display().to_string(),
                bytes: info.bytes,
            })
            .map_err(Status::from);
        self.end(call, target(path), result).await
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let call = self.begin(&request, Action::Audit).await?;
        let result = self
            .vault
            .verify_audit()
            .await
            .map(|report| pb::VerifyAuditResponse {
                records: report.records,
                head_seq: report.head_seq,
                first_bad_seq: report.first_bad.map_or(0, |(seq, _)| seq),
                problem: report
                    .first_bad
                    .map_or(String::new(), |(_, why)| why.to_owned()),
            })
            .map_err(Status::from);
        self.end(call, AuditEvent::default(), result).await
    }

    async fn list_disclosures(
        &self,
        request: Request<pb::ListDisclosuresRequest>,
    ) -> Result<Response<pb::ListDisclosuresResponse>, Status> {
        let call = self.begin(&request, Action::Audit).await?;
        let request = request.into_inner();
        let result = self
            .vault
            .disclosures(
                &request.namespace,
                &request.token,
                request.after_seq,
                request.limit as usize,
            )
            .await
            .map(|(found, next)| pb::ListDisclosuresResponse {
                disclosures: found.iter().map(convert::disclosure).collect(),
                next_after_seq: next.unwrap_or(0),
            })
            .map_err(Status::from);
        // Who looked up which token is itself on record, by its mark.
        let subject = AuditEvent {
            items: 1,
            tokens: vec![TokenMark {
                mac: self.vault.token_mark(&request.namespace, &request.token),
                revealed: false,
            }],
            ..namespace(request.namespace)
        };
        self.end(call, subject, result).await
    }

    type ExportAuditStream = RecordStream;

    async fn export_audit(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<RecordStream>, Status> {
        let call = self.begin(&request, Action::Audit).await?;
        let request = request.into_inner();
        let vault = Arc::clone(&self.vault);
        // The export ends at the head as it is now (this call's own record
        // included), so it finishes even while records keep arriving.
        let start = match request.since_ms {
            0 => Ok(request.after_seq),
            since => vault
                .audit_seq_at(since)
                .await
                .map(|first| first.saturating_sub(1).max(request.after_seq))
                .map_err(Status::from),
        };
        let result = start.map(|after| {
            let records = stream::try_unfold((vault, after, None, request.since_ms), export_chunk)
                .try_flatten();
            Box::pin(records) as RecordStream
        });
        self.end(call, AuditEvent::default(), result).await
    }
}
