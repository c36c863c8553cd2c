//! The `Tokenizer` service: authentication and scope checks around the
//! engine's batch calls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt, stream};
use phivault_proto::v1 as pb;
use phivault_proto::v1::tokenizer_server::Tokenizer;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::activity::Activity;
use super::alerts::{Alert, Alerts};
use super::call::{self, Call};
use super::convert;
use super::limiter::{Limiter, Pace};
use super::watch::Seen;
use crate::auth::Action;
use crate::limits::Limited;
use crate::purpose::Purpose;
use crate::{AuditEvent, Error, Mint, TokenMark, Vault};

/// The `rpc` of the record of a client's break-glass window opening.
pub const BREAK_GLASS_OPENED_RPC: &str = "(break-glass window opened)";

/// Stream messages of one call processed at once; responses still leave in
/// request order.
const STREAM_CONCURRENCY: usize = 8;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the data plane's calls go through: the vault, the rate limits and
/// quotas, and the tallies of tokenize calls and calls over a limit.
#[derive(Clone)]
pub(crate) struct Plane {
    pub(crate) vault: Arc<Vault>,
    /// What `GetServerInfo` answers.
    pub(crate) info: pb::GetServerInfoResponse,
    /// Items answered, for the metrics.
    pub(crate) items: super::metrics::Items,
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) activity: Arc<Activity>,
    pub(crate) alerts: Arc<Alerts>,
    /// How long a client may break the glass once it has, before an
    /// administrator must re-arm it.
    pub(crate) break_glass_window: std::time::Duration,
    /// Reveal-anomaly detection, unless turned off.
    pub(crate) watch: Option<Arc<super::watch::Watch>>,
}

impl Plane {
    /// Checks a reveal's purpose of use: well formed, present when the
    /// client must state one, and for a reveal that breaks the glass,
    /// within the client's window (opening it on the first).
    async fn check_purpose(
        &self,
        client: &crate::auth::Client,
        request: &pb::DetokenizeRequest,
        breaking: bool,
    ) -> Result<(), Status> {
        let purpose = Purpose::new(&request.purpose, &request.reason)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if client.require_purpose && !purpose.is_stated() {
            return Err(Status::failed_precondition(
                "this client must state a purpose of use with each reveal (purpose in the request, --purpose on the command line)",
            ));
        }
        if !breaking {
            return Ok(());
        }
        let window = self.break_glass_window.as_secs();
        let now = crate::clock::now_secs();
        let opened = match client.break_glass_opened_at {
            Some(opened) => opened,
            None => {
                // Opened here unless another call (on any node) did first:
                // the row as stored decides, and only the call that opens
                // the window writes its record.
                let record = AuditEvent {
                    client_id: client.id.clone(),
                    authenticated: true,
                    rpc: BREAK_GLASS_OPENED_RPC.to_owned(),
                    namespace: request.namespace.clone(),
                    purpose: purpose.code,
                    reason: purpose.reason,
                    ..AuditEvent::default()
                };
                let change = Box::new(move |row: &mut crate::store::ClientRow| {
                    if row.break_glass_opened_at.is_some() {
                        return false;
                    }
                    row.break_glass_opened_at = Some(now);
                    true
                });
                let stored = self
                    .vault
                    .update_client_with_record(&client.id, change, Some(record))
                    .await
                    .map_err(Status::from)?;
                stored.break_glass_opened_at.unwrap_or(now)
            }
        };
        if now >= opened.saturating_add(window) {
            return Err(Status::permission_denied(format!(
                "this client's break-glass window of {} closed; an administrator re-arms it after review (pvc clients release {})",
                humantime::format_duration(self.break_glass_window),
                client.id
            )));
        }
        Ok(())
    }

    /// Takes `items` from the client's rate for `limited` in `namespace`;
    /// a refusal is tallied and becomes the call's status.
    async fn admit(
        &self,
        call: &Call,
        client: &crate::auth::Client,
        limited: Limited,
        namespace: &str,
        items: usize,
        pace: Pace,
    ) -> Result<(), Status> {
        let exists = || self.vault.namespace(namespace).is_ok();
        self.limiter
            .admit(client, limited, namespace, items, pace, exists)
            .await
            .map_err(|e| {
                self.activity.limited(&client.id, namespace, limited, items);
                call.fail(e.into())
            })
    }
}

/// Serves `phivault.v1.Tokenizer`.
pub struct TokenizerService {
    plane: Plane,
    stopping: watch::Receiver<bool>,
}

impl TokenizerService {
    /// The service over an unsealed vault. Once `stopping` turns true, open
    /// streams take no further messages: those already taken are answered,
    /// then the stream ends with `UNAVAILABLE`, so that a bulk client resends
    /// the rest to the next server instead of holding this one's shutdown
    /// open for as long as its input lasts.
    pub(crate) fn new(plane: Plane, stopping: watch::Receiver<bool>) -> Self {
        Self { plane, stopping }
    }
}

