//! `/healthz` (the process is alive) and `/readyz` (it can do its job).

use axum::{Router, extract::State, http::StatusCode, routing::get};
use std::sync::{Arc, Mutex};

/// What readiness waits for; each part says why it is not ready yet.
#[derive(Clone, Default)]
pub struct Readiness {
    not_ready: Arc<Mutex<Vec<(&'static str, String)>>>,
}

impl Readiness {
    /// Marks `part` as not ready, with a reason shown by `/readyz`.
    pub fn block(&self, part: &'static str, reason: impl Into<String>) {
        let mut parts = self.lock();
        parts.retain(|(p, _)| *p != part);
        parts.push((part, reason.into()));
    }

    /// Marks `part` as ready.
    pub fn clear(&self, part: &'static str) {
        self.lock().retain(|(p, _)| *p != part);
    }

    /// The reasons the process is not ready, empty when it is.
    pub fn reasons(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|(p, r)| format!("{p}: {r}"))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, String)>> {
        // A panic while holding this lock cannot leave the list inconsistent.
        self.not_ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The router serving both endpoints.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, String) {
    let reasons = readiness.reasons();
    if reasons.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", reasons.join("\n")),
        )
    }
}
