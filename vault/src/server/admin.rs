//! The `Admin` service: namespaces, clients, keys and backups. Every call
//! needs `admin`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use phivault_proto::v1 as pb;
use phivault_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use super::{authorize, convert};
use crate::auth::Action;
use crate::{NamespaceSpec, Vault};

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

    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        authorize(&self.vault, auth, Action::Admin).map(drop)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        self.admin(&request)?;
        let spec = NamespaceSpec::try_from(request.into_inner())?;
        let created = self.vault.create_namespace(spec).await?;
        Ok(Response::new(convert::namespace(&created)))
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        self.admin(&request)?;
        let namespaces = self
            .vault
            .namespaces()
            .iter()
            .map(convert::namespace)
            .collect();
        Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
    }

    async fn create_client(
        &self,
        request: Request<pb::CreateClientRequest>,
    ) -> Result<Response<pb::CreateClientResponse>, Status> {
        self.admin(&request)?;
        let request = request.into_inner();
        let (client, key) = self
            .vault
            .create_client(&request.name, &request.scopes)
            .await?;
        Ok(Response::new(pb::CreateClientResponse {
            client: Some(convert::client(&client)),
            api_key: key.expose().to_owned(),
        }))
    }

    async fn list_clients(
        &self,
        request: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        self.admin(&request)?;
        let clients = self.vault.clients().iter().map(convert::client).collect();
        Ok(Response::new(pb::ListClientsResponse { clients }))
    }

    async fn revoke_client(
        &self,
        request: Request<pb::RevokeClientRequest>,
    ) -> Result<Response<pb::Client>, Status> {
        self.admin(&request)?;
        let revoked = self
            .vault
            .revoke_client(&request.into_inner().client_id)
            .await?;
        Ok(Response::new(convert::client(&revoked)))
    }

    async fn rotate_keys(
        &self,
        request: Request<pb::RotateKeysRequest>,
    ) -> Result<Response<pb::RotateKeysResponse>, Status> {
        self.admin(&request)?;
        let new_version = self.vault.rotate_keys().await?;
        Ok(Response::new(pb::RotateKeysResponse { new_version }))
    }

    async fn get_key_status(
        &self,
        request: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::KeyStatus>, Status> {
        self.admin(&request)?;
        let status = self.vault.key_status()?;
        Ok(Response::new(convert::key_status(&status)))
    }

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        self.admin(&request)?;
        let path = request.into_inner().path;
        let info = self
            .vault
            .backup(Path::new(&path), self.backup_dir.as_deref())
            .await?;
        Ok(Response::new(pb::BackupResponse {
            path: info.path.display().to_string(),
            bytes: info.bytes,
        }))
    }
}
