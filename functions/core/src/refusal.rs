//! A run refused before it started: CheckQuota's `Ephemera.InvalidRunSpec`. Nothing was
//! launched, reserved or billed, so there is no cost report; but a scheduled run refused this
//! way would fail silently every week, so the refusal is told once by email (every problem
//! named, and where the RunSpec came from) and the execution's cause is the plain list of
//! problems rather than the Lambda's error JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where the refused RunSpec came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The stack's schedule (the template's `ScheduleRunSpec`), this occurrence's id.
    Schedule {
        /// EventBridge Scheduler's execution id of this occurrence (`<aws.scheduler.execution-id>`
        /// in the schedule's input).
        occurrence: String,
    },
    /// `ephemera run`, which names executions `<run_id>-<YYYYMMDDTHHMMSS>`.
    Cli,
    /// The console, `aws stepfunctions start-execution` or another caller.
    ConsoleOrApi,
}

impl Source {
    /// From the execution's input and name (`$$.Execution.Input`, `$$.Execution.Name`): the
    /// schedule's input is `{schedule, runspec}`, anyone else's the RunSpec itself.
    pub fn of(input: &Value, execution_name: &str) -> Source {
        if let Some(s) = input.get("schedule") {
            let occurrence = s["execution"].as_str().unwrap_or("?").to_string();
            return Source::Schedule { occurrence };
        }
        let run_id = input["run_id"].as_str().unwrap_or("");
        let cli_shaped = execution_name
            .strip_prefix(run_id)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|stamp| {
                stamp.len() == 15
                    && stamp.char_indices().all(|(i, c)| match i {
                        8 => c == 'T',
                        _ => c.is_ascii_digit(),
                    })
            });
        if !run_id.is_empty() && cli_shaped {
            Source::Cli
        } else {
            Source::ConsoleOrApi
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Schedule { occurrence } => format!(
                "the stack's schedule (occurrence {occurrence}): its RunSpec is the stack's ScheduleRunSpec parameter, which needs a stack update to fix"
            ),
            Source::Cli => "ephemera run".into(),
            Source::ConsoleOrApi => "the console or the Step Functions API".into(),
        }
    }
}

/// What is told of one refusal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// The RunSpec's `run_id` as given (it may be the problem itself).
    pub run_id: String,
    /// The refused execution's ARN.
    pub execution: String,
    /// Who started it: the schedule, `ephemera run`, or the console or API.
    pub source: Source,
    /// `field: what is wrong`, one a problem.
    pub problems: Vec<String>,
}

