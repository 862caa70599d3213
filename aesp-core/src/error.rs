//! The error type shared by every AESP crate, its stable codes, and its lossless wire forms:
//! the protocol's [`EnterpriseError`] and a [`tonic::Status`] that carries the
//! `EnterpriseError` in the standard gRPC rich error model.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use prost::Message as _;

use crate::proto::{ENTERPRISE_ERROR_TYPE_URL, google_rpc, v1::EnterpriseError};

/// A boxed error source, kept for logs and never sent over the wire.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The convenience result type of AESP.
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $text:literal => $grpc:ident, )*) => {
        /// A stable, machine-readable error code (`EnterpriseError.code`).
        ///
        /// The codes of SERVICES.md, grouped by family, and the ones AESP adds in the same style.
        /// [`ErrorCode::Unknown`] stands for a code this version does not know (sent by a newer
        /// peer); the original text is kept in the [`Error`] so it round-trips.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every known code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code's wire text, such as `AUTHORIZATION_DENIED`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }

            /// The gRPC status code that carries this error.
            pub const fn grpc_code(self) -> tonic::Code {
                match self {
                    $(ErrorCode::$variant => tonic::Code::$grpc,)*
                }
            }
        }

        impl FromStr for ErrorCode {
            type Err = ();

            fn from_str(text: &str) -> std::result::Result<Self, ()> {
                match text {
                    $($text => Ok(ErrorCode::$variant),)*
                    _ => Err(()),
                }
            }
        }
    };
}

