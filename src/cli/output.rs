//! How client commands print: a table for people (default), etcdctl's `simple` lines, or
//! etcdctl-compatible JSON for scripts (zero fields left out, bytes base64, as etcdctl's Go
//! encoder writes them).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use clap::ValueEnum;
use serde_json::{json, Map, Value};

use crate::proto::etcdserverpb::{
    DeleteRangeResponse, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseTimeToLiveResponse, PutResponse, RangeResponse, ResponseHeader, WatchResponse,
};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::KeyValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Simple,
    Json,
}

pub fn print_range(format: Format, response: &RangeResponse) {
    match format {
        Format::Json => {
            let mut object = Map::new();
            insert_header(&mut object, &response.header);
            insert_kvs(&mut object, "kvs", &response.kvs);
            if response.more {
                object.insert("more".into(), json!(true));
            }
            if response.count != 0 {
                object.insert("count".into(), json!(response.count));
            }
            println!("{}", Value::Object(object));
        }
        Format::Simple if response.kvs.is_empty() && response.count > 0 => {
            println!("{}", response.count)
        }
        Format::Simple => print_simple(&response.kvs),
        Format::Table => {
            print!("{}", kv_table(&response.kvs));
            let revision = response.header.as_ref().map_or(0, |h| h.revision);
            println!(
                "{} of {} keys, at revision {revision}{}",
                response.kvs.len(),
                response.count,
                if response.more { " (more)" } else { "" }
            );
        }
    }
}

pub fn print_put(format: Format, response: &PutResponse) {
    match format {
        Format::Json => {
            let mut object = Map::new();
            insert_header(&mut object, &response.header);
            if let Some(prev) = &response.prev_kv {
                object.insert("prev_kv".into(), kv_json(prev));
            }
            println!("{}", Value::Object(object));
        }
        Format::Simple | Format::Table => {
            println!("OK");
            if let Some(prev) = &response.prev_kv {
                if format == Format::Table {
                    print!("{}", kv_table(std::slice::from_ref(prev)));
                } else {
                    print_simple(std::slice::from_ref(prev));
                }
            }
        }
    }
}

pub fn print_delete(format: Format, response: &DeleteRangeResponse) {
    match format {
        Format::Json => {
            let mut object = Map::new();
            insert_header(&mut object, &response.header);
            if response.deleted != 0 {
                object.insert("deleted".into(), json!(response.deleted));
            }
            insert_kvs(&mut object, "prev_kvs", &response.prev_kvs);
            println!("{}", Value::Object(object));
        }
        Format::Simple => {
            println!("{}", response.deleted);
            print_simple(&response.prev_kvs);
        }
        Format::Table => {
            println!("{}", response.deleted);
            if !response.prev_kvs.is_empty() {
                print!("{}", kv_table(&response.prev_kvs));
            }
        }
    }
}