impl Refusal {
    /// From the state machine's input to the refusal: the error CheckQuota raised (`$.error`:
    /// `Error` and `Cause`), the RunSpec as given (`$.run`), the execution's input and name.
    pub fn of(error: &Value, run: &Value, input: &Value, execution: &str, name: &str) -> Refusal {
        let run_id = run["run_id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map_or_else(|| "(no run_id)".to_string(), str::to_string);
        Refusal {
            run_id,
            execution: execution.to_string(),
            source: Source::of(input, name),
            problems: problems(error["Cause"].as_str().unwrap_or("")),
        }
    }

    /// The execution's cause: the problems, one a line.
    pub fn cause(&self) -> String {
        self.problems.join("\n")
    }

    /// The email: a subject under 100 characters, then every problem and what to do.
    pub fn email(&self) -> (String, String) {
        let n = self.problems.len();
        let tail = format!(": REFUSED ({n} problem{})", if n == 1 { "" } else { "s" });
        let room = 99 - "ephemera ".len() - tail.len();
        let run: String = if self.run_id.chars().count() > room {
            let mut s: String = self.run_id.chars().take(room - 1).collect();
            s.push('~');
            s
        } else {
            self.run_id.clone()
        };
        let subject = format!("ephemera {run}{tail}");
        let mut b = format!(
            "Run {} REFUSED before it started: nothing was launched, reserved or billed.\n\n",
            self.run_id
        );
        b.push_str(&format!("Started by: {}\n", self.source.describe()));
        b.push_str(&format!("Execution: {}\n\n", self.execution));
        b.push_str(&format!("The RunSpec has {n} problem(s):\n"));
        for p in &self.problems {
            b.push_str(&format!("- {p}\n"));
        }
        b.push_str(
            "\n`ephemera validate FILE` checks a RunSpec as this run's first state did; fix every problem above, then start the run again.\n",
        );
        (subject, b)
    }
}

/// The problems in an `Ephemera.InvalidRunSpec` cause. Lambda's cause is its error JSON
/// (`{"errorType", "errorMessage"}`); the message is `invalid RunSpec: field: problem; field:
/// problem`. A problem's own text may hold `; ` too, so a piece starts a new problem only when
/// it begins with a field name and `: `.
pub fn problems(cause: &str) -> Vec<String> {
    let message = serde_json::from_str::<Value>(cause)
        .ok()
        .and_then(|v| v["errorMessage"].as_str().map(str::to_string))
        .unwrap_or_else(|| cause.to_string());
    let message = message
        .strip_prefix("invalid RunSpec: ")
        .unwrap_or(&message)
        .trim();
    let mut out: Vec<String> = vec![];
    for piece in message.split("; ") {
        match out.last_mut() {
            Some(last) if !starts_with_field(piece) => {
                last.push_str("; ");
                last.push_str(piece);
            }
            _ => out.push(piece.to_string()),
        }
    }
    // One problem a line in the cause: a problem's own lines (the allowed values) join it.
    out = out
        .into_iter()
        .map(|p| p.lines().map(str::trim).collect::<Vec<_>>().join("; "))
        .filter(|p| !p.is_empty())
        .collect();
    if out.is_empty() {
        out.push("the RunSpec was refused without a reason given".into());
    }
    out
}

/// `worker.args[1]: …`, `run_id: …`: a piece that names a RunSpec field. Only the RunSpec's
/// own top-level fields start one (a problem's text says `allowed: …` too).
fn starts_with_field(piece: &str) -> bool {
    piece.split_once(": ").is_some_and(|(field, _)| {
        let root = field.split(['.', '[']).next().unwrap_or("");
        FIELDS.contains(&root)
            && field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.[]$".contains(c))
    })
}

/// The RunSpec's top-level fields (`runspec.schema.json`'s properties; a test holds the two
/// together).
const FIELDS: [&str; 12] = [
    "$schema", "capacity", "database", "expect", "job", "limits", "notify", "quota", "run_id",
    "tags", "waits", "worker",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn problems_are_split_on_fields_not_on_every_semicolon() {
        let cause = json!({
            "errorType": "Ephemera.InvalidRunSpec",
            "errorMessage": "invalid RunSpec: worker.args[1]: looks like it carries a password; pass a Secrets Manager secret id instead; limits.heartbeat_seconds: 5 is below 30"
        })
        .to_string();
        assert_eq!(
            problems(&cause),
            [
                "worker.args[1]: looks like it carries a password; pass a Secrets Manager secret id instead",
                "limits.heartbeat_seconds: 5 is below 30"
            ]
        );
        // A cause that is the message itself (no JSON) reads the same.
        assert_eq!(
            problems("invalid RunSpec: run_id: missing"),
            ["run_id: missing"]
        );
        assert_eq!(problems("").len(), 1);
        assert_eq!(
            problems("invalid RunSpec: worker.instance_types[0]: unknown 'z9'\nallowed: c7g"),
            ["worker.instance_types[0]: unknown 'z9'; allowed: c7g"]
        );
    }

    #[test]
    fn the_source_is_the_schedule_the_cli_or_anyone_else() {
        let spec = json!({"run_id": "fx-2023-04"});
        assert_eq!(Source::of(&spec, "fx-2023-04-20261206T101500"), Source::Cli);
        assert_eq!(
            Source::of(&spec, "fx-2023-04-my-name"),
            Source::ConsoleOrApi
        );
        assert_eq!(Source::of(&spec, "4f1c-uuid"), Source::ConsoleOrApi);
        let scheduled = json!({"schedule": {"execution": "occ42"}, "runspec": spec});
        let r = Refusal::of(
            &json!({"Error": "Ephemera.InvalidRunSpec", "Cause": "invalid RunSpec: run_id: bad"}),
            &json!({"run_id": "fx-2023-04-occ42"}),
            &scheduled,
            "arn:aws:states:eu-west-1:1:execution:m:x",
            "x",
        );
        assert_eq!(
            r.source,
            Source::Schedule {
                occurrence: "occ42".into()
            }
        );
        let (subject, body) = r.email();
        assert_eq!(subject, "ephemera fx-2023-04-occ42: REFUSED (1 problem)");
        assert!(body.contains("- run_id: bad\n"), "{body}");
        assert!(body.contains("ScheduleRunSpec"), "{body}");
        assert_eq!(r.cause(), "run_id: bad");
    }

    #[test]
    fn the_fields_are_the_runspecs() {
        let schema = crate::RunSpec::json_schema();
        let mut props: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        props.sort();
        assert_eq!(props, FIELDS);
        assert_eq!(
            problems("invalid RunSpec: worker.instance_types[1]: unknown 'z9'; allowed: c7g; limits.heartbeat_seconds: 5"),
            ["worker.instance_types[1]: unknown 'z9'; allowed: c7g", "limits.heartbeat_seconds: 5"]
        );
    }

    #[test]
    fn the_subject_stays_under_100_characters() {
        let r = Refusal {
            run_id: "r".repeat(300),
            execution: "e".into(),
            source: Source::Cli,
            problems: vec!["a: b".into(), "c: d".into()],
        };
        let (subject, _) = r.email();
        assert!(subject.len() < 100, "{}", subject.len());
        assert!(subject.ends_with("~: REFUSED (2 problems)"), "{subject}");
    }
}