error_codes! {
    // Authentication.
    /// The caller could not be authenticated.
    AuthenticationFailed = "AUTHENTICATION_FAILED" => Unauthenticated,
    /// The credentials presented are wrong.
    InvalidCredentials = "INVALID_CREDENTIALS" => Unauthenticated,
    /// The account is locked after repeated failures.
    AccountLocked = "ACCOUNT_LOCKED" => Unauthenticated,
    /// The password has expired and must be changed.
    PasswordExpired = "PASSWORD_EXPIRED" => Unauthenticated,
    /// A second factor is required.
    MfaRequired = "MFA_REQUIRED" => Unauthenticated,
    /// The client certificate is invalid, expired or untrusted.
    CertificateInvalid = "CERTIFICATE_INVALID" => Unauthenticated,
    /// The token has expired.
    TokenExpired = "TOKEN_EXPIRED" => Unauthenticated,
    /// The token, or the credential behind it, was revoked.
    TokenRevoked = "TOKEN_REVOKED" => Unauthenticated,

    // Authorization.
    /// The action is not authorized.
    AuthorizationDenied = "AUTHORIZATION_DENIED" => PermissionDenied,
    /// The principal lacks a required permission.
    InsufficientPermissions = "INSUFFICIENT_PERMISSIONS" => PermissionDenied,
    /// The principal lacks a required role.
    RoleRequired = "ROLE_REQUIRED" => PermissionDenied,
    /// The principal's clearance is below the resource's classification.
    SecurityClearanceInsufficient = "SECURITY_CLEARANCE_INSUFFICIENT" => PermissionDenied,
    /// The request crosses a tenant boundary.
    TenantAccessDenied = "TENANT_ACCESS_DENIED" => PermissionDenied,

    // Policy.
    /// A policy denied the request.
    PolicyViolation = "POLICY_VIOLATION" => PermissionDenied,
    /// The policy does not exist.
    PolicyNotFound = "POLICY_NOT_FOUND" => NotFound,
    /// A policy failed to evaluate; the request was denied (fail closed).
    PolicyEvaluationFailed = "POLICY_EVALUATION_FAILED" => PermissionDenied,
    /// Only an emergency (break-glass) override could allow this.
    EmergencyOverrideRequired = "EMERGENCY_OVERRIDE_REQUIRED" => PermissionDenied,

    // Compliance.
    /// The request would violate a compliance rule.
    ComplianceViolation = "COMPLIANCE_VIOLATION" => PermissionDenied,
    /// Data of this classification may not go where it was sent.
    DataClassificationMismatch = "DATA_CLASSIFICATION_MISMATCH" => PermissionDenied,
    /// The request would violate a retention policy.
    RetentionPolicyViolation = "RETENTION_POLICY_VIOLATION" => FailedPrecondition,
    /// The request cannot be audited as required, so it was refused.
    AuditRequirementNotMet = "AUDIT_REQUIREMENT_NOT_MET" => Unavailable,

    // Security.
    /// A security threat was detected.
    SecurityThreatDetected = "SECURITY_THREAT_DETECTED" => PermissionDenied,
    /// The caller's behaviour is anomalous.
    AnomalousBehavior = "ANOMALOUS_BEHAVIOR" => PermissionDenied,
    /// Too many requests; retry after `retry_after_ms`.
    RateLimitExceeded = "RATE_LIMIT_EXCEEDED" => ResourceExhausted,
    /// The activity looks suspicious.
    SuspiciousActivity = "SUSPICIOUS_ACTIVITY" => PermissionDenied,
    /// Encryption is required for this request.
    EncryptionRequired = "ENCRYPTION_REQUIRED" => FailedPrecondition,

    // Resources.
    /// A quota is exhausted.
    QuotaExceeded = "QUOTA_EXCEEDED" => ResourceExhausted,
    /// The resource (for example a runtime) is unavailable.
    ResourceUnavailable = "RESOURCE_UNAVAILABLE" => Unavailable,
    /// The tenant is suspended.
    TenantSuspended = "TENANT_SUSPENDED" => FailedPrecondition,
    /// The budget is exhausted.
    BudgetExceeded = "BUDGET_EXCEEDED" => ResourceExhausted,

    // System.
    /// The service is unavailable; retry later.
    ServiceUnavailable = "SERVICE_UNAVAILABLE" => Unavailable,
    /// The configuration is invalid.
    ConfigurationError = "CONFIGURATION_ERROR" => FailedPrecondition,
    /// An internal error; the details are in the server's logs.
    InternalError = "INTERNAL_ERROR" => Internal,

    // Added by AESP.
    /// Input failed validation (for example tool parameters against the contract schema).
    ValidationFailed = "VALIDATION_FAILED" => InvalidArgument,
    /// A request argument is malformed.
    InvalidArgument = "INVALID_ARGUMENT" => InvalidArgument,
    /// The thing asked for does not exist.
    NotFound = "NOT_FOUND" => NotFound,
    /// The thing to create exists already.
    AlreadyExists = "ALREADY_EXISTS" => AlreadyExists,
    /// A concurrent change won; re-read and retry.
    Conflict = "CONFLICT" => Aborted,
    /// The system is not in the state the request needs.
    FailedPrecondition = "FAILED_PRECONDITION" => FailedPrecondition,
    /// The session has expired.
    SessionExpired = "SESSION_EXPIRED" => FailedPrecondition,
    /// The tool contract exists but is not approved.
    ContractNotApproved = "CONTRACT_NOT_APPROVED" => FailedPrecondition,
    /// The revision asked for was compacted away; re-read from the current state.
    RevisionCompacted = "REVISION_COMPACTED" => OutOfRange,
    /// The deadline passed before the work completed.
    DeadlineExceeded = "DEADLINE_EXCEEDED" => DeadlineExceeded,
    /// The request was cancelled.
    Cancelled = "CANCELLED" => Cancelled,
    /// Stored data is corrupt; the message names where.
    DataCorrupted = "DATA_CORRUPTED" => DataLoss,
    /// The operation is not implemented by this component.
    Unimplemented = "UNIMPLEMENTED" => Unimplemented,
    /// A code this version does not know; see [`Error::code_str`].
    Unknown = "UNKNOWN" => Unknown,
}