/// Names the call's namespace and item count on its span, when calls are
/// traced: a namespace the vault has (an administrator's name), never what
/// a caller typed into the field, which could be anything.
fn name_on_span(vault: &Vault, namespace: &str, items: usize) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    if vault.namespace(namespace).is_ok() {
        span.record("phivault.namespace", namespace);
    }
    span.record("phivault.items", items);
}

async fn tokenize(
    plane: &Plane,
    call: &Call,
    request: pb::TokenizeRequest,
    pace: Pace,
) -> Result<pb::TokenizeResponse, Status> {
    let vault = &*plane.vault;
    // Tokenizing reveals nothing: only a refusal is recorded, so that bulk
    // pipelines do not write a record per batch.
    let client = call
        .authorize(
            vault,
            Action::Tokenize(&request.namespace),
            request.values.len(),
        )
        .await?;
    let namespace = &request.namespace;
    let items = request.values.len();
    name_on_span(vault, namespace, items);
    plane
        .admit(call, &client, Limited::Tokenize, namespace, items, pace)
        .await?;
    // A `lookup` client gets the tokens of values already there, and
    // `NOT_FOUND` for the rest: it can neither grow the vault nor use
    // minting to enumerate a small domain. A quota of new mappings is
    // reserved once the call knows how many it needs, and what it did not
    // make is given back.
    let reserved = std::sync::Mutex::new((0u64, 0u64));
    let reserve = |n: u64| {
        let window = plane.limiter.reserve(&client, namespace, n)?;
        *reserved.lock().unwrap_or_else(|e| e.into_inner()) = (n, window);
        Ok(())
    };
    let mint = if !client.may_mint(namespace) {
        Mint::Never
    } else if plane.limiter.quota(&client, namespace).is_some() {
        Mint::Reserving(&reserve)
    } else {
        Mint::Always
    };
    let outcome = vault
        .tokenize_counted(namespace, &request.values, mint)
        .await;
    let (reserved, window) = reserved.into_inner().unwrap_or_else(|e| e.into_inner());
    let results = match outcome {
        Ok((results, counts)) => {
            plane.limiter.refund(
                &client,
                namespace,
                reserved.saturating_sub(counts.minted),
                window,
            );
            plane
                .activity
                .tokenized(&client.id, namespace, items, counts);
            if let Some(watch) = &plane.watch {
                let seen = Seen {
                    namespace,
                    reveal: false,
                    masked: false,
                    marks: &[],
                    items: &request.values,
                    minted: counts.minted,
                    peer: call.peer(),
                };
                watch.observe(&client, seen).await;
            }
            results
        }
        Err(e) => {
            plane.limiter.refund(&client, namespace, reserved, window);
            if matches!(e, Error::Limited { .. }) {
                plane
                    .activity
                    .limited(&client.id, namespace, Limited::NewMappings, items);
            }
            return Err(call.fail(e.into()));
        }
    };
    plane.items.count("tokenize", &results);
    Ok(pb::TokenizeResponse {
        results: convert::item_results(results),
    })
}

