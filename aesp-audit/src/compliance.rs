//! Compliance reports (GetComplianceReport): for one framework, tenant and period, the
//! controls AESP produces evidence for, each with its evidence count, sample events and
//! findings, pinned to a signed checkpoint that covers every evidence event; as the protocol
//! message and as a self-contained HTML page.
//!
//! # The control tables
//!
//! Each framework has a small static table ([`framework_controls`]) of the controls the audit
//! log evidences. A control names an evidence selection: event types (none: every type) and
//! optionally an outcome. Its evidence is the tenant's events of the period that the
//! selection matches, counted from the query index. Each framework also lists controls that
//! AESP does not evidence (physical security, personnel, training, backup, ...); they appear
//! in the report after the evidenced ones, with [`ControlStatus::NotApplicable`], no
//! evidence, and one finding that starts with `not evidenced by AESP:` and says why. They are
//! in `controls` rather than only in the summary so that a program reading the message sees
//! them; the finding makes plain that they are outside AESP's evidence, not that they do not
//! apply to the organisation.
//!
//! # Status rules
//!
//! The status of an evidenced control follows its [`Assessment`]:
//!
//! | assessment | evidence | no evidence |
//! | --- | --- | --- |
//! | [`Assessment::Continuous`] | satisfied | not satisfied |
//! | [`Assessment::OnDemand`] | satisfied | partially satisfied |
//! | [`Assessment::Exceptions`] | partially satisfied | satisfied |
//! | [`Assessment::Integrity`] | satisfied | satisfied |
//!
//! Denied, failed and errored outcomes and policy violations among the evidence are reported
//! as findings (with counts) but do not lower the status: recording and refusing them is the
//! control operating. Only [`Assessment::Exceptions`] treats evidence as a problem.

use std::{collections::HashMap, fmt::Write as _};

use aesp_core::{
    Clock as _, Error, ManualClock, Result, SystemClock,
    proto::v1::{
        ComplianceControl, ComplianceFramework, ComplianceReport, ControlStatus, GetComplianceReportRequest,
    },
};
use base64::Engine as _;

use crate::{
    checkpoint::SignedCheckpoint,
    log::AuditLog,
    query::{AuditFilter, select_in},
    retention::{EVENT_ERASURE, EVENT_RETENTION_PRUNE},
};

/// How many sample evidence event ids a control carries when the request names none.
pub const DEFAULT_SAMPLES_PER_CONTROL: usize = 5;
/// The most sample evidence event ids a control carries.
pub const MAX_SAMPLES_PER_CONTROL: usize = 100;

/// How many tools the records-of-processing finding names.
const TOP_TOOLS: usize = 5;

/// What to report on: the Rust form of [`GetComplianceReportRequest`], with who asks and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRequest {
    /// The framework; [`ComplianceFramework::Unspecified`] is refused.
    pub framework: ComplianceFramework,
    /// The tenant; required.
    pub tenant: String,
    /// Start of the period (Unix milliseconds, inclusive).
    pub start_ms: u64,
    /// End of the period (Unix milliseconds, exclusive); 0 means `now_ms`.
    pub end_ms: u64,
    /// The principal who requests the report.
    pub generated_by: String,
    /// When the report is produced (Unix milliseconds); 0 means the system clock.
    pub now_ms: u64,
    /// How many sample event ids each control carries (0: [`DEFAULT_SAMPLES_PER_CONTROL`];
    /// at most [`MAX_SAMPLES_PER_CONTROL`]).
    pub samples_per_control: usize,
}

impl Default for ReportRequest {
    fn default() -> Self {
        Self {
            framework: ComplianceFramework::Unspecified,
            tenant: String::new(),
            start_ms: 0,
            end_ms: 0,
            generated_by: String::new(),
            now_ms: 0,
            samples_per_control: DEFAULT_SAMPLES_PER_CONTROL,
        }
    }
}

impl ReportRequest {
    /// The request of a `GetComplianceReport` call by `generated_by` at `now_ms` (an unknown
    /// framework number becomes [`ComplianceFramework::Unspecified`], which is refused).
    pub fn from_proto(
        request: &GetComplianceReportRequest,
        generated_by: impl Into<String>,
        now_ms: u64,
    ) -> Self {
        Self {
            framework: ComplianceFramework::try_from(request.framework)
                .unwrap_or(ComplianceFramework::Unspecified),
            tenant: request.tenant_id.clone(),
            start_ms: request.start_time,
            end_ms: request.end_time,
            generated_by: generated_by.into(),
            now_ms,
            samples_per_control: DEFAULT_SAMPLES_PER_CONTROL,
        }
    }
}

