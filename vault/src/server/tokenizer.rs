//! The `Tokenizer` service: authentication and scope checks around the
//! engine's batch calls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use phivault_proto::v1 as pb;
use phivault_proto::v1::tokenizer_server::Tokenizer;
use tonic::{Request, Response, Status, Streaming};

use super::{authorize, convert};
use crate::Vault;
use crate::auth::Action;

/// Stream messages of one call processed at once; responses still leave in
/// request order.
const STREAM_CONCURRENCY: usize = 8;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves `phivault.v1.Tokenizer`.
pub struct TokenizerService {
    vault: Arc<Vault>,
}

impl TokenizerService {
    /// The service over an unsealed vault.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

async fn tokenize(
    vault: &Vault,
    authorization: Option<&str>,
    request: pb::TokenizeRequest,
) -> Result<pb::TokenizeResponse, Status> {
    authorize(vault, authorization, Action::Tokenize(&request.namespace))?;
    let results = vault.tokenize(&request.namespace, &request.values).await?;
    Ok(pb::TokenizeResponse {
        results: convert::item_results(results),
    })
}

async fn detokenize(
    vault: &Vault,
    authorization: Option<&str>,
    request: pb::DetokenizeRequest,
) -> Result<pb::DetokenizeResponse, Status> {
    let action = if request.masked {
        Action::DetokenizeMasked(&request.namespace)
    } else {
        Action::Detokenize(&request.namespace)
    };
    // The scope is checked before the vault is asked anything, so a caller
    // without it learns nothing about whether a namespace or token exists.
    authorize(vault, authorization, action)?;
    let mut results = vault
        .detokenize(&request.namespace, &request.tokens)
        .await?;
    if request.masked {
        for value in results.iter_mut().flatten() {
            *value = crate::mask(value);
        }
    }
    Ok(pb::DetokenizeResponse {
        results: convert::item_results(results),
    })
}

impl TokenizerService {
    /// Answers every message of a stream with `handle`, up to
    /// `STREAM_CONCURRENCY` at once, in request order. A stream without a
    /// valid key is refused at once; every message is then authorised on its
    /// own, so a revocation also stops a stream that is already open.
    fn stream<Req, Resp, F, Fut>(
        &self,
        request: Request<Streaming<Req>>,
        handle: F,
    ) -> Result<Response<ResponseStream<Resp>>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(Arc<Vault>, Arc<Option<String>>, Req) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let auth = Arc::new(authorization(&request));
        self.vault
            .authenticate(auth.as_deref())
            .map_err(super::status::unauthenticated)?;
        let vault = Arc::clone(&self.vault);
        let responses = request
            .into_inner()
            .map(move |message| {
                let pending = message.map(|m| handle(Arc::clone(&vault), Arc::clone(&auth), m));
                async move { pending?.await }
            })
            .buffered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(responses)))
    }
}

fn authorization<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tonic::async_trait]
impl Tokenizer for TokenizerService {
    async fn tokenize(
        &self,
        request: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let auth = authorization(&request);
        tokenize(&self.vault, auth.as_deref(), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn detokenize(
        &self,
        request: Request<pb::DetokenizeRequest>,
    ) -> Result<Response<pb::DetokenizeResponse>, Status> {
        let auth = authorization(&request);
        detokenize(&self.vault, auth.as_deref(), request.into_inner())
            .await
            .map(Response::new)
    }

    type TokenizeStreamStream = ResponseStream<pb::TokenizeResponse>;

    async fn tokenize_stream(
        &self,
        request: Request<Streaming<pb::TokenizeRequest>>,
    ) -> Result<Response<Self::TokenizeStreamStream>, Status> {
        self.stream(request, |vault, auth, message| async move {
            tokenize(&vault, auth.as_deref(), message).await
        })
    }

    type DetokenizeStreamStream = ResponseStream<pb::DetokenizeResponse>;

    async fn detokenize_stream(
        &self,
        request: Request<Streaming<pb::DetokenizeRequest>>,
    ) -> Result<Response<Self::DetokenizeStreamStream>, Status> {
        self.stream(request, |vault, auth, message| async move {
            detokenize(&vault, auth.as_deref(), message).await
        })
    }
}