async fn detokenize(
    plane: &Plane,
    call: &Call,
    request: pb::DetokenizeRequest,
    pace: Pace,
) -> Result<pb::DetokenizeResponse, Status> {
    let vault = &*plane.vault;
    let namespace = request.namespace.as_str();
    let items = request.tokens.len();
    name_on_span(vault, namespace, items);
    let purpose = Purpose::new(&request.purpose, &request.reason);
    let emergency = purpose.as_ref().is_ok_and(Purpose::breaks_glass);
    let action = if emergency {
        Action::BreakGlass {
            namespace,
            masked: request.masked,
        }
    } else if request.masked {
        Action::DetokenizeMasked(namespace)
    } else {
        Action::Detokenize(namespace)
    };
    // The scope is checked before the vault is asked anything, so a caller
    // without it learns nothing about whether a namespace or token exists.
    let client = call.authorize(vault, action, items).await?;
    // Only in a namespace that exists: a call to another fails anyway, and
    // must neither open the window nor put its name on record.
    let breaking = emergency
        && client.breaks_glass_in(namespace, request.masked)
        && vault.namespace(namespace).is_ok();
    let purpose = purpose.unwrap_or_default();
    let subject = AuditEvent {
        namespace: namespace.to_owned(),
        items: call::count(items),
        masked: request.masked,
        purpose: purpose.code.clone(),
        reason: purpose.reason.clone(),
        break_glass: breaking,
        ..AuditEvent::default()
    };
    if let Err(refusal) = plane.check_purpose(&client, &request, breaking).await {
        // On record like any refusal of an authorised call.
        let subject = AuditEvent {
            break_glass: false,
            ..subject
        };
        return call.finish(vault, &client, subject, Err(refusal)).await;
    }
    // Breaking the glass lifts the client's rate limits (its window bounds
    // it instead).
    if !breaking {
        plane
            .admit(call, &client, Limited::Detokenize, namespace, items, pace)
            .await?;
    }
    let result = vault
        .detokenize_marked(namespace, &request.tokens)
        .await
        .map_err(Status::from);
    // One mark per token, revealed or not; none for a request refused as a
    // whole (it may be oversized, and nothing in it was looked at).
    let (result, tokens) = match result {
        Ok((results, marks)) => {
            let tokens = marks
                .into_iter()
                .zip(&results)
                .map(|(mac, result)| TokenMark {
                    mac,
                    revealed: result.is_ok(),
                })
                .collect();
            (Ok(results), tokens)
        }
        Err(status) => (Err(status), Vec::new()),
    };
    let revealed: Vec<[u8; 32]> = match &plane.watch {
        Some(_) => tokens
            .iter()
            .filter(|t| t.revealed)
            .map(|t| t.mac)
            .collect(),
        None => Vec::new(),
    };
    let subject = AuditEvent { tokens, ..subject };
    let mut results = call.finish(vault, &client, subject, result).await?;
    if let Some(watch) = &plane.watch {
        let seen = Seen {
            namespace,
            reveal: true,
            masked: request.masked,
            marks: &revealed,
            items: &request.tokens,
            minted: 0,
            peer: call.peer(),
        };
        watch.observe(&client, seen).await;
    }
    if breaking {
        let revealed = results.iter().filter(|r| r.is_ok()).count();
        plane
            .alerts
            .raise(
                vault,
                Alert {
                    kind: "break-glass",
                    client_id: client.id.clone(),
                    namespace: namespace.to_owned(),
                    items: call::count(items),
                    reason: format!(
                        "purpose={} revealed={revealed}: a reveal beyond the client's scopes and limits, stating an emergency",
                        purpose.code
                    ),
                },
            )
            .await;
    }
    plane.items.count("detokenize", &results);
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
    async fn stream<Req, Resp, F, Fut>(
        &self,
        request: Request<Streaming<Req>>,
        handle: F,
    ) -> Result<Response<ResponseStream<Resp>>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(Plane, Arc<Call>, Req) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let call = Arc::new(Call::of(&request));
        call.authenticate(&self.plane.vault)?;
        let plane = self.plane.clone();
        let stream_call = Arc::clone(&call);
        let mut stop = self.stopping.clone();
        let stopped = async move {
            // An error means the server is gone, which is also a stop.
            let _ = stop.wait_for(|stopping| *stopping).await;
        };
        let stopping = self.stopping.clone();
        let shut_down = stream::once(async move { *stopping.borrow() })
            .filter_map(|stopping| async move {
                stopping.then(|| {
                    Status::unavailable(
                        "the server is shutting down; resend the unanswered messages",
                    )
                })
            })
            .map(Err);
        let responses = request
            .into_inner()
            .take_until(stopped)
            .map(move |message| {
                let pending = message.map(|m| handle(plane.clone(), Arc::clone(&stream_call), m));
                async move { pending?.await }
            })
            .buffered(STREAM_CONCURRENCY)
            .chain(shut_down);
        Ok(call.respond(Box::pin(responses) as ResponseStream<Resp>))
    }
}

#[tonic::async_trait]
impl Tokenizer for TokenizerService {
    async fn tokenize(
        &self,
        request: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let call = Call::of(&request);
        tokenize(&self.plane, &call, request.into_inner(), Pace::Refuse)
            .await
            .map(|r| call.respond(r))
    }

    async fn detokenize(
        &self,
        request: Request<pb::DetokenizeRequest>,
    ) -> Result<Response<pb::DetokenizeResponse>, Status> {
        let call = Call::of(&request);
        detokenize(&self.plane, &call, request.into_inner(), Pace::Refuse)
            .await
            .map(|r| call.respond(r))
    }

    type TokenizeStreamStream = ResponseStream<pb::TokenizeResponse>;

    async fn tokenize_stream(
        &self,
        request: Request<Streaming<pb::TokenizeRequest>>,
    ) -> Result<Response<Self::TokenizeStreamStream>, Status> {
        self.stream(request, |plane, call, message| async move {
            tokenize(&plane, &call, message, Pace::Wait).await
        })
        .await
    }

    async fn get_server_info(
        &self,
        request: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::GetServerInfoResponse>, Status> {
        // Any client whose key is good, and not revoked or suspended on any
        // node: a pipeline needs the limits to size its batches.
        let call = Call::of(&request);
        let vault = &self.plane.vault;
        if let Err(e) = vault.refresh().await {
            return Err(call.fail(Status::from(e)));
        }
        let client = call.authenticate(vault)?;
        if client.suspended.is_some() {
            return Err(call.fail(Status::permission_denied(
                "this client is suspended by anomaly detection; an administrator releases it after review",
            )));
        }
        Ok(call.respond(self.plane.info.clone()))
    }

    type DetokenizeStreamStream = ResponseStream<pb::DetokenizeResponse>;

    async fn detokenize_stream(
        &self,
        request: Request<Streaming<pb::DetokenizeRequest>>,
    ) -> Result<Response<Self::DetokenizeStreamStream>, Status> {
        self.stream(request, |plane, call, message| async move {
            detokenize(&plane, &call, message, Pace::Wait).await
        })
        .await
    }
}