impl ErrorCode {
    /// The code that best describes a gRPC status that carried no `EnterpriseError`.
    pub const fn from_grpc(code: tonic::Code) -> Self {
        match code {
            tonic::Code::Unauthenticated => Self::AuthenticationFailed,
            tonic::Code::PermissionDenied => Self::AuthorizationDenied,
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Self::InvalidArgument,
            tonic::Code::NotFound => Self::NotFound,
            tonic::Code::AlreadyExists => Self::AlreadyExists,
            tonic::Code::ResourceExhausted => Self::QuotaExceeded,
            tonic::Code::FailedPrecondition => Self::FailedPrecondition,
            tonic::Code::Aborted => Self::Conflict,
            tonic::Code::Unimplemented => Self::Unimplemented,
            tonic::Code::Internal => Self::InternalError,
            tonic::Code::Unavailable => Self::ServiceUnavailable,
            tonic::Code::DataLoss => Self::DataCorrupted,
            tonic::Code::DeadlineExceeded => Self::DeadlineExceeded,
            tonic::Code::Cancelled => Self::Cancelled,
            tonic::Code::Ok | tonic::Code::Unknown => Self::Unknown,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything an [`EnterpriseError`] carries besides code and message; boxed so that
/// `Result<T, Error>` stays small.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Context {
    /// The code's text when [`ErrorCode::Unknown`] stands for a code this version lacks.
    unknown_code: Option<String>,
    details: BTreeMap<String, String>,
    tenant_id: String,
    principal_id: String,
    correlation_id: String,
    retry_after_ms: u64,
    security_implications: Vec<String>,
    compliance_impact: Vec<String>,
    remediation_steps: Vec<String>,
    escalation_required: bool,
}

/// The error of every AESP operation: a stable [`ErrorCode`], a message a person can read,
/// and the context of an [`EnterpriseError`] (tenant, principal, correlation id, retry hint,
/// remediation, escalation).
///
/// It converts losslessly to and from [`EnterpriseError`] and [`tonic::Status`]; the optional
/// [`source`](std::error::Error::source) stays local and never crosses the wire.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", self.code_str())]
#[non_exhaustive]
pub struct Error {
    code: ErrorCode,
    message: String,
    context: Box<Context>,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// A new error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), context: Box::default(), source: None }
    }

    /// [`ErrorCode::InvalidArgument`] with `message`.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// [`ErrorCode::NotFound`] with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// [`ErrorCode::InternalError`] with `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, message)
    }

    /// [`ErrorCode::DataCorrupted`] with `message`, which should name where.
    pub fn corrupted(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::DataCorrupted, message)
    }

    /// [`ErrorCode::ServiceUnavailable`] with `message`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ServiceUnavailable, message)
    }

    /// [`ErrorCode::RevisionCompacted`]: `requested` is older than `compacted`, the oldest
    /// revision still kept. Both are in the details and [`Error::compacted_revision`].
    pub fn compacted(requested: u64, compacted: u64) -> Self {
        Self::new(
            ErrorCode::RevisionCompacted,
            format!("revision {requested} is compacted; the oldest revision kept is {compacted}"),
        )
        .with_detail("requested_revision", requested.to_string())
        .with_detail("compacted_revision", compacted.to_string())
        .with_remediation("re-read the current state, then watch from its revision")
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The code's wire text; for [`ErrorCode::Unknown`], the text that was received.
    pub fn code_str(&self) -> &str {
        self.context.unknown_code.as_deref().unwrap_or(self.code.as_str())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Structured details (`EnterpriseError.details`).
    pub fn details(&self) -> &BTreeMap<String, String> {
        &self.context.details
    }

    /// One detail by name.
    pub fn detail(&self, name: &str) -> Option<&str> {
        self.context.details.get(name).map(String::as_str)
    }

    /// For [`ErrorCode::RevisionCompacted`], the oldest revision still kept.
    pub fn compacted_revision(&self) -> Option<u64> {
        if self.code != ErrorCode::RevisionCompacted {
            return None;
        }
        self.detail("compacted_revision")?.parse().ok()
    }

    /// The tenant the error concerns, if any.
    pub fn tenant_id(&self) -> &str {
        &self.context.tenant_id
    }

    /// The principal the error concerns, if any.
    pub fn principal_id(&self) -> &str {
        &self.context.principal_id
    }

    /// The correlation id that ties this error to logs and audit events.
    pub fn correlation_id(&self) -> &str {
        &self.context.correlation_id
    }

    /// How long to wait before retrying, if the error is transient.
    pub fn retry_after(&self) -> Option<Duration> {
        (self.context.retry_after_ms > 0).then(|| Duration::from_millis(self.context.retry_after_ms))
    }

    /// What the error means for security.
    pub fn security_implications(&self) -> &[String] {
        &self.context.security_implications
    }

    /// What the error means for compliance.
    pub fn compliance_impact(&self) -> &[String] {
        &self.context.compliance_impact
    }

    /// What the caller can do about it.
    pub fn remediation_steps(&self) -> &[String] {
        &self.context.remediation_steps
    }

    /// Whether the error must be escalated to a person.
    pub fn escalation_required(&self) -> bool {
        self.context.escalation_required
    }

    /// Adds a detail.
    #[must_use]
    pub fn with_detail(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.context.details.insert(name.into(), value.into());
        self
    }

    /// Sets the tenant.
    #[must_use]
    pub fn with_tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.context.tenant_id = tenant_id.into();
        self
    }

    /// Sets the principal.
    #[must_use]
    pub fn with_principal(mut self, principal_id: impl Into<String>) -> Self {
        self.context.principal_id = principal_id.into();
        self
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.context.correlation_id = correlation_id.into();
        self
    }

    /// Sets the retry hint (whole milliseconds; at least one for a non-zero duration).
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.context.retry_after_ms = if ms == 0 && !after.is_zero() { 1 } else { ms };
        self
    }

    /// Adds a security implication.
    #[must_use]
    pub fn with_security_implication(mut self, text: impl Into<String>) -> Self {
        self.context.security_implications.push(text.into());
        self
    }

    /// Adds a compliance impact.
    #[must_use]
    pub fn with_compliance_impact(mut self, text: impl Into<String>) -> Self {
        self.context.compliance_impact.push(text.into());
        self
    }

    /// Adds a remediation step.
    #[must_use]
    pub fn with_remediation(mut self, step: impl Into<String>) -> Self {
        self.context.remediation_steps.push(step.into());
        self
    }

    /// Marks the error as one that must be escalated.
    #[must_use]
    pub fn escalate(mut self) -> Self {
        self.context.escalation_required = true;
        self
    }

    /// Attaches the underlying cause (kept local, never sent).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The protocol form of this error.
    pub fn to_enterprise_error(&self) -> EnterpriseError {
        let c = &*self.context;
        EnterpriseError {
            code: self.code_str().to_owned(),
            message: self.message.clone(),
            details: c.details.clone(),
            tenant_id: c.tenant_id.clone(),
            principal_id: c.principal_id.clone(),
            correlation_id: c.correlation_id.clone(),
            retry_after_ms: c.retry_after_ms,
            security_implications: c.security_implications.clone(),
            compliance_impact: c.compliance_impact.clone(),
            remediation_steps: c.remediation_steps.clone(),
            escalation_required: c.escalation_required,
        }
    }
}