/// One watch response: etcdctl's simple lines (PUT/DELETE, key, value), a JSON line per
/// response, or the simple lines for a table (a stream has no table).
pub fn print_watch(format: Format, response: &WatchResponse) {
    if format == Format::Json {
        let mut object = Map::new();
        insert_header(&mut object, &response.header);
        let events: Vec<Value> = response
            .events
            .iter()
            .map(|event| {
                let mut fields = Map::new();
                if event.r#type != 0 {
                    fields.insert("type".into(), json!(event.r#type));
                }
                if let Some(kv) = &event.kv {
                    fields.insert("kv".into(), kv_json(kv));
                }
                if let Some(prev) = &event.prev_kv {
                    fields.insert("prev_kv".into(), kv_json(prev));
                }
                Value::Object(fields)
            })
            .collect();
        object.insert("events".into(), Value::Array(events));
        println!("{}", Value::Object(object));
        return;
    }
    for event in &response.events {
        let kind = match EventType::try_from(event.r#type) {
            Ok(EventType::Delete) => "DELETE",
            _ => "PUT",
        };
        println!("{kind}");
        if let Some(kv) = &event.kv {
            println!("{}", String::from_utf8_lossy(&kv.key));
            println!("{}", String::from_utf8_lossy(&kv.value));
        }
        if let Some(prev) = &event.prev_kv {
            println!("{}", String::from_utf8_lossy(&prev.key));
            println!("{}", String::from_utf8_lossy(&prev.value));
        }
    }
}

/// etcdctl's JSON for a lease grant.
/// etcdctl's lease JSON starts with the header's fields at the top level.
fn flat_header(header: Option<ResponseHeader>) -> Map<String, Value> {
    let header = header.unwrap_or_default();
    let mut object = Map::new();
    object.insert("cluster_id".into(), json!(header.cluster_id));
    object.insert("member_id".into(), json!(header.member_id));
    object.insert("revision".into(), json!(header.revision));
    object.insert("raft_term".into(), json!(header.raft_term));
    object
}

/// A certificate the cluster issued, as `identity list` and `ca status` print it in JSON.
pub fn identity_info_json(identity: &crate::proto::bulwarkpb::IdentityInfo) -> Value {
    serde_json::json!({
        "name": identity.name,
        "role": identity.role,
        "serial": identity.serial,
        "issuer": identity.issuer,
        "not_after": identity.not_after,
        "state": identity.state,
    })
}

pub fn lease_grant_json(response: &LeaseGrantResponse) -> Value {
    let mut object = flat_header(response.header);
    object.insert("ID".into(), json!(response.id));
    object.insert("TTL".into(), json!(response.ttl));
    object.insert("Error".into(), json!(response.error));
    Value::Object(object)
}

/// `etcdctl lease timetolive -w json`: keys base64, `null` when there are none.
pub fn lease_ttl_json(response: &LeaseTimeToLiveResponse) -> Value {
    let mut object = flat_header(response.header);
    object.insert("id".into(), json!(response.id));
    object.insert("ttl".into(), json!(response.ttl));
    object.insert("granted-ttl".into(), json!(response.granted_ttl));
    let keys = match response.keys.is_empty() {
        true => Value::Null,
        false => json!(response
            .keys
            .iter()
            .map(|k| BASE64.encode(k))
            .collect::<Vec<_>>()),
    };
    object.insert("keys".into(), keys);
    Value::Object(object)
}

/// `etcdctl lease list -w json`.
pub fn lease_list_json(response: &LeaseLeasesResponse) -> Value {
    let mut object = flat_header(response.header);
    let leases: Vec<Value> = response
        .leases
        .iter()
        .map(|l| json!({"id": l.id}))
        .collect();
    object.insert("leases".into(), json!(leases));
    Value::Object(object)
}

/// `etcdctl lease keep-alive -w json`, one line per renewal.
pub fn lease_keep_alive_json(response: &LeaseKeepAliveResponse) -> Value {
    let mut object = flat_header(response.header);
    object.insert("ID".into(), json!(response.id));
    object.insert("TTL".into(), json!(response.ttl));
    Value::Object(object)
}

/// `[k1 k2]`, as etcdctl prints a lease's attached keys (Go's `%v` of a string slice).
pub fn lease_keys_simple(keys: &[Vec<u8>]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    format!("[{}]", keys.join(" "))
}

fn print_simple(kvs: &[KeyValue]) {
    for kv in kvs {
        println!("{}", String::from_utf8_lossy(&kv.key));
        if !kv.value.is_empty() {
            println!("{}", String::from_utf8_lossy(&kv.value));
        }
    }
}

fn insert_header(object: &mut Map<String, Value>, header: &Option<ResponseHeader>) {
    let Some(header) = header else { return };
    let mut fields = Map::new();
    let mut put = |name: &str, value: Value, zero: bool| {
        if !zero {
            fields.insert(name.to_string(), value);
        }
    };
    put(
        "cluster_id",
        json!(header.cluster_id),
        header.cluster_id == 0,
    );
    put("member_id", json!(header.member_id), header.member_id == 0);
    put("revision", json!(header.revision), header.revision == 0);
    put("raft_term", json!(header.raft_term), header.raft_term == 0);
    object.insert("header".into(), Value::Object(fields));
}

fn insert_kvs(object: &mut Map<String, Value>, name: &str, kvs: &[KeyValue]) {
    if !kvs.is_empty() {
        object.insert(name.into(), Value::Array(kvs.iter().map(kv_json).collect()));
    }
}

fn kv_json(kv: &KeyValue) -> Value {
    let mut fields = Map::new();
    if !kv.key.is_empty() {
        fields.insert("key".into(), json!(BASE64.encode(&kv.key)));
    }
    for (name, number) in [
        ("create_revision", kv.create_revision),
        ("mod_revision", kv.mod_revision),
        ("version", kv.version),
    ] {
        if number != 0 {
            fields.insert(name.into(), json!(number));
        }
    }
    if !kv.value.is_empty() {
        fields.insert("value".into(), json!(BASE64.encode(&kv.value)));
    }
    if kv.lease != 0 {
        fields.insert("lease".into(), json!(kv.lease));
    }
    Value::Object(fields)
}

/// A bordered table of key-values, numbers right-aligned.
fn kv_table(kvs: &[KeyValue]) -> String {
    let headers = ["KEY", "VALUE", "VERSION", "CREATE REV", "MOD REV", "LEASE"];
    let rows: Vec<Vec<String>> = kvs
        .iter()
        .map(|kv| {
            vec![
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.version.to_string(),
                kv.create_revision.to_string(),
                kv.mod_revision.to_string(),
                if kv.lease == 0 {
                    String::new()
                } else {
                    format!("{:016x}", kv.lease)
                },
            ]
        })
        .collect();
    bordered_table(&headers, &rows, 2)
}

/// A table with a rule above and below the header and at the end; the cells of columns from
/// `right_aligned_from` on are right-aligned (numbers), the header always left-aligned. A row
/// shorter than the header leaves its last cells empty.
pub(crate) fn bordered_table(
    headers: &[&str],
    rows: &[Vec<String>],
    right_aligned_from: usize,
) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let rule = {
        let mut line = String::from("+");
        for width in &widths {
            line.push_str(&"-".repeat(width + 2));
            line.push('+');
        }
        line.push('\n');
        line
    };
    let format_row = |cells: &[String], numbers_right: bool| {
        let mut line = String::from("|");
        for (index, width) in widths.iter().copied().enumerate() {
            let cell = cells.get(index).map_or("", String::as_str);
            if numbers_right && index >= right_aligned_from {
                line.push_str(&format!(" {cell:>width$} |"));
            } else {
                line.push_str(&format!(" {cell:<width$} |"));
            }
        }
        line.push('\n');
        line
    };
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut table = rule.clone();
    table.push_str(&format_row(&header, false));
    table.push_str(&rule);
    for row in rows {
        table.push_str(&format_row(row, true));
    }
    table.push_str(&rule);
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_etcdctl_shape() {
        let kv = KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 4,
            version: 3,
            value: b"bar3".to_vec(),
            lease: 0,
        };
        assert_eq!(
            kv_json(&kv).to_string(),
            r#"{"key":"Zm9v","create_revision":2,"mod_revision":4,"version":3,"value":"YmFyMw=="}"#
        );
    }

    #[test]
    fn table_has_a_row_per_key() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            version: 1,
            create_revision: 2,
            mod_revision: 2,
            lease: 0,
        };
        let table = kv_table(&[kv]);
        assert_eq!(table.lines().count(), 5);
        assert!(table.contains("| k   | v     |"));
    }
}
