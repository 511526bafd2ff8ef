//! Every error a client can see, and the one place they become etcd's gRPC codes and messages
//! (clients match on these strings; see `../shared/etcd-reference/errors.md`).

use tonic::{Code, Status};

use crate::mvcc::MvccError;
use crate::raft::ProposeError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("key is not provided")]
    EmptyKey,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("request is too large")]
    RequestTooLarge,
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error("no leader")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    #[error("leader changed")]
    LeaderChanged,
    #[error("server stopped")]
    Stopped,
    #[error("peer communication failed: {0}")]
    Peer(String),
    #[error("{0}")]
    MembershipRefused(String),
    #[error("member not found")]
    MemberNotFound,
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    #[error("can only promote a learner member")]
    NotALearner,
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("bad peer URL {0:?}: expected https://HOST:PORT")]
    BadPeerUrl(String),
    #[error("{0} is not supported by this member yet")]
    Unsupported(&'static str),
}

impl From<ProposeError> for ApiError {
    fn from(error: ProposeError) -> Self {
        match error {
            ProposeError::Rejected(error) => ApiError::Mvcc(error),
            ProposeError::NoLeader => ApiError::NoLeader,
            ProposeError::Timeout => ApiError::Timeout,
            ProposeError::LeaderChanged => ApiError::LeaderChanged,
            ProposeError::Stopped => ApiError::Stopped,
            ProposeError::Peer(message) => ApiError::Peer(message),
            ProposeError::Membership(message) => ApiError::MembershipRefused(message),
        }
    }
}

impl ApiError {
    /// etcd's gRPC code and message for this error.
    pub fn code_and_message(&self) -> (Code, String) {
        let etcd = |code: Code, message: &str| (code, format!("etcdserver: {message}"));
        match self {
            ApiError::EmptyKey
            | ApiError::TooManyOps
            | ApiError::DuplicateKey
            | ApiError::ValueProvided
            | ApiError::LeaseProvided
            | ApiError::RequestTooLarge => etcd(Code::InvalidArgument, &self.to_string()),
            ApiError::Mvcc(error) => match error {
                MvccError::Compacted | MvccError::FutureRevision => {
                    etcd(Code::OutOfRange, &error.to_string())
                }
                MvccError::KeyNotFound => etcd(Code::InvalidArgument, &error.to_string()),
                MvccError::LeaseNotFound => etcd(Code::NotFound, &error.to_string()),
                MvccError::Corrupt(_) => etcd(Code::DataLoss, "corrupt cluster"),
                MvccError::Storage(_) => etcd(Code::Internal, &error.to_string()),
            },
            ApiError::NoLeader
            | ApiError::Timeout
            | ApiError::LeaderChanged
            | ApiError::Stopped
            | ApiError::Peer(_) => etcd(Code::Unavailable, &self.to_string()),
            ApiError::Unsupported(_) => (Code::Unimplemented, self.to_string()),
            ApiError::MemberNotFound => etcd(Code::NotFound, &self.to_string()),
            ApiError::PeerUrlExists
            | ApiError::NotALearner
            | ApiError::LearnerNotReady
            | ApiError::MembershipRefused(_) => etcd(Code::FailedPrecondition, &self.to_string()),
            ApiError::BadPeerUrl(_) => etcd(Code::InvalidArgument, &self.to_string()),
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let (code, message) = error.code_and_message();
        if code == Code::Internal || code == Code::DataLoss {
            tracing::error!(%error, "request failed inside the member");
        }
        Status::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row by row against `../shared/etcd-reference/errors.md`.
    #[test]
    fn codes_and_messages_match_etcd() {
        let rows: Vec<(ApiError, Code, &str)> = vec![
            (
                ApiError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                ApiError::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                ApiError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                ApiError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                ApiError::Mvcc(MvccError::FutureRevision),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                ApiError::Mvcc(MvccError::Compacted),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                ApiError::Mvcc(MvccError::LeaseNotFound),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                ApiError::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                ApiError::Timeout,
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                ApiError::LeaderChanged,
                Code::Unavailable,
                "etcdserver: leader changed",
            ),
            (
                ApiError::Mvcc(MvccError::Corrupt("x".into())),
                Code::DataLoss,
                "etcdserver: corrupt cluster",
            ),
        ];
        for (error, code, message) in rows {
            assert_eq!(error.code_and_message(), (code, message.to_string()));
        }
    }
}