impl From<EnterpriseError> for Error {
    fn from(e: EnterpriseError) -> Self {
        let (code, unknown_code) = match e.code.parse::<ErrorCode>() {
            Ok(code) => (code, None),
            Err(()) => (ErrorCode::Unknown, Some(e.code)),
        };
        Self {
            code,
            message: e.message,
            context: Box::new(Context {
                unknown_code,
                details: e.details,
                tenant_id: e.tenant_id,
                principal_id: e.principal_id,
                correlation_id: e.correlation_id,
                retry_after_ms: e.retry_after_ms,
                security_implications: e.security_implications,
                compliance_impact: e.compliance_impact,
                remediation_steps: e.remediation_steps,
                escalation_required: e.escalation_required,
            }),
            source: None,
        }
    }
}

impl From<Error> for EnterpriseError {
    fn from(e: Error) -> Self {
        e.to_enterprise_error()
    }
}

impl From<&Error> for EnterpriseError {
    fn from(e: &Error) -> Self {
        e.to_enterprise_error()
    }
}

impl From<Error> for tonic::Status {
    /// A status whose code follows [`ErrorCode::grpc_code`] and whose details are a
    /// `google.rpc.Status` holding the `EnterpriseError` as an `Any`.
    fn from(e: Error) -> Self {
        let grpc = e.code.grpc_code();
        let detail = prost_types::Any {
            type_url: ENTERPRISE_ERROR_TYPE_URL.to_owned(),
            value: e.to_enterprise_error().encode_to_vec(),
        };
        let status =
            google_rpc::Status { code: grpc as i32, message: e.message.clone(), details: vec![detail] };
        tonic::Status::with_details(grpc, e.message, status.encode_to_vec().into())
    }
}