/// How a control's evidence count becomes its status (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Assessment {
    /// The evidence arises whenever the tenant uses AESP (every call is authenticated,
    /// authorized and logged): evidence → satisfied; none → not satisfied.
    Continuous,
    /// The evidence arises only when there is something to do (a change, a grant, an erasure,
    /// a detection): evidence → satisfied; none → partially satisfied, as the control was not
    /// observed operating in the period.
    OnDemand,
    /// Each evidence event is an exception to review (a failure of a control): none →
    /// satisfied; some → partially satisfied, as their handling is not evidenced by AESP.
    Exceptions,
    /// The protection of the audit records themselves: always satisfied, by the signed
    /// checkpoint of the report, which commits to every evidence event (a pruned event keeps
    /// its leaf hash).
    Integrity,
}

/// A control of a framework that AESP produces evidence for, and its evidence selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ControlSpec {
    /// The framework's id of the control (for example `CC6.1`, `A.8.15`, `AU-9`).
    pub id: &'static str,
    /// The control's title.
    pub title: &'static str,
    /// The event types that are evidence (any of them); empty: every type.
    pub event_types: &'static [&'static str],
    /// Only events with this outcome, when set.
    pub outcome: Option<&'static str>,
    /// How the evidence becomes a status.
    pub assessment: Assessment,
    /// Whether the findings break the evidence down by tool (`resource`): each tool contract
    /// states what the processing it performs is for, so the tool stands for the purpose.
    pub by_tool: bool,
}

impl ControlSpec {
    /// The query filter that selects this control's evidence for `tenant` in `start_ms..end_ms`.
    pub fn filter(&self, tenant: &str, start_ms: u64, end_ms: u64) -> AuditFilter {
        AuditFilter {
            tenant: Some(tenant.to_owned()),
            start_ms,
            end_ms: Some(end_ms),
            event_types: self.event_types.iter().map(|&t| t.to_owned()).collect(),
            outcome: self.outcome.map(str::to_owned),
            ..AuditFilter::default()
        }
    }

    /// The selection in words, for findings and the HTML page (for example
    /// `AUDIT_ERASURE events`, `events of any type with outcome ERROR`).
    pub fn selection(&self) -> String {
        let types = if self.event_types.is_empty() {
            "events of any type".to_owned()
        } else {
            format!("{} events", self.event_types.join(", "))
        };
        match self.outcome {
            Some(outcome) => format!("{types} with outcome {outcome}"),
            None => types,
        }
    }
}

/// A control of a framework that the audit log does not evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UncoveredControl {
    /// The framework's id of the control.
    pub id: &'static str,
    /// The control's title.
    pub title: &'static str,
    /// Why AESP's evidence does not cover it.
    pub reason: &'static str,
}

/// One framework's table: the controls AESP evidences and those it does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrameworkControls {
    /// The framework.
    pub framework: ComplianceFramework,
    /// Its name, for people.
    pub name: &'static str,
    /// The controls AESP evidences, in the framework's order.
    pub controls: &'static [ControlSpec],
    /// The controls outside AESP's evidence.
    pub not_covered: &'static [UncoveredControl],
}

const fn control(
    id: &'static str,
    title: &'static str,
    event_types: &'static [&'static str],
    assessment: Assessment,
) -> ControlSpec {
    ControlSpec { id, title, event_types, outcome: None, assessment, by_tool: false }
}

const fn uncovered(id: &'static str, title: &'static str, reason: &'static str) -> UncoveredControl {
    UncoveredControl { id, title, reason }
}

// Evidence selections shared by the tables.
const EVERY_EVENT: &[&str] = &[];
const ACCESS: &[&str] = &[
    "AUTHENTICATION_SUCCESS",
    "AUTHENTICATION_FAILURE",
    "AUTHORIZATION_SUCCESS",
    "AUTHORIZATION_DENIED",
    "TENANT_ACCESS_DENIED",
    "SESSION_CREATE",
    "SESSION_DESTROY",
];
const AUTHENTICATION: &[&str] = &["AUTHENTICATION_SUCCESS", "AUTHENTICATION_FAILURE"];
const AUTHORIZATION: &[&str] = &["AUTHORIZATION_SUCCESS", "AUTHORIZATION_DENIED", "TENANT_ACCESS_DENIED"];
const PROVISIONING: &[&str] = &[
    "IDENTITY_CREATE_SERVICE_ACCOUNT",
    "IDENTITY_ASSIGN_ROLE",
    "TENANT_CREATE",
    "TENANT_UPDATE",
    "RUNTIME_ANNOUNCE",
    "RUNTIME_UNREGISTER",
];
const ROLES: &[&str] = &["IDENTITY_ASSIGN_ROLE", "POLICY_CREATE", "POLICY_UPDATE"];
const DETECTIONS: &[&str] =
    &["POLICY_VIOLATION", "AUTHORIZATION_DENIED", "TENANT_ACCESS_DENIED", "AUTHENTICATION_FAILURE"];
