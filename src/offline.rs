//! `peregrine analyze`: the AlertReport an alert would become, without a cluster.

use crate::analysis::{self, Context};
use crate::crd::{AlertReport, AlertReportStatus};
use crate::report::aggregate::Bounds;
use crate::report::build::{self, EventBounds};
use crate::report::{Arrival, FirstAlert};
use clap::{Args, ValueEnum};
use std::io::Read;
use std::path::PathBuf;

/// Analyse one Falco alert offline.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// File holding one alert as Falco sends it (JSON); `-` or nothing reads standard input.
    pub file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Yaml)]
    pub output: Format,
    /// YAML or JSON file with what the cluster would add: `pod` (labels, workload,
    /// securityContext facts), `occurrences`, `related` incidents.
    #[arg(long)]
    pub context: Option<PathBuf>,
    /// Namespace for reports of alerts that belong to none (host, cloud and SaaS sources).
    #[arg(long, default_value = "peregrine-system")]
    pub namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
    Markdown,
}

/// What can go wrong, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Alert {
        path: String,
        #[source]
        source: crate::falco::ParseError,
    },
    #[error("the context file {path} is not valid YAML or JSON of a context: {message}")]
    Context { path: String, message: String },
    #[error("the built-in knowledge does not load: {0}")]
    Knowledge(String),
    #[error("cannot render the report: {0}")]
    Render(String),
}

/// Reads the alert, analyses it and returns the rendered report.
pub fn run(args: &AnalyzeArgs) -> Result<String, AnalyzeError> {
    let (path, body) = read_input(args.file.as_ref())?;
    let alert =
        crate::falco::parse(&body).map_err(|source| AnalyzeError::Alert { path, source })?;
    let ctx = match &args.context {
        Some(p) => read_context(p)?,
        None => Context::default(),
    };
    let kb = crate::knowledge::builtin().map_err(|e| AnalyzeError::Knowledge(e.to_string()))?;
    let report = report_for(alert, &ctx, &args.namespace, kb);
    render(&report, args.output)
}

/// The report an alert would create, with its analysis as status.
pub fn report_for(
    alert: crate::falco::Alert,
    ctx: &Context,
    namespace: &str,
    kb: &crate::knowledge::Knowledge,
) -> AlertReport {
    let mut subject = crate::falco::subject_of(&alert);
    if let Some(pod) = &ctx.pod {
        subject.workload = subject.workload.take().or_else(|| pod.workload.clone());
        subject.node = subject.node.take().or_else(|| pod.node.clone());
    }
    let received = alert.timestamp.unwrap_or_else(jiff::Timestamp::now);
    let bounds = Bounds::default();
    let arrival = Arrival::new(
        alert,
        subject,
        ctx.pod.clone(),
        namespace,
        received,
        &bounds,
    );
    let first = FirstAlert::new(arrival.alert, arrival.subject, arrival.pod);
    let analysis = analysis::analyze(&first.alert, &first.subject, ctx, kb);
    let mut report = build::report(
        &arrival.key,
        &arrival.fingerprint,
        &first,
        analysis.severity,
        &EventBounds::default(),
    );
    report.status = Some(AlertReportStatus {
        analysis: Some(analysis),
        ..AlertReportStatus::default()
    });
    report
}

fn render(report: &AlertReport, format: Format) -> Result<String, AnalyzeError> {
    match format {
        Format::Yaml => {
            serde_saphyr::to_string(report).map_err(|e| AnalyzeError::Render(e.to_string()))
        }
        Format::Json => serde_json::to_string_pretty(report)
            .map(|s| s + "\n")
            .map_err(|e| AnalyzeError::Render(e.to_string())),
        Format::Markdown => match report.status.as_ref().and_then(|s| s.analysis.as_ref()) {
            Some(a) => Ok(analysis::markdown::render(&report.spec, a)),
            None => Err(AnalyzeError::Render("the report has no analysis".into())),
        },
    }
}

fn read_input(file: Option<&PathBuf>) -> Result<(String, Vec<u8>), AnalyzeError> {
    match file.filter(|p| p.as_os_str() != "-") {
        Some(p) => {
            let body = std::fs::read(p).map_err(|source| AnalyzeError::Read {
                what: "alert file",
                path: p.display().to_string(),
                source,
            })?;
            Ok((p.display().to_string(), body))
        }
        None => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|source| AnalyzeError::Read {
                    what: "alert from",
                    path: "standard input".into(),
                    source,
                })?;
            Ok(("standard input".into(), body))
        }
    }
}

fn read_context(path: &PathBuf) -> Result<Context, AnalyzeError> {
    let text = std::fs::read_to_string(path).map_err(|source| AnalyzeError::Read {
        what: "context file",
        path: path.display().to_string(),
        source,
    })?;
    serde_saphyr::from_str(&text).map_err(|e| AnalyzeError::Context {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}
