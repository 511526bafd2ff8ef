//! Request checks done before a request reaches the write path, as etcd's `v3rpc` does them:
//! empty keys, txn size, and the duplicate-key rule for txns. Pure functions over requests.

use std::collections::HashSet;

use super::error::ApiError;
use crate::mvcc::keys::KeyRange;
use crate::proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

pub fn check_range(req: &RangeRequest) -> Result<(), ApiError> {
    non_empty_key(&req.key)
}

pub fn check_put(req: &PutRequest) -> Result<(), ApiError> {
    non_empty_key(&req.key)?;
    if req.ignore_value && !req.value.is_empty() {
        return Err(ApiError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(ApiError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(req: &DeleteRangeRequest) -> Result<(), ApiError> {
    non_empty_key(&req.key)
}

/// etcd's `checkTxnRequest` followed by `checkIntervals` on both branches.
pub fn check_txn(req: &TxnRequest, max_ops: usize) -> Result<(), ApiError> {
    check_txn_shape(req, max_ops)?;
    intervals(&req.success)?;
    intervals(&req.failure)?;
    Ok(())
}

fn check_txn_shape(req: &TxnRequest, max_ops: usize) -> Result<(), ApiError> {
    if req.compare.len() > max_ops || req.success.len() > max_ops || req.failure.len() > max_ops {
        return Err(ApiError::TooManyOps);
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(r)?,
            Some(request_op::Request::RequestPut(r)) => check_put(r)?,
            Some(request_op::Request::RequestDeleteRange(r)) => check_delete(r)?,
            Some(request_op::Request::RequestTxn(r)) => check_txn_shape(r, max_ops)?,
            None => {}
        }
    }
    Ok(())
}

/// The keys one branch puts and the ranges it deletes, nested txns included; fails when one key
/// is written twice on a path that could run (etcd's `checkIntervals`). A nested txn's two
/// branches exclude each other, so a key put in both of them is fine.
fn intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<KeyRange>), ApiError> {
    let mut deletes: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => {
                Some(KeyRange::new(&d.key, &d.range_end))
            }
            _ => None,
        })
        .collect();
    let deleted = |deletes: &[KeyRange], key: &[u8]| {
        let point = KeyRange::new(key, b"");
        deletes.iter().any(|range| range.intersects(&point))
    };

    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deletes_then) = intervals(&nested.success)?;
        let (puts_else, deletes_else) = intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || deleted(&deletes, key) {
                return Err(ApiError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        for key in &puts_else {
            if (puts.contains(key) && !puts_then.contains(key)) || deleted(&deletes, key) {
                return Err(ApiError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        deletes.extend(deletes_then);
        deletes.extend(deletes_else);
    }

    for op in ops {
        let Some(request_op::Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || deleted(&deletes, &put.key) {
            return Err(ApiError::DuplicateKey);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deletes))
}

fn non_empty_key(key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() {
        Err(ApiError::EmptyKey)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn delete(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.into(),
                    range_end: end.into(),
                    prev_kv: false,
                },
            )),
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn txn(success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        }
    }

    fn duplicate(req: &TxnRequest) -> bool {
        matches!(check_txn(req, 128), Err(ApiError::DuplicateKey))
    }

    #[test]
    fn duplicate_key_rules_match_etcd() {
        assert!(duplicate(&txn(vec![put("a"), put("a")])));
        assert!(!duplicate(&txn(vec![put("a"), put("b")])));
        assert!(duplicate(&txn(vec![delete("a", "c"), put("b")])));
        assert!(!duplicate(&txn(vec![delete("a", "c"), put("c")])));
        assert!(duplicate(&txn(vec![
            put("a"),
            nested(vec![put("a")], vec![])
        ])));
        // then and else of one nested txn never both run
        assert!(!duplicate(&txn(vec![nested(
            vec![put("a")],
            vec![put("a")]
        )])));
        assert!(duplicate(&txn(vec![
            delete("a", ""),
            nested(vec![], vec![put("a")])
        ])));
        assert!(duplicate(&txn(vec![
            nested(vec![delete("a", "\0")], vec![]),
            put("z")
        ])));
        // success and failure of the outer txn are checked separately
        let mut both = txn(vec![put("a")]);
        both.failure = vec![put("a")];
        assert!(!duplicate(&both));
    }

    #[test]
    fn op_count_limit_and_empty_keys() {
        let ops: Vec<_> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert!(matches!(
            check_txn(&txn(ops.clone()), 128),
            Err(ApiError::TooManyOps)
        ));
        assert!(check_txn(&txn(ops[..128].to_vec()), 128).is_ok());
        assert!(matches!(
            check_txn(&txn(vec![put("")]), 128),
            Err(ApiError::EmptyKey)
        ));
        assert!(matches!(
            check_range(&RangeRequest::default()),
            Err(ApiError::EmptyKey)
        ));
    }
}