const CHANGES: &[&str] = &[
    "GOVERNANCE_APPROVAL_REQUEST",
    "GOVERNANCE_APPROVAL_DECISION",
    "POLICY_CREATE",
    "POLICY_UPDATE",
    "CONFIGURATION_UPDATE",
];
const PROCESSING: &[&str] = &["TOOL_INVOCATION_START", "TOOL_INVOCATION_COMPLETE"];
const SECURITY_OF_PROCESSING: &[&str] =
    &["AUTHENTICATION_FAILURE", "AUTHORIZATION_DENIED", "TENANT_ACCESS_DENIED", "POLICY_VIOLATION"];

use Assessment::{Continuous, Exceptions, Integrity, OnDemand};

/// SOC 2 (AICPA Trust Services Criteria, 2017, revised points of focus 2022).
static SOC2: FrameworkControls = FrameworkControls {
    framework: ComplianceFramework::Soc2,
    name: "SOC 2 Type II",
    controls: &[
        control("CC6.1", "Logical access security over protected information assets", ACCESS, Continuous),
        control(
            "CC6.2",
            "Registration and authorization of users before credentials are issued, and removal",
            PROVISIONING,
            OnDemand,
        ),
        control("CC6.3", "Authorization, modification and removal of access based on roles", ROLES, OnDemand),
        control(
            "CC7.2",
            "Monitoring of system components for anomalies and security events",
            DETECTIONS,
            OnDemand,
        ),
        control("CC8.1", "Authorization, approval and implementation of changes", CHANGES, OnDemand),
    ],
    not_covered: &[
        uncovered(
            "CC1.4",
            "Commitment to attract, develop and retain competent individuals",
            "hiring, training and retention are HR processes",
        ),
        uncovered(
            "CC6.4",
            "Restriction of physical access to facilities and protected information assets",
            "physical security of facilities",
        ),
        uncovered("CC9.2", "Management of risks from vendors and business partners", "vendor management"),
        uncovered(
            "A1.2",
            "Environmental protections, data back-up processes and recovery infrastructure",
            "backups and recovery of the deployment",
        ),
    ],
};

/// ISO/IEC 27001:2022, Annex A.
static ISO27001: FrameworkControls = FrameworkControls {
    framework: ComplianceFramework::Iso27001,
    name: "ISO/IEC 27001:2022",
    controls: &[
        control("A.5.15", "Access control", AUTHORIZATION, Continuous),
        control("A.5.18", "Access rights", PROVISIONING, OnDemand),
        control("A.8.5", "Secure authentication", AUTHENTICATION, Continuous),
        control("A.8.15", "Logging", EVERY_EVENT, Continuous),
        control("A.8.16", "Monitoring activities", DETECTIONS, OnDemand),
        control("A.8.32", "Change management", CHANGES, OnDemand),
    ],
    not_covered: &[
        uncovered("A.6.1", "Screening", "background checks of personnel"),
        uncovered("A.6.3", "Information security awareness, education and training", "training of personnel"),
        uncovered("A.7.1", "Physical security perimeters", "physical security of facilities"),
        uncovered("A.5.19", "Information security in supplier relationships", "supplier management"),
        uncovered("A.8.13", "Information backup", "backups of the deployment"),
    ],
};

/// The EU General Data Protection Regulation (Regulation (EU) 2016/679).
static GDPR: FrameworkControls = FrameworkControls {
    framework: ComplianceFramework::Gdpr,
    name: "GDPR",
    controls: &[
        control("Art. 5(1)(e)", "Storage limitation", &[EVENT_RETENTION_PRUNE], OnDemand),
        control("Art. 17", "Right to erasure ('right to be forgotten')", &[EVENT_ERASURE], OnDemand),
        ControlSpec {
            by_tool: true,
            ..control("Art. 30", "Records of processing activities", PROCESSING, Continuous)
        },
        control("Art. 32", "Security of processing", SECURITY_OF_PROCESSING, OnDemand),
    ],
    not_covered: &[
        uncovered(
            "Art. 6",
            "Lawfulness of processing",
            "the legal basis of processing is a legal assessment",
        ),
        uncovered(
            "Art. 13",
            "Information to be provided where personal data are collected from the data subject",
            "notices to data subjects",
        ),
        uncovered("Art. 28", "Processor", "contracts with processors"),
        uncovered(
            "Art. 33",
            "Notification of a personal data breach to the supervisory authority",
            "breach notification is an organisational process",
        ),
        uncovered("Art. 35", "Data protection impact assessment", "impact assessments are documents"),
    ],
};

