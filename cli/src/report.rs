//! `ephemera report RUN`: the cost report as the email tells it, its JSON, or its HTML page.

use ephemera_core::email::render_email;
use ephemera_core::report::CostReport;
use serde_json::Value;

use crate::errors::CliError;
use crate::history;
use crate::resolve::Execution;
use crate::terminal::printable;
use crate::Outcome;

/// Where the email's JSON copy of the report starts; the text above it is the summary.
const JSON_PART: &str = "\n--- report (JSON) ---";

/// The email's body without its JSON copy.
pub fn summary(report: &Value) -> Result<String, String> {
    let r: CostReport = serde_json::from_value(report.clone()).map_err(|e| e.to_string())?;
    let (_, body) = render_email(&r);
    let text = body.split(JSON_PART).next().unwrap_or_default();
    Ok(text.trim_end().to_string())
}

/// The run's report: the execution's output on success, the history's on failure.
pub async fn find(
    sfn: &aws_sdk_sfn::Client,
    execution: &Execution,
) -> Result<Option<Value>, CliError> {
    if let Some(r) = execution.output.as_ref().and_then(history::report_in) {
        return Ok(Some(r));
    }
    if execution.is_running() {
        // Written by the last state; nothing to look for yet.
        return Ok(None);
    }
    let events = history::read(sfn, &execution.arn).await?;
    Ok(history::report(&events))
}

/// The report as a static page (the one terminate-with-cost-report stores beside the manifest).
pub fn html(report: &Value) -> Result<String, String> {
    let r: CostReport = serde_json::from_value(report.clone()).map_err(|e| e.to_string())?;
    Ok(ephemera_core::report_html::render(&r))
}

pub async fn command(
    sfn: &aws_sdk_sfn::Client,
    execution: &Execution,
    json: bool,
    html_file: Option<&std::path::Path>,
) -> Result<Outcome, CliError> {
    let Some(report) = find(sfn, execution).await? else {
        let who = &execution.name;
        if execution.is_running() {
            eprintln!("no report yet: {who} is RUNNING (ephemera status {who})");
            return Ok(Outcome::StillRunning);
        }
        eprintln!(
            "no report: {who} {} without launching anything ({} - {})",
            execution.status.as_str(),
            execution.error.as_deref().unwrap_or("no error name"),
            execution.cause.as_deref().unwrap_or("no cause given")
        );
        return Ok(Outcome::RunFailed);
    };
    if let Some(path) = html_file {
        let page = html(&report).map_err(|e| {
            CliError::Other(format!(
                "the report of {} cannot be read: {e}",
                execution.name
            ))
        })?;
        std::fs::write(path, page)
            .map_err(|e| CliError::Other(format!("writing {}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!(
            "{}",
            printable(&summary(&report).map_err(|e| {
                CliError::Other(format!(
                    "the report of {} cannot be read: {e}",
                    execution.name
                ))
            })?)
        );
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ephemera_core::cost::Orchestration;
    use ephemera_core::report::Phases;

    #[test]
    fn the_summary_is_the_email_without_its_json() {
        let r = CostReport {
            run_id: "fx".into(),
            execution: "arn:aws:states:r:1:execution:m:fx-1".into(),
            outcome: ephemera_core::report::Outcome::Succeeded,
            error: None,
            failure: None,
            estimate_usd: 1.0,
            budget_usd: 5.0,
            actual_usd: 0.4242,
            compute_usd: 0.4,
            ebs_usd: 0.02,
            on_demand_equivalent_usd: 0.9,
            savings_usd: 0.48,
            orchestration: Orchestration::default(),
            attempts: vec![],
            workers: vec![],
            snapshot: None,
            phases: Phases::default(),
            terminated: vec!["i-1".into()],
            generated_at: chrono::Utc::now(),
            notes: vec![],
            verification: None,
            stored: None,
            month_page: None,
        };
        let text = summary(&serde_json::to_value(&r).unwrap()).unwrap();
        assert!(text.starts_with("Run fx SUCCEEDED."), "{text}");
        assert!(text.contains("Cost: $0.4242 actual"), "{text}");
        assert!(
            text.ends_with("Execution: arn:aws:states:r:1:execution:m:fx-1"),
            "{text}"
        );
        assert!(!text.contains('{'), "{text}");
        assert!(summary(&serde_json::json!({"run_id": 1})).is_err());
    }
}
