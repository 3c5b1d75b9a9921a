//! The domain's errors. The api crate maps [`DomainError`] to HTTP in exactly one place.

use thiserror::Error;

/// Input that breaks a rule; names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The field, as the client spelled it (`name`, `tags[3]`, `metadata`).
    pub field: String,
    /// What is wrong with it, in words a client can act on.
    pub message: String,
}

impl ValidationError {
    /// A rule broken by `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a repository (a storage adapter) could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RepoError {
    /// The thing does not exist; the text says which.
    #[error("{0}")]
    NotFound(String),
    /// A uniqueness rule would be broken; the text says which.
    #[error("{0}")]
    Conflict(String),
    /// The change is invalid given what is stored (a rule only the stored state can decide,
    /// e.g. a credential for a version with no endpoint); names the field (HTTP 422).
    #[error(transparent)]
    Invalid(ValidationError),
    /// The store cannot be reached in time (down, or every connection busy).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else; a bug or a broken invariant.
    #[error("storage error: {0}")]
    Internal(String),
}

/// The outcome of a use-case that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// Bad input (HTTP 422).
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// Missing (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The actor may not do this (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// Duplicate (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// A dependency is down or saturated (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug (HTTP 500); the text is logged, never shown to clients.
    #[error("{0}")]
    Internal(String),
}

impl From<RepoError> for DomainError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NotFound(m) => Self::NotFound(m),
            RepoError::Conflict(m) => Self::Conflict(m),
            RepoError::Invalid(v) => Self::Validation(v),
            RepoError::Unavailable(m) => Self::Unavailable(m),
            RepoError::Internal(m) => Self::Internal(m),
        }
    }
}