/// The HIPAA Security Rule (45 CFR Part 164, Subpart C).
static HIPAA: FrameworkControls = FrameworkControls {
    framework: ComplianceFramework::Hipaa,
    name: "HIPAA Security Rule",
    controls: &[
        control("§164.308(a)(1)(ii)(D)", "Information system activity review", DETECTIONS, OnDemand),
        control("§164.308(a)(4)(i)", "Information access management", PROVISIONING, OnDemand),
        control("§164.312(a)(1)", "Access control", ACCESS, Continuous),
        control("§164.312(b)", "Audit controls", EVERY_EVENT, Continuous),
        control("§164.312(d)", "Person or entity authentication", AUTHENTICATION, Continuous),
    ],
    not_covered: &[
        uncovered("§164.308(a)(5)(i)", "Security awareness and training", "training of the workforce"),
        uncovered(
            "§164.308(a)(7)(i)",
            "Contingency plan",
            "backup, disaster recovery and emergency operations",
        ),
        uncovered("§164.310(a)(1)", "Facility access controls", "physical security of facilities"),
        uncovered("§164.310(d)(1)", "Device and media controls", "disposal and re-use of hardware and media"),
        uncovered(
            "§164.314(a)(1)",
            "Business associate contracts or other arrangements",
            "contracts with business associates",
        ),
    ],
};

/// PCI DSS v4.0.
static PCI_DSS: FrameworkControls = FrameworkControls {
    framework: ComplianceFramework::PciDss,
    name: "PCI DSS v4.0",
    controls: &[
        control(
            "7.2",
            "Access to system components and data is appropriately defined and assigned",
            &[
                "IDENTITY_ASSIGN_ROLE",
                "AUTHORIZATION_SUCCESS",
                "AUTHORIZATION_DENIED",
                "TENANT_ACCESS_DENIED",
            ],
            Continuous,
        ),
        control(
            "8.3",
            "Strong authentication for users and administrators is established and managed",
            AUTHENTICATION,
            Continuous,
        ),
        control(
            "10.2",
            "Audit logs are implemented to support the detection of anomalies and suspicious activity, \
             and the forensic analysis of events",
            EVERY_EVENT,
            Continuous,
        ),
        control(
            "10.3",
            "Audit logs are protected from destruction and unauthorized modifications",
            EVERY_EVENT,
            Integrity,
        ),
        ControlSpec {
            outcome: Some("ERROR"),
            ..control(
                "10.7",
                "Failures of critical security control systems are detected, reported, and responded to promptly",
                EVERY_EVENT,
                Exceptions,
            )
        },
    ],
    not_covered: &[
        uncovered(
            "3.5",
            "Primary account number (PAN) is secured wherever it is stored",
            "storage of card data",
        ),
        uncovered("6.3", "Security vulnerabilities are identified and addressed", "vulnerability management"),
        uncovered(
            "9.2",
            "Physical access controls manage entry into facilities and systems containing cardholder data",
            "physical security of facilities",
        ),
        uncovered(
            "10.6",
            "Time-synchronization mechanisms support consistent time settings across all systems",
            "clock synchronisation of the hosts",
        ),
        uncovered("12.6", "Security awareness education is an ongoing activity", "training of personnel"),
    ],
};

/// FedRAMP, whose baselines are NIST SP 800-53 Rev. 5 controls.
static FEDRAMP: FrameworkControls = FrameworkControls {
    framework: ComplianceFramework::Fedramp,
    name: "FedRAMP (NIST SP 800-53 Rev. 5)",
    controls: &[
        control("AC-2", "Account Management", PROVISIONING, OnDemand),
        control("AC-3", "Access Enforcement", AUTHORIZATION, Continuous),
        control("AU-2", "Event Logging", EVERY_EVENT, Continuous),
        control("AU-9", "Protection of Audit Information", EVERY_EVENT, Integrity),
        control("CM-3", "Configuration Change Control", CHANGES, OnDemand),
    ],
    not_covered: &[
        uncovered("AT-2", "Literacy Training and Awareness", "training of personnel"),
        uncovered("CP-9", "System Backup", "backups of the deployment"),
        uncovered("PE-3", "Physical Access Control", "physical security of facilities"),
        uncovered("PS-3", "Personnel Screening", "screening of personnel"),
        uncovered("RA-5", "Vulnerability Monitoring and Scanning", "vulnerability scanning"),
    ],
};

