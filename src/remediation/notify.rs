//! Notify: POST a JSON summary of the incident to a webhook whose URL is in a Secret.

use super::actions::{ActionError, Done, notify_format, webhook_url};
use crate::crd::{Action, AlertReport, NotifyFormat};
use crate::replay::{IntakeClient, ReplayError, TlsFiles};
use http::Method;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The body sent: Peregrine's own JSON, or a Slack-compatible `{"text": ...}`.
pub fn body(report: &AlertReport, policy: &str, format: NotifyFormat) -> Value {
    let s = &report.spec.subject;
    let severity = report
        .status
        .as_ref()
        .and_then(|st| st.analysis.as_ref())
        .map(|a| format!("{:?}", a.severity));
    let summary = report
        .status
        .as_ref()
        .and_then(|st| st.analysis.as_ref())
        .map(|a| a.summary.clone());
    let count = report
        .status
        .as_ref()
        .and_then(|st| st.occurrences.as_ref())
        .map_or(1, |o| o.count);
    match format {
        NotifyFormat::Json => json!({
            "report": report.name_any(),
            "namespace": report.namespace(),
            "rule": report.spec.rule,
            "priority": report.spec.priority,
            "source": report.spec.source,
            "severity": severity,
            "pod": s.pod,
            "node": s.node,
            "workload": s.workload,
            "count": count,
            "summary": summary,
            "policy": policy,
        }),
        NotifyFormat::Slack => {
            let place = match (&s.namespace, &s.pod) {
                (Some(ns), Some(pod)) => format!(" in pod `{ns}/{pod}`"),
                _ => s
                    .node
                    .as_ref()
                    .map(|n| format!(" on node `{n}`"))
                    .unwrap_or_default(),
            };
            json!({
                "text": format!(
                    ":rotating_light: *{}* ({}){place}, seen {count} time(s). Report `{}/{}`, policy `{policy}`.{}",
                    report.spec.rule,
                    report.spec.priority,
                    report.namespace().unwrap_or_default(),
                    report.name_any(),
                    summary.map(|s| format!("\n{s}")).unwrap_or_default(),
                )
            })
        }
    }
}

/// Why a webhook could not be used, without its URL (which often holds a
/// secret token, and ends up in the report's status and Events).
fn explain(error: ReplayError) -> String {
    match error {
        ReplayError::BadUrl(_) => {
            "the value is not an http:// or https:// URL: put the webhook URL there".into()
        }
        ReplayError::Connect { message, .. } => match message.strip_prefix("TLS: ") {
            Some(tls) => format!(
                "TLS with the webhook failed ({tls}): its certificate must be valid for the URL's host and chain to a root certificate the operator's system trusts"
            ),
            None => format!("cannot connect to the webhook: {message}"),
        },
        ReplayError::Tls(message) => format!("cannot set up TLS: {message}"),
        other => other.to_string(),
    }
}

/// Sends the notification.
pub async fn send(
    client: &Client,
    action: &Action,
    report: &AlertReport,
    policy: &str,
    secret_namespace: &str,
) -> Result<Done, ActionError> {
    let Some(secret) = &action.secret_ref else {
        return Err(ActionError::Unsupported("Notify has no secretRef".into()));
    };
    let key = secret.key.as_deref().unwrap_or("url");
    let url = webhook_url(client, secret_namespace, &secret.name, key).await?;
    let secret_name = format!("{secret_namespace}/{}", secret.name);
    let failed = |message: String| ActionError::Webhook {
        secret: secret_name.clone(),
        message,
    };
    let mut http =
        IntakeClient::new(&url, None, &TlsFiles::default()).map_err(|e| failed(explain(e)))?;
    let payload = body(report, policy, notify_format(action));
    let bytes = serde_json::to_vec(&payload).map_err(|e| failed(e.to_string()))?;
    let answer = tokio::time::timeout(
        TIMEOUT,
        http.send(Method::POST, Some("application/json"), bytes.into()),
    )
    .await
    .map_err(|_| failed(format!("no answer within {}s", TIMEOUT.as_secs())))?
    .map_err(|e| failed(explain(e)))?;
    if !answer.status.is_success() {
        return Err(failed(format!("the webhook answered {}", answer.status)));
    }
    Ok(Done {
        reason: format!(
            "posted a {} summary to the webhook of Secret {secret_name} (answer {})",
            match notify_format(action) {
                NotifyFormat::Json => "JSON",
                NotifyFormat::Slack => "Slack",
            },
            answer.status.as_u16()
        ),
        target: format!("Secret/{secret_name}"),
        undo: None,
    })
}
