//! Replay of recorded decision inputs against a candidate snapshot.

use aesp_core::{Error, ErrorCode, Result, proto::v1::DecisionInput};

use super::{PolicyLifecycle, convert::from_input};
use crate::{Decision, Engine, Snapshot};

/// One recorded decision, re-run.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayOutcome {
    /// The caller's label for the input (for a recorded decision, its audit event id).
    pub case_id: String,
    /// The decision under the baseline snapshot.
    pub before: Decision,
    /// The decision under the candidate snapshot.
    pub after: Decision,
}

impl ReplayOutcome {
    /// Whether the outcome (allowed or denied) changed.
    pub fn changed(&self) -> bool {
        self.before.allowed() != self.after.allowed()
    }
}

/// The result of a replay.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayReport {
    /// The decisions whose outcome the candidate changes, in input order.
    pub changed: Vec<ReplayOutcome>,
    /// The decisions the candidate leaves as they were, in input order.
    pub unchanged: Vec<ReplayOutcome>,
}

/// Re-decides each recorded input under `baseline` and under `candidate`, and sorts them into
/// changed and unchanged outcomes.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for an input without a principal.
pub fn replay<'a>(
    engine: &Engine,
    baseline: &Snapshot,
    candidate: &Snapshot,
    inputs: impl IntoIterator<Item = (String, &'a DecisionInput)>,
) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    for (case_id, input) in inputs {
        let request = from_input(input)?;
        let outcome = ReplayOutcome {
            case_id,
            before: engine.decide_with(baseline, &request),
            after: engine.decide_with(candidate, &request),
        };
        if outcome.changed() {
            report.changed.push(outcome);
        } else {
            report.unchanged.push(outcome);
        }
    }
    Ok(report)
}

impl PolicyLifecycle {
    /// Replays recorded inputs against `candidate`, each compared with the snapshot it was
    /// recorded under (its `snapshot_digest`, rebuilt from the store when not in memory).
    ///
    /// # Errors
    ///
    /// `NOT_FOUND` when an input's snapshot was never recorded, `INVALID_ARGUMENT` for an
    /// input without a principal, a store error.
    pub async fn replay_recorded(
        &self,
        candidate: &Snapshot,
        inputs: &[(String, DecisionInput)],
    ) -> Result<ReplayReport> {
        let mut report = ReplayReport::default();
        for (case_id, input) in inputs {
            let Some(baseline) = self.snapshot_by_digest(&input.snapshot_digest).await? else {
                return Err(Error::new(
                    ErrorCode::NotFound,
                    format!("snapshot `{}` of decision `{case_id}` is not recorded", input.snapshot_digest),
                ));
            };
            let one = replay(self.engine(), &baseline, candidate, [(case_id.clone(), input)])?;
            report.changed.extend(one.changed);
            report.unchanged.extend(one.unchanged);
        }
        Ok(report)
    }
}