/// The control table of `framework`; `None` for [`ComplianceFramework::Unspecified`].
pub fn framework_controls(framework: ComplianceFramework) -> Option<&'static FrameworkControls> {
    match framework {
        ComplianceFramework::Unspecified => None,
        ComplianceFramework::Soc2 => Some(&SOC2),
        ComplianceFramework::Iso27001 => Some(&ISO27001),
        ComplianceFramework::Gdpr => Some(&GDPR),
        ComplianceFramework::Hipaa => Some(&HIPAA),
        ComplianceFramework::PciDss => Some(&PCI_DSS),
        ComplianceFramework::Fedramp => Some(&FEDRAMP),
    }
}

/// Counts over a set of evidence events, from the index rows.
#[derive(Debug, Default)]
struct Tally {
    count: u64,
    denied: u64,
    failed: u64,
    errors: u64,
    violations: u64,
    prunings: u64,
    erasures: u64,
    /// Per tool (`resource`), busiest first; only when asked for.
    tools: Vec<(String, u64)>,
}

impl AuditLog {
    /// For each of `selections` (a filter, whether to count by tool, how many samples): counts
    /// the outcomes, violations and (by tool) tools of the events the filter selects below
    /// `size`, and keeps the log indices of the first samples. One pass over the index and
    /// the older entries below it serves them all, so those are read from storage once.
    async fn tally(
        &self,
        selections: &[(AuditFilter, bool, usize)],
        size: u64,
    ) -> Result<Vec<(Tally, Vec<u64>)>> {
        let mut out: Vec<(Tally, Vec<u64>)> =
            selections.iter().map(|_| (Tally::default(), Vec::new())).collect();
        let mut tools: Vec<HashMap<String, u64>> = selections.iter().map(|_| HashMap::new()).collect();
        // The blocks that may hold any selection's times.
        let times = selections
            .iter()
            .map(|(filter, ..)| filter.times())
            .fold((u64::MAX, 0), |(lo, hi), (start, end)| (lo.min(start), hi.max(end)));
        self.over_index(0, size, times, u64::MAX, |state, from, to| {
            let sym = |s: &str| state.strings.get(s);
            let (denied, failed, errors) = (sym("DENIED"), sym("FAILURE"), sym("ERROR"));
            let (prune, erase) = (sym(EVENT_RETENTION_PRUNE), sym(EVENT_ERASURE));
            for (((filter, by_tool, samples), (tally, first)), tools) in
                selections.iter().zip(&mut out).zip(&mut tools)
            {
                let mut by_tool_sym: HashMap<u32, u64> = HashMap::new();
                select_in(state, filter, from, to, |index| {
                    if let Some(row) = state.row(index) {
                        tally.count += 1;
                        let outcome = Some(row.outcome);
                        tally.denied += u64::from(outcome == denied);
                        tally.failed += u64::from(outcome == failed);
                        tally.errors += u64::from(outcome == errors);
                        tally.violations += u64::from(row.violation);
                        tally.prunings += u64::from(Some(row.event_type) == prune);
                        tally.erasures += u64::from(Some(row.event_type) == erase);
                        if *by_tool {
                            *by_tool_sym.entry(row.resource).or_default() += 1;
                        }
                        if first.len() < *samples {
                            first.push(index);
                        }
                    }
                    true
                });
                for (sym, n) in by_tool_sym {
                    *tools.entry(state.strings.name(sym).to_owned()).or_default() += n;
                }
            }
            None
        })
        .await?;
        for ((tally, _), tools) in out.iter_mut().zip(tools) {
            let mut tools: Vec<(String, u64)> = tools.into_iter().collect();
            tools.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            tally.tools = tools;
        }
        Ok(out)
    }

