//! Txn compare evaluation, as etcd's `applyCompare`: a compare over a range holds only if it
//! holds for every key in it; a missing key compares as all-zero, except that a value compare on
//! a missing key always fails (an absent value is not the empty string).

use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::Compare;
use crate::proto::mvccpb::KeyValue;

/// Whether `compare` looks at the keys' values (the others need their metadata only).
pub(super) fn compares_values(compare: &Compare) -> bool {
    CompareTarget::try_from(compare.target) == Ok(CompareTarget::Value)
}

/// Whether `compare` holds over `kvs`, the live keys its key range covers.
pub(super) fn holds(compare: &Compare, kvs: &[KeyValue]) -> bool {
    let target = CompareTarget::try_from(compare.target).unwrap_or(CompareTarget::Version);
    if kvs.is_empty() {
        return target != CompareTarget::Value && holds_for(compare, target, &KeyValue::default());
    }
    kvs.iter().all(|kv| holds_for(compare, target, kv))
}

fn holds_for(compare: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    let number = |field: i64, wanted: Option<i64>| field.cmp(&wanted.unwrap_or(0));
    let union = compare.target_union.as_ref();
    let ordering = match target {
        CompareTarget::Value => {
            let wanted: &[u8] = match union {
                Some(TargetUnion::Value(value)) => value,
                _ => &[],
            };
            kv.value.as_slice().cmp(wanted)
        }
        CompareTarget::Version => number(
            kv.version,
            union.and_then(|u| match u {
                TargetUnion::Version(v) => Some(*v),
                _ => None,
            }),
        ),
        CompareTarget::Create => number(
            kv.create_revision,
            union.and_then(|u| match u {
                TargetUnion::CreateRevision(v) => Some(*v),
                _ => None,
            }),
        ),
        CompareTarget::Mod => number(
            kv.mod_revision,
            union.and_then(|u| match u {
                TargetUnion::ModRevision(v) => Some(*v),
                _ => None,
            }),
        ),
        CompareTarget::Lease => number(
            kv.lease,
            union.and_then(|u| match u {
                TargetUnion::Lease(v) => Some(*v),
                _ => None,
            }),
        ),
    };
    match CompareResult::try_from(compare.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare(target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
        Compare {
            target: target as i32,
            result: result as i32,
            key: b"k".to_vec(),
            target_union: Some(union),
            ..Default::default()
        }
    }

    fn kv(value: &[u8], version: i64) -> KeyValue {
        KeyValue {
            key: b"k".to_vec(),
            value: value.to_vec(),
            version,
            create_revision: 2,
            mod_revision: 5,
            lease: 0,
        }
    }

    #[test]
    fn value_compare_on_missing_key_fails_even_for_empty_value() {
        let c = compare(
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(vec![]),
        );
        assert!(!holds(&c, &[]));
        let c = compare(
            CompareTarget::Value,
            CompareResult::NotEqual,
            TargetUnion::Value(b"x".to_vec()),
        );
        assert!(!holds(&c, &[]));
    }

    #[test]
    fn missing_key_has_version_zero() {
        let c = compare(
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0),
        );
        assert!(holds(&c, &[]));
        let c = compare(
            CompareTarget::Create,
            CompareResult::Equal,
            TargetUnion::CreateRevision(0),
        );
        assert!(holds(&c, &[]));
    }

    #[test]
    fn every_result_kind() {
        let kvs = [kv(b"b", 3)];
        let check = |result, wanted| {
            holds(
                &compare(CompareTarget::Version, result, TargetUnion::Version(wanted)),
                &kvs,
            )
        };
        assert!(check(CompareResult::Equal, 3));
        assert!(check(CompareResult::Greater, 2));
        assert!(check(CompareResult::Less, 4));
        assert!(check(CompareResult::NotEqual, 4));
        assert!(!check(CompareResult::Greater, 3));
        let value = |result, wanted: &[u8]| {
            holds(
                &compare(
                    CompareTarget::Value,
                    result,
                    TargetUnion::Value(wanted.to_vec()),
                ),
                &kvs,
            )
        };
        assert!(value(CompareResult::Greater, b"a"));
        assert!(value(CompareResult::Less, b"c"));
        assert!(value(CompareResult::Equal, b"b"));
    }

    #[test]
    fn range_compare_needs_every_key() {
        let c = compare(
            CompareTarget::Mod,
            CompareResult::Equal,
            TargetUnion::ModRevision(5),
        );
        let mut other = kv(b"x", 1);
        assert!(holds(&c, &[kv(b"a", 1), other.clone()]));
        other.mod_revision = 6;
        assert!(!holds(&c, &[kv(b"a", 1), other]));
    }
}
