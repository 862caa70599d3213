//! The crate's error type, which converts into [`aesp_core::Error`] with a stable code.

use aesp_core::ErrorCode;

use crate::validate::ValidationError;

/// An error of the policy engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A policy does not validate: syntax, type or field errors, with their positions.
    #[error("policy `{policy_id}` is invalid: {}", first_message(.errors))]
    InvalidPolicy {
        /// The policy's id.
        policy_id: String,
        /// Every problem found, in the order of their positions.
        errors: Vec<ValidationError>,
    },
    /// A role definition, permission or assignment is malformed.
    #[error("role `{role_id}` is invalid: {message}")]
    InvalidRole {
        /// The role's id.
        role_id: String,
        /// What is wrong.
        message: String,
    },
    /// The role hierarchy has a cycle.
    #[error("role hierarchy has a cycle through `{role_id}`")]
    RoleCycle {
        /// A role on the cycle.
        role_id: String,
    },
    /// Two definitions share an id.
    #[error("duplicate {kind} `{id}`")]
    Duplicate {
        /// What is duplicated (`policy`, `role`).
        kind: &'static str,
        /// The duplicated id.
        id: String,
    },
    /// A label, pattern, attribute or other configuration is malformed.
    #[error("{0}")]
    Configuration(String),
}

fn first_message(errors: &[ValidationError]) -> String {
    match errors.first() {
        Some(error) if errors.len() > 1 => format!("{error} (and {} more)", errors.len() - 1),
        Some(error) => error.to_string(),
        None => "no details".to_owned(),
    }
}

impl From<PolicyError> for aesp_core::Error {
    fn from(error: PolicyError) -> Self {
        let code = match &error {
            PolicyError::InvalidPolicy { .. } | PolicyError::InvalidRole { .. } => {
                ErrorCode::ValidationFailed
            }
            PolicyError::RoleCycle { .. } | PolicyError::Duplicate { .. } => ErrorCode::InvalidArgument,
            PolicyError::Configuration(_) => ErrorCode::ConfigurationError,
        };
        let mut converted = aesp_core::Error::new(code, error.to_string());
        if let PolicyError::InvalidPolicy { policy_id, errors } = &error {
            converted = converted.with_detail("policy_id", policy_id.clone());
            for (index, e) in errors.iter().enumerate() {
                converted = converted.with_detail(format!("error.{index}"), e.to_string());
            }
        }
        converted
    }
}