    /// A compliance report for `request`'s framework, tenant and period.
    ///
    /// It first signs a checkpoint and counts only entries below its size, so every evidence
    /// event can be proved against the report's `checkpoint` (events appended meanwhile are
    /// left to the next report). Counts come from the query index, in one pass for all controls
    /// (for entries older than it covers, from chunks of them indexed from storage, read once),
    /// and hold no list of the events counted; the samples are the first evidence events in
    /// log order, read from storage.
    /// Pruned events no longer count. A sample whose event has no `event_id` is named
    /// `index:<log index>`.
    ///
    /// Refuses, with `INVALID_ARGUMENT`, an unspecified framework, an empty tenant and a
    /// period that ends before it starts.
    pub async fn compliance_report(&self, request: &ReportRequest) -> Result<ComplianceReport> {
        let table = framework_controls(request.framework)
            .ok_or_else(|| Error::invalid_argument("a compliance report names its framework"))?;
        if request.tenant.is_empty() {
            return Err(Error::invalid_argument("a compliance report names its tenant"));
        }
        let now_ms = if request.now_ms == 0 { SystemClock.now_ms() } else { request.now_ms };
        let end_ms = if request.end_ms == 0 { now_ms } else { request.end_ms };
        let start_ms = request.start_ms;
        if end_ms < start_ms {
            return Err(Error::invalid_argument("the end of the period is before its start"));
        }
        let samples = match request.samples_per_control {
            0 => DEFAULT_SAMPLES_PER_CONTROL,
            n => n.min(MAX_SAMPLES_PER_CONTROL),
        };
        let tenant = request.tenant.as_str();

        let checkpoint = self.checkpoint().await?;
        let size = checkpoint.checkpoint().size;
        self.index.catch_up(self.storage().as_ref(), size).await?;

        // The whole period first, then each control's evidence.
        let period = AuditFilter { end_ms: Some(end_ms), start_ms, ..AuditFilter::tenant(tenant) };
        let selections: Vec<(AuditFilter, bool, usize)> = std::iter::once((period, false, 0))
            .chain(
                table
                    .controls
                    .iter()
                    .map(|spec| (spec.filter(tenant, start_ms, end_ms), spec.by_tool, samples)),
            )
            .collect();
        let mut tallies = self.tally(&selections, size).await?.into_iter();
        let (overall, _) = tallies.next().unwrap_or_default();

        let mut controls = Vec::with_capacity(table.controls.len() + table.not_covered.len());
        for (spec, (tally, first)) in table.controls.iter().zip(tallies) {
            let evidence_event_ids = self
                .fetch(&first)
                .await?
                .into_iter()
                .map(|e| {
                    if e.event.event_id.is_empty() { format!("index:{}", e.index) } else { e.event.event_id }
                })
                .collect();
            let (status, findings) = assess(spec, &tally, &checkpoint);
            controls.push(ComplianceControl {
                control_id: spec.id.to_owned(),
                title: spec.title.to_owned(),
                status: status.into(),
                evidence_count: tally.count,
                evidence_event_ids,
                findings,
            });
        }
        for other in table.not_covered {
            controls.push(ComplianceControl {
                control_id: other.id.to_owned(),
                title: other.title.to_owned(),
                status: ControlStatus::NotApplicable.into(),
                evidence_count: 0,
                evidence_event_ids: Vec::new(),
                findings: vec![format!("not evidenced by AESP: {}", other.reason)],
            });
        }

        let count = |status: ControlStatus| controls.iter().filter(|c| c.status == i32::from(status)).count();
        let (satisfied, partially, not_satisfied) = (
            count(ControlStatus::Satisfied),
            count(ControlStatus::PartiallySatisfied),
            count(ControlStatus::NotSatisfied),
        );
        let summary = format!(
            "{name} report for tenant `{tenant}` from {start} to {end}: {total} events, {violations} \
             recording policy violations. Of the {evidenced} controls AESP evidences, {satisfied} are \
             satisfied, {partially} partially satisfied and {not_satisfied} not satisfied; {uncovered} \
             further controls are not evidenced by AESP ({ids}). Counts cover the log up to the signed \
             checkpoint of tree size {size}, against which every evidence event can be proved.",
            name = table.name,
            start = iso8601(start_ms),
            end = iso8601(end_ms),
            total = overall.count,
            violations = overall.violations,
            evidenced = table.controls.len(),
            uncovered = table.not_covered.len(),
            ids = table.not_covered.iter().map(|c| c.id).collect::<Vec<_>>().join(", "),
        );
        Ok(ComplianceReport {
            report_id: aesp_core::new_id(&ManualClock::new(now_ms)),
            framework: table.framework.into(),
            tenant_id: tenant.to_owned(),
            start_time: start_ms,
            end_time: end_ms,
            generated_at: now_ms,
            generated_by: request.generated_by.clone(),
            controls,
            total_events: overall.count,
            policy_violation_count: overall.violations,
            summary,
            checkpoint: checkpoint.to_text(),
        })
    }
}

