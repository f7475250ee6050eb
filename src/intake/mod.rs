//! The intake: Falco's `http_output` and Falcosidekick's `webhook` POST one
//! alert per request to `/` or `/v1/falco`.
//!
//! A request is authenticated, bounded, parsed, enriched from the cluster
//! caches and queued, then answered `202 Accepted`: no Kubernetes API call
//! happens before the answer. Falco counts any answer as delivered and never
//! resends, so a refusal says clearly what to fix.

pub mod auth;
pub mod queue;
pub mod server;
pub mod tls;

use crate::cluster::ClusterCache;
use crate::falco::{self, ParseError};
use crate::metrics::{Metrics, RequestLabels};
use crate::report::Arrival;
use crate::report::aggregate::Bounds;
use auth::Auth;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use queue::{Queue, Refused};
use server::Peer;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a request was not accepted. The message is the answer's body.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(
        "missing or wrong credentials: send `Authorization: Bearer <token>` with a token from the operator's --intake-token-file, or connect with a client certificate signed by its --intake-client-ca"
    )]
    Unauthorized,
    #[error(
        "the alert is larger than {limit} bytes: raise --intake-max-body on the operator, or shorten the rule's output"
    )]
    TooLarge { limit: usize },
    #[error(
        "the body is text/plain, which Falco sends when json_output is false: set json_output: true (and json_include_output_property: true) in falco.yaml"
    )]
    PlainText,
    #[error("content type {0:?} is not supported: send the alert as application/json")]
    UnsupportedType(String),
    #[error(
        "content encoding {0:?} is not supported: send the alert uncompressed (Falco and Falcosidekick do)"
    )]
    UnsupportedEncoding(String),
    #[error("the body did not arrive within {0:?}: send the whole alert at once")]
    BodyTimeout(Duration),
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Full(#[from] Refused),
    #[error("send alerts with POST to / or /v1/falco")]
    MethodNotAllowed,
    #[error("no such path: send alerts with POST to / or /v1/falco")]
    NotFound,
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Rejection::Unauthorized => StatusCode::UNAUTHORIZED,
            Rejection::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::PlainText
            | Rejection::UnsupportedType(_)
            | Rejection::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Rejection::Body(_) | Rejection::Parse(_) => StatusCode::BAD_REQUEST,
            Rejection::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// A short, bounded reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Unauthorized => "unauthorized",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::PlainText => "text_plain",
            Rejection::UnsupportedType(_) => "unsupported_media_type",
            Rejection::UnsupportedEncoding(_) => "unsupported_encoding",
            Rejection::BodyTimeout(_) => "body_timeout",
            Rejection::Body(_) => "body_unreadable",
            Rejection::Parse(e) => e.reason(),
            Rejection::Full(_) => "queue_full",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::NotFound => "not_found",
        }
    }
}

/// What the intake needs to handle a request.
#[derive(Clone)]
pub struct Intake {
    pub auth: Auth,
    pub queue: Arc<Queue>,
    /// `None` only in tests that run without a cluster.
    pub cluster: Option<ClusterCache>,
    pub operator_namespace: String,
    pub max_body: usize,
    pub body_timeout: Duration,
    pub bounds: Bounds,
    pub metrics: Metrics,
}

