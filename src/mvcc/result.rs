//! The wire form of what applying a command produced (`bulwarkpb.CommandResult`): it travels
//! from the state machine to the proposer, possibly on another member.

use prost::Message;

use super::{CommandResponse, MvccError};
use crate::proto::bulwarkpb::command_result::Kind;
use crate::proto::bulwarkpb::rejection::Reason;
use crate::proto::bulwarkpb::{CommandResult, Rejection};

pub fn encode_result(result: &Result<CommandResponse, MvccError>) -> Vec<u8> {
    let kind = match result {
        Ok(CommandResponse::Put(r)) => Kind::Put(r.clone()),
        Ok(CommandResponse::DeleteRange(r)) => Kind::DeleteRange(r.clone()),
        Ok(CommandResponse::Txn(r)) => Kind::Txn(r.clone()),
        Ok(CommandResponse::Compaction(r)) => Kind::Compaction(*r),
        Ok(CommandResponse::SettingStored) => Kind::SettingStored(true),
        Ok(CommandResponse::LeaseGrant(r)) => Kind::LeaseGrant(r.clone()),
        Ok(CommandResponse::LeaseRevoke(r)) => Kind::LeaseRevoke(*r),
        Err(error) => {
            let reason = match error {
                MvccError::Compacted => Reason::Compacted,
                MvccError::FutureRevision => Reason::FutureRevision,
                MvccError::KeyNotFound => Reason::KeyNotFound,
                MvccError::LeaseNotFound => Reason::LeaseNotFound,
                MvccError::LeaseExists => Reason::LeaseExists,
                MvccError::SettingChanged => Reason::SettingChanged,
                // Per-command results never carry a storage, failed-store, store-format or
                // defragmentation error (those fail the whole apply or the open); listed for
                // completeness.
                MvccError::Corrupt(_)
                | MvccError::Storage(_)
                | MvccError::NewerFormat { .. }
                | MvccError::Failed(_)
                | MvccError::DefragmentInterrupted
                | MvccError::DefragmentFile(_) => Reason::Corrupt,
            };
            Kind::Rejected(Rejection {
                reason: reason as i32,
                detail: error.to_string(),
            })
        }
    };
    CommandResult { kind: Some(kind) }.encode_to_vec()
}

pub fn decode_result(bytes: &[u8]) -> Result<CommandResponse, MvccError> {
    let result = CommandResult::decode(bytes)
        .map_err(|e| MvccError::Corrupt(format!("command result does not decode: {e}")))?;
    match result.kind {
        Some(Kind::Put(r)) => Ok(CommandResponse::Put(r)),
        Some(Kind::DeleteRange(r)) => Ok(CommandResponse::DeleteRange(r)),
        Some(Kind::Txn(r)) => Ok(CommandResponse::Txn(r)),
        Some(Kind::Compaction(r)) => Ok(CommandResponse::Compaction(r)),
        Some(Kind::SettingStored(_)) => Ok(CommandResponse::SettingStored),
        Some(Kind::LeaseGrant(r)) => Ok(CommandResponse::LeaseGrant(r)),
        Some(Kind::LeaseRevoke(r)) => Ok(CommandResponse::LeaseRevoke(r)),
        Some(Kind::Rejected(rejection)) => Err(
            match Reason::try_from(rejection.reason).unwrap_or(Reason::Unknown) {
                Reason::Compacted => MvccError::Compacted,
                Reason::FutureRevision => MvccError::FutureRevision,
                Reason::KeyNotFound => MvccError::KeyNotFound,
                Reason::LeaseNotFound => MvccError::LeaseNotFound,
                Reason::LeaseExists => MvccError::LeaseExists,
                Reason::SettingChanged => MvccError::SettingChanged,
                Reason::Corrupt | Reason::Unknown => MvccError::Corrupt(rejection.detail),
            },
        ),
        None => Err(MvccError::Corrupt("empty command result".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{PutResponse, ResponseHeader};

    #[test]
    fn results_round_trip() {
        let ok = CommandResponse::Put(PutResponse {
            header: Some(ResponseHeader {
                revision: 9,
                ..Default::default()
            }),
            prev_kv: None,
        });
        assert_eq!(decode_result(&encode_result(&Ok(ok.clone()))).unwrap(), ok);
        for error in [
            MvccError::Compacted,
            MvccError::FutureRevision,
            MvccError::KeyNotFound,
            MvccError::LeaseNotFound,
        ] {
            let expected = error.to_string();
            let decoded = decode_result(&encode_result(&Err(error))).unwrap_err();
            assert_eq!(decoded.to_string(), expected);
        }
    }
}