/// The status and findings of a control from its evidence (see the module docs).
fn assess(spec: &ControlSpec, tally: &Tally, checkpoint: &SignedCheckpoint) -> (ControlStatus, Vec<String>) {
    let n = tally.count;
    let mut findings = Vec::new();
    let status = match (spec.assessment, n) {
        (Continuous, 0) => {
            findings.push(format!("no evidence: no {} of the tenant in the period", spec.selection()));
            ControlStatus::NotSatisfied
        }
        (OnDemand, 0) => {
            findings.push(format!(
                "no evidence: no {} of the tenant in the period, so the control was not observed operating",
                spec.selection()
            ));
            ControlStatus::PartiallySatisfied
        }
        (Continuous | OnDemand, _) => ControlStatus::Satisfied,
        (Exceptions, 0) => {
            findings.push(format!("no failures ({}) recorded in the period", spec.selection()));
            ControlStatus::Satisfied
        }
        (Exceptions, _) => {
            findings.push(format!(
                "{n} failures ({}) recorded in the period; how they were responded to is not evidenced by AESP",
                spec.selection()
            ));
            ControlStatus::PartiallySatisfied
        }
        (Integrity, _) => {
            let c = checkpoint.checkpoint();
            findings.push(format!(
                "the report's signed checkpoint (tree size {}, root hash {}) commits to all {n} events of the \
                 period; a pruned event keeps its leaf hash, so the tree stays verifiable",
                c.size,
                base64::engine::general_purpose::STANDARD.encode(c.root_hash)
            ));
            if tally.prunings + tally.erasures > 0 {
                findings.push(format!(
                    "{} retention prunings and {} erasures in the period, each itself an audited event",
                    tally.prunings, tally.erasures
                ));
            }
            ControlStatus::Satisfied
        }
    };
    if n > 0 && spec.assessment != Exceptions {
        for (count, what) in
            [(tally.denied, "were denied"), (tally.failed, "failed"), (tally.errors, "ended in an error")]
        {
            if count > 0 {
                findings.push(format!("{count} of {n} evidence events {what}"));
            }
        }
    }
    if tally.violations > 0 {
        findings.push(format!("{} of {n} evidence events record policy violations", tally.violations));
    }
    if spec.by_tool && !tally.tools.is_empty() {
        let top: Vec<String> =
            tally.tools.iter().take(TOP_TOOLS).map(|(tool, count)| format!("{tool} ({count})")).collect();
        let more = tally.tools.len().saturating_sub(TOP_TOOLS);
        findings.push(format!(
            "processing by tool: {}{}",
            top.join(", "),
            if more > 0 { format!(" and {more} more tools") } else { String::new() }
        ));
    }
    (status, findings)
}