/// The routes: `POST /` and `POST /v1/falco`.
pub fn router(intake: Intake) -> Router {
    Router::new()
        .route("/", post(receive).fallback(method_not_allowed))
        .route("/v1/falco", post(receive).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(Arc::new(intake))
}

async fn method_not_allowed(State(intake): State<Arc<Intake>>) -> Response {
    intake.answer(Instant::now(), Err(Rejection::MethodNotAllowed))
}

async fn not_found(State(intake): State<Arc<Intake>>) -> Response {
    intake.answer(Instant::now(), Err(Rejection::NotFound))
}

async fn receive(
    State(intake): State<Arc<Intake>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let verified_client = peer.is_some_and(|Extension(p)| p.verified_client);
    let result = intake.accept(&headers, verified_client, body).await;
    intake.answer(started, result)
}

impl Intake {
    async fn accept(
        &self,
        headers: &HeaderMap,
        verified_client: bool,
        body: Body,
    ) -> Result<Accepted, Rejection> {
        if !self.auth.allows(headers, verified_client) {
            return Err(Rejection::Unauthorized);
        }
        check_content_type(headers)?;
        check_content_encoding(headers)?;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(Rejection::TooLarge {
                limit: self.max_body,
            });
        }
        let collected = tokio::time::timeout(
            self.body_timeout,
            Limited::new(body, self.max_body).collect(),
        )
        .await
        .map_err(|_| Rejection::BodyTimeout(self.body_timeout))?;
        let bytes = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(Rejection::TooLarge {
                    limit: self.max_body,
                });
            }
            Err(e) => return Err(Rejection::Body(e.to_string())),
        };
        let alert = falco::parse(&bytes)?;
        let mut subject = falco::subject_of(&alert);
        let located = self.cluster.as_ref().and_then(|c| c.locate(&mut subject));
        let arrival = Arrival::new(
            alert,
            subject,
            None,
            &self.operator_namespace,
            jiff::Timestamp::now(),
            &self.bounds,
        );
        let report = arrival.key.to_string();
        let span = tracing::debug_span!(
            "alert",
            alert_id = arrival.alert.uuid.as_deref(),
            report = %report,
            rule = %arrival.alert.rule,
        );
        let _entered = span.enter();
        let outcome = self.queue.offer_with_facts(arrival, || {
            let cluster = self.cluster.as_ref()?;
            Some(cluster.facts(located.as_ref()?))
        })?;
        tracing::debug!(?outcome, "alert accepted");
        Ok(Accepted { report })
    }

    fn answer(&self, started: Instant, result: Result<Accepted, Rejection>) -> Response {
        let (code, reason, response) = match result {
            Ok(accepted) => (
                StatusCode::ACCEPTED,
                "accepted",
                (
                    StatusCode::ACCEPTED,
                    axum::Json(AcceptedBody {
                        report: &accepted.report,
                    }),
                )
                    .into_response(),
            ),
            Err(rejection) => {
                let status = rejection.status();
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    tracing::warn!(error = %rejection, "alert refused");
                } else {
                    tracing::debug!(error = %rejection, "request refused");
                }
                let mut response = (status, format!("{rejection}\n")).into_response();
                if status == StatusCode::UNAUTHORIZED {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer"),
                    );
                }
                (status, rejection.reason(), response)
            }
        };
        self.metrics
            .intake_requests
            .get_or_create(&RequestLabels {
                code: code.as_u16(),
                reason,
            })
            .inc();
        self.metrics
            .ack_seconds
            .observe(started.elapsed().as_secs_f64());
        response
    }
}

struct Accepted {
    report: String,
}

/// The answer to an accepted alert: `{"report":"namespace/name"}`.
#[derive(serde::Serialize)]
struct AcceptedBody<'a> {
    report: &'a str,
}

/// JSON, or no content type at all. `text/plain` is Falco without `json_output`.
fn check_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") || essence.is_empty() {
        Ok(())
    } else if essence == "text/plain" {
        Err(Rejection::PlainText)
    } else {
        Err(Rejection::UnsupportedType(text.chars().take(100).collect()))
    }
}

/// Only an uncompressed body: a compressed one would be read as broken JSON,
/// and inflating it would let a small request become a large one.
fn check_content_encoding(headers: &HeaderMap) -> Result<(), Rejection> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().unwrap_or("(not text)");
        if text
            .split(',')
            .map(str::trim)
            .any(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
        {
            return Err(Rejection::UnsupportedEncoding(
                text.chars().take(100).collect(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        h
    }

    #[test]
    fn json_content_types_pass_and_text_plain_says_to_set_json_output() {
        assert!(check_content_type(&headers("application/json")).is_ok());
        assert!(check_content_type(&headers("application/json; charset=utf-8")).is_ok());
        assert!(check_content_type(&HeaderMap::new()).is_ok());
        let err = check_content_type(&headers("text/plain")).unwrap_err();
        assert!(err.to_string().contains("json_output: true"), "{err}");
        assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(check_content_type(&headers("application/x-www-form-urlencoded")).is_err());
    }

    #[test]
    fn only_an_uncompressed_body_is_read() {
        let mut h = HeaderMap::new();
        assert!(check_content_encoding(&h).is_ok());
        h.insert(header::CONTENT_ENCODING, "identity".parse().unwrap());
        assert!(check_content_encoding(&h).is_ok());
        h.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        let err = check_content_encoding(&h).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(err.to_string().contains("uncompressed"), "{err}");
    }
}