impl From<tonic::Status> for Error {
    /// The `EnterpriseError` in the status details if there is one; otherwise an error whose
    /// code is derived from the gRPC code, with the status message.
    fn from(status: tonic::Status) -> Self {
        let carried = google_rpc::Status::decode(status.details()).ok().and_then(|rpc| {
            rpc.details
                .into_iter()
                .find(|any| any.type_url == ENTERPRISE_ERROR_TYPE_URL)
                .and_then(|any| EnterpriseError::decode(any.value.as_slice()).ok())
        });
        match carried {
            Some(enterprise) => Self::from(enterprise),
            None => Self::new(ErrorCode::from_grpc(status.code()), status.message())
                .with_detail("grpc_code", format!("{:?}", status.code())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_error() -> Error {
        Error::new(ErrorCode::SecurityClearanceInsufficient, "clearance `internal` is below `secret`")
            .with_detail("contract", "payments.transfer")
            .with_tenant("acme")
            .with_principal("alice")
            .with_correlation_id("0192f0c4-8d5e-7cc0-a1b2-c3d4e5f60718")
            .with_retry_after(Duration::from_millis(1500))
            .with_security_implication("classified data requested")
            .with_compliance_impact("SOC2 CC6.1")
            .with_remediation("request a clearance upgrade")
            .with_remediation("use a tool of lower classification")
            .escalate()
    }

    #[test]
    fn every_code_round_trips_through_its_text() {
        for &code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
        }
        assert!(ErrorCode::ALL.len() >= 46);
    }

    #[test]
    fn enterprise_error_round_trip_is_lossless() {
        let error = full_error();
        let wire = error.to_enterprise_error();
        assert_eq!(wire.code, "SECURITY_CLEARANCE_INSUFFICIENT");
        assert_eq!(wire.retry_after_ms, 1500);
        assert!(wire.escalation_required);
        let back = Error::from(wire.clone());
        assert_eq!(back.to_enterprise_error(), wire);
        assert_eq!(back.code(), ErrorCode::SecurityClearanceInsufficient);
        assert_eq!(back.retry_after(), Some(Duration::from_millis(1500)));
        assert_eq!(back.remediation_steps().len(), 2);
    }

    #[test]
    fn unknown_codes_survive_the_round_trip() {
        let wire = EnterpriseError { code: "QUANTUM_FLUX".into(), message: "m".into(), ..Default::default() };
        let error = Error::from(wire.clone());
        assert_eq!(error.code(), ErrorCode::Unknown);
        assert_eq!(error.code_str(), "QUANTUM_FLUX");
        assert_eq!(error.to_string(), "QUANTUM_FLUX: m");
        assert_eq!(EnterpriseError::from(error), wire);
    }

    #[test]
    fn status_round_trip_is_lossless() {
        for &code in ErrorCode::ALL {
            let error = full_error();
            let error = Error { code, ..error };
            let expected = error.to_enterprise_error();
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code.grpc_code());
            let back = Error::from(status);
            assert_eq!(back.to_enterprise_error(), expected, "{code}");
        }
    }

    #[test]
    fn status_carries_a_standard_google_rpc_status() {
        let status = tonic::Status::from(full_error());
        let rpc = google_rpc::Status::decode(status.details()).expect("google.rpc.Status");
        assert_eq!(rpc.code, tonic::Code::PermissionDenied as i32);
        assert_eq!(rpc.details.len(), 1);
        let any = &rpc.details[0];
        assert_eq!(any.type_url, "type.googleapis.com/aesp.v1.EnterpriseError");
        let enterprise = EnterpriseError::decode(any.value.as_slice()).expect("EnterpriseError");
        assert_eq!(enterprise.tenant_id, "acme");
    }

    #[test]
    fn a_plain_status_maps_by_grpc_code() {
        let error = Error::from(tonic::Status::permission_denied("no"));
        assert_eq!(error.code(), ErrorCode::AuthorizationDenied);
        assert_eq!(error.message(), "no");
        let error =
            Error::from(tonic::Status::with_details(tonic::Code::NotFound, "gone", vec![1, 2, 3].into()));
        assert_eq!(error.code(), ErrorCode::NotFound);
    }

    #[test]
    fn compacted_error_names_the_revision() {
        let error = Error::compacted(3, 10);
        assert_eq!(error.code(), ErrorCode::RevisionCompacted);
        assert_eq!(error.compacted_revision(), Some(10));
        assert_eq!(Error::from(tonic::Status::from(error)).compacted_revision(), Some(10));
        assert_eq!(Error::internal("x").compacted_revision(), None);
    }

    #[test]
    fn the_source_stays_local() {
        let io = std::io::Error::other("disk on fire");
        let error = Error::internal("write failed").with_source(io);
        assert!(std::error::Error::source(&error).is_some());
        assert!(!format!("{:?}", error.to_enterprise_error()).contains("disk on fire"));
    }
}