/// A Unix-millisecond time as UTC ISO 8601 (`2026-01-31T12:00:00Z`, with milliseconds when
/// they are not zero).
fn iso8601(ms: u64) -> String {
    let days = ms / 86_400_000;
    let in_day = ms % 86_400_000;
    let (year, month, day) = civil_from_days(days);
    let (h, m, s, milli) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
    if milli == 0 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped for HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:72rem;\
padding:0 1rem;color:#1d2329;line-height:1.45}\
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}\
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{font-weight:600}dd{margin:0}\
table{border-collapse:collapse;width:100%;font-size:.92rem}\
th,td{border:1px solid #d0d7de;padding:.4rem .5rem;text-align:left;vertical-align:top}\
th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.sel{color:#57606a;font-size:.85rem}code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}\
ul{margin:0;padding-left:1.1rem}pre{background:#f6f8fa;border:1px solid #d0d7de;padding:.8rem;\
overflow-x:auto;font-size:.85rem}\
.status{display:inline-block;padding:.1rem .45rem;border-radius:.6rem;font-size:.8rem;font-weight:600;white-space:nowrap}\
.satisfied{background:#dafbe1;color:#116329}.partially{background:#fff8c5;color:#7d4e00}\
.not-satisfied{background:#ffebe9;color:#a40e26}.na,.unspecified{background:#eaeef2;color:#57606a}";

/// The label and CSS class of a status.
fn status_label(status: i32) -> (&'static str, &'static str) {
    match ControlStatus::try_from(status) {
        Ok(ControlStatus::Satisfied) => ("Satisfied", "satisfied"),
        Ok(ControlStatus::PartiallySatisfied) => ("Partially satisfied", "partially"),
        Ok(ControlStatus::NotSatisfied) => ("Not satisfied", "not-satisfied"),
        Ok(ControlStatus::NotApplicable) => ("Not evidenced by AESP", "na"),
        Ok(ControlStatus::Unspecified) | Err(_) => ("Not assessed", "unspecified"),
    }
}

/// `items` as an HTML list (each escaped), or a dash when there are none.
fn list(items: &[String], code: bool) -> String {
    if items.is_empty() {
        return "&#8212;".to_owned();
    }
    let mut out = String::from("<ul>");
    for item in items {
        if code {
            let _ = write!(out, "<li><code>{}</code></li>", escape(item));
        } else {
            let _ = write!(out, "<li>{}</li>", escape(item));
        }
    }
    out.push_str("</ul>");
    out
}

/// The report as a self-contained HTML page for people: inline CSS, no scripts and no
/// external resources. It shows the framework, tenant and period (UTC, ISO 8601), the summary,
/// the evidenced controls (status, evidence count and selection, sample event ids,
/// findings), the controls not evidenced by AESP, and the signed checkpoint. Every string
/// taken from the report is HTML-escaped.
pub fn render_html(report: &ComplianceReport) -> String {
    let table = ComplianceFramework::try_from(report.framework).ok().and_then(framework_controls);
    let name = table.map_or_else(|| format!("Framework {}", report.framework), |t| t.name.to_owned());
    let spec_of = |id: &str| table.and_then(|t| t.controls.iter().find(|c| c.id == id));
    let period = format!("{} to {} (end exclusive)", iso8601(report.start_time), iso8601(report.end_time));

    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>{name} compliance report</h1>\n<p class=\"sel\">Evidence from the AESP audit log</p>\n<dl>\n\
         <dt>Tenant</dt><dd><code>{tenant}</code></dd>\n<dt>Period</dt><dd>{period}</dd>\n\
         <dt>Events in the period</dt><dd>{total}</dd>\n<dt>Policy violations</dt><dd>{violations}</dd>\n\
         <dt>Generated at</dt><dd>{at}</dd>\n<dt>Generated by</dt><dd><code>{by}</code></dd>\n\
         <dt>Report id</dt><dd><code>{id}</code></dd>\n</dl>\n<h2>Summary</h2>\n<p>{summary}</p>\n",
        title = escape(&format!("{name} compliance report: {}", report.tenant_id)),
        name = escape(&name),
        tenant = escape(&report.tenant_id),
        period = escape(&period),
        total = report.total_events,
        violations = report.policy_violation_count,
        at = escape(&iso8601(report.generated_at)),
        by = escape(&report.generated_by),
        id = escape(&report.report_id),
        summary = escape(&report.summary),
    );

    let (uncovered, evidenced): (Vec<&ComplianceControl>, Vec<&ComplianceControl>) =
        report.controls.iter().partition(|c| c.status == i32::from(ControlStatus::NotApplicable));
    out.push_str(
        "<h2>Controls evidenced by AESP</h2>\n<table>\n<thead><tr><th>Control</th><th>Title</th>\
         <th>Status</th><th>Evidence events</th><th>Sample event ids</th><th>Findings</th></tr></thead>\n<tbody>\n",
    );
    for c in &evidenced {
        let (label, class) = status_label(c.status);
        let selection = spec_of(&c.control_id)
            .map(|s| format!("<div class=\"sel\">Evidence: {}</div>", escape(&s.selection())))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<tr><td><strong>{id}</strong></td><td>{title}{selection}</td>\
             <td><span class=\"status {class}\">{label}</span></td><td class=\"num\">{count}</td>\
             <td>{samples}</td><td>{findings}</td></tr>",
            id = escape(&c.control_id),
            title = escape(&c.title),
            count = c.evidence_count,
            samples = list(&c.evidence_event_ids, true),
            findings = list(&c.findings, false),
        );
    }
    out.push_str("</tbody>\n</table>\n");

    out.push_str("<h2>Not covered by AESP evidence</h2>\n");
    if uncovered.is_empty() {
        out.push_str("<p>None listed.</p>\n");
    } else {
        out.push_str(
            "<p>These controls of the framework need evidence from outside AESP.</p>\n<table>\n\
             <thead><tr><th>Control</th><th>Title</th><th>Why</th></tr></thead>\n<tbody>\n",
        );
        for c in &uncovered {
            let _ = writeln!(
                out,
                "<tr><td><strong>{}</strong></td><td>{}</td><td>{}</td></tr>",
                escape(&c.control_id),
                escape(&c.title),
                list(&c.findings, false),
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }

    let _ = write!(
        out,
        "<h2>Signed checkpoint</h2>\n<p>Every evidence event is included in the log tree this \
         checkpoint signs (C2SP signed note); an inclusion proof of any event verifies against it \
         with the log's public key.</p>\n<pre>{}</pre>\n</body>\n</html>\n",
        escape(&report.checkpoint)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_iso8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso8601(4_107_542_399_000), "2100-02-28T23:59:59Z");
        assert_eq!(iso8601(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn escapes_the_five_characters() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn every_framework_has_a_small_table_with_unique_ids() {
        for f in [
            ComplianceFramework::Soc2,
            ComplianceFramework::Iso27001,
            ComplianceFramework::Gdpr,
            ComplianceFramework::Hipaa,
            ComplianceFramework::PciDss,
            ComplianceFramework::Fedramp,
        ] {
            let table = framework_controls(f).unwrap();
            assert_eq!(table.framework, f);
            assert!((3..=6).contains(&table.controls.len()), "{}", table.name);
            assert!(!table.not_covered.is_empty());
            let mut ids: Vec<&str> =
                table.controls.iter().map(|c| c.id).chain(table.not_covered.iter().map(|c| c.id)).collect();
            let n = ids.len();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), n, "{}", table.name);
        }
        assert!(framework_controls(ComplianceFramework::Unspecified).is_none());
    }
}
