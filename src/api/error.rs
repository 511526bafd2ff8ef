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
    #[error("not leader")]
    NotLeader,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("mvcc: database space exceeded")]
    NoSpace,
    #[error("bad leader transferee")]
    BadTransferee,
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
            ProposeError::NotLeader => ApiError::NotLeader,
            ProposeError::BadTransferee => ApiError::BadTransferee,
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
                MvccError::LeaseExists | MvccError::SettingChanged => {
                    etcd(Code::FailedPrecondition, &error.to_string())
                }
                MvccError::Corrupt(_) => etcd(Code::DataLoss, "corrupt cluster"),
                MvccError::Storage(_)
                | MvccError::NewerFormat { .. }
                | MvccError::DefragmentFile(_) => etcd(Code::Internal, &error.to_string()),
                MvccError::DefragmentInterrupted | MvccError::Failed(_) => {
                    etcd(Code::Unavailable, &error.to_string())
                }
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
            ApiError::LeaseTtlTooLarge => etcd(Code::OutOfRange, &self.to_string()),
            ApiError::NoSpace => etcd(Code::ResourceExhausted, &self.to_string()),
            ApiError::NotLeader | ApiError::BadTransferee => {
                etcd(Code::FailedPrecondition, &self.to_string())
            }
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

/// Wraps a gRPC service so that tonic's own "message too large" refusal carries etcd's code.
///
/// tonic refuses a request over `max_decoding_message_size` with `OutOfRange` before any
/// handler runs; etcd (grpc-go) answers `ResourceExhausted`, and clients match on the code. The
/// refusal is a headers-only response, so rewriting its `grpc-status` header is enough.
#[derive(Debug, Clone)]
pub struct EtcdCodes<S>(pub S);

/// tonic's message for an oversized request, as it appears percent-encoded in `grpc-message`.
const TONIC_TOO_LARGE: &str = "Error,%20decoded%20message%20length%20too%20large";

impl<S: tonic::server::NamedService> tonic::server::NamedService for EtcdCodes<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for EtcdCodes<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.0.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            let too_large = headers.get("grpc-status").is_some_and(|code| code == "11")
                && headers
                    .get("grpc-message")
                    .and_then(|message| message.to_str().ok())
                    .is_some_and(|message| message.starts_with(TONIC_TOO_LARGE));
            if too_large {
                let code = (Code::ResourceExhausted as i32).to_string();
                headers.insert(
                    "grpc-status",
                    http::HeaderValue::from_str(&code).expect("digits are a valid header"),
                );
            }
            Ok(response)
        })
    }
}

impl From<crate::identities::IssueError> for Status {
    fn from(error: crate::identities::IssueError) -> Self {
        use crate::identities::IssueError;
        match error {
            IssueError::Request(_) => Status::invalid_argument(error.to_string()),
            IssueError::Consensus(error) => error.into(),
            IssueError::Issued(_) | IssueError::Unexpected(_) => {
                Status::internal(error.to_string())
            }
        }
    }
}

impl From<ProposeError> for Status {
    fn from(error: ProposeError) -> Self {
        ApiError::from(error).into()
    }
}
