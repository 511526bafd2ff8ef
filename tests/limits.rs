//! Limits and bad input: request size (`--max-request-bytes`), txn size (`--max-txn-ops`),
//! duplicate keys in a txn, empty keys, each answered with etcd's exact code and message
//! (`../shared/etcd-reference/errors.md`), and hostile bytes on an authenticated connection.
//! After every refusal the member still serves, and nothing refused was written.

mod common;

use common::client::{assert_grpc_error, assert_header, status_of};
use common::raw::{
    frame, grpc_call_headers, grpc_frame, grpc_message, identity_config, tls_connect,
    write_then_read_to_end, StreamEnd, DATA, END_HEADERS, END_STREAM, H2, HEADERS,
};
use common::{Cluster, Member, MemberOptions};
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp};
use tonic::Code;

const TOO_LARGE: &str = "etcdserver: request is too large";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const NO_KEY: &str = "etcdserver: key is not provided";

/// The member answers a write and a read, and its revision is `revision` before the write.
async fn assert_still_serves(member: &mut Member, revision: i64) {
    assert!(member.is_running(), "the member died\n{}", member.logs());
    let mut client = member.client().await;
    let response = client.put("still-serving", "yes", None).await.expect("put");
    assert_header(response.header(), revision + 1);
    let response = client.get("still-serving", None).await.expect("get");
    assert_eq!(response.kvs()[0].value(), b"yes");
}

fn value_of(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

#[tokio::test]
async fn request_size_limit_defaults_to_etcds() {
    let mut cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;

    let big = value_of(1_500_000);
    let response = client
        .put("big", big.clone(), None)
        .await
        .expect("1.5 MB put");
    assert_header(response.header(), 2);
    let response = client.get("big", None).await.expect("get");
    assert!(
        response.kvs()[0].value() == big.as_slice(),
        "the 1.5 MB value reads back whole"
    );

    assert_grpc_error(
        client.put("bigger", value_of(1_600_000), None).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    assert_grpc_error(
        client
            .txn(Txn::new().and_then([TxnOp::put("bigger", value_of(1_600_000), None)]))
            .await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    // Over max-request-bytes + 512 KiB, gRPC itself refuses the message.
    let result = client.put("huge", value_of(3_000_000), None).await;
    match &result {
        Err(error) => assert_eq!(
            status_of(error).map(|s| s.code()),
            Some(Code::ResourceExhausted),
            "{error:?}"
        ),
        Ok(_) => panic!("a 3 MB put succeeded"),
    }

    assert!(client.get("bigger", None).await.unwrap().kvs().is_empty());
    assert!(client.get("huge", None).await.unwrap().kvs().is_empty());
    assert_still_serves(cluster.member_mut(0), 2).await;
}

#[tokio::test]
async fn max_request_bytes_flag_is_honoured_across_restarts() {
    let mut cluster = Cluster::init(MemberOptions::default().max_request_bytes(10_000));
    let mut client = cluster.member(0).client().await;
    client
        .put("small", value_of(5_000), None)
        .await
        .expect("5 KB under a 10 KB limit");
    assert_grpc_error(
        client.put("large", value_of(20_000), None).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );

    cluster.member_mut(0).kill9();
    cluster.member_mut(0).restart(); // `serve --max-request-bytes 10000`
    let mut client = cluster.member(0).client().await;
    assert_grpc_error(
        client.put("large", value_of(20_000), None).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    client
        .put("small2", value_of(5_000), None)
        .await
        .expect("5 KB after restart");
    assert_still_serves(cluster.member_mut(0), 3).await;
}

fn puts(count: usize) -> Vec<TxnOp> {
    (0..count)
        .map(|i| TxnOp::put(format!("key-{i:04}"), "v", None))
        .collect()
}

#[tokio::test]
async fn txn_operation_limit_defaults_to_128() {
    let mut cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;

    let response = client
        .txn(Txn::new().and_then(puts(128)))
        .await
        .expect("128 ops");
    assert_header(response.header(), 2);
    assert_eq!(response.op_responses().len(), 128);

    assert_grpc_error(
        client.txn(Txn::new().and_then(puts(129))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    assert_grpc_error(
        client
            .txn(
                Txn::new()
                    .when([Compare::version("x", CompareOp::Equal, 1)])
                    .or_else(puts(129)),
            )
            .await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let compares: Vec<Compare> = (0..129)
        .map(|i| Compare::version(format!("key-{i:04}"), CompareOp::Greater, 0))
        .collect();
    assert_grpc_error(
        client.txn(Txn::new().when(compares)).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let gets: Vec<TxnOp> = (0..128)
        .map(|i| TxnOp::get(format!("key-{i:04}"), None))
        .collect();
    client
        .txn(Txn::new().and_then(gets))
        .await
        .expect("128 gets");

    assert!(client.get("key-0128", None).await.unwrap().kvs().is_empty());
    assert_still_serves(cluster.member_mut(0), 2).await;
}

// Multi-threaded: the client's connection task must keep running while the test thread blocks
// in `terminate()`, or the server's graceful shutdown would wait on a client that cannot answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_txn_ops_flag_is_honoured_across_restarts() {
    let mut cluster = Cluster::init(MemberOptions::default().max_txn_ops(4));
    let mut client = cluster.member(0).client().await;
    client
        .txn(Txn::new().and_then(puts(4)))
        .await
        .expect("4 ops");
    assert_grpc_error(
        client.txn(Txn::new().and_then(puts(5))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    assert!(cluster.member_mut(0).terminate().success());
    cluster.member_mut(0).restart(); // `serve --max-txn-ops 4`
    let mut client = cluster.member(0).client().await;
    assert_grpc_error(
        client.txn(Txn::new().and_then(puts(5))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    client
        .txn(Txn::new().and_then(puts(4)))
        .await
        .expect("4 ops");
    assert_still_serves(cluster.member_mut(0), 3).await;
}

#[tokio::test]
async fn a_txn_writing_one_key_twice_is_refused() {
    let mut cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    client.put("k", "v", None).await.unwrap(); // 2

    let refused: Vec<(&str, Txn)> = vec![
        (
            "the same key put twice",
            Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]),
        ),
        (
            "the same key put twice in the failure branch",
            Txn::new()
                .when([Compare::value("k", CompareOp::Equal, "nope")])
                .or_else([TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)]),
        ),
        (
            "a put inside a deleted range",
            Txn::new().and_then([
                TxnOp::delete("j", Some(DeleteOptions::new().with_range("l"))),
                TxnOp::put("k", "1", None),
            ]),
        ),
        (
            "a put in the txn and in a nested txn",
            Txn::new().and_then([
                TxnOp::put("k", "1", None),
                TxnOp::txn(Txn::new().and_then([TxnOp::put("k", "2", None)])),
            ]),
        ),
    ];
    for (what, txn) in refused {
        let result = client.txn(txn).await;
        match result {
            Err(error) => match status_of(&error) {
                Some(status) => assert_eq!(
                    (status.code(), status.message()),
                    (Code::InvalidArgument, DUPLICATE_KEY),
                    "{what}"
                ),
                None => panic!("{what}: {error:?}"),
            },
            Ok(response) => panic!("{what}: accepted: {response:?}"),
        }
    }

    // Allowed: the same key in both branches, in both branches of a nested txn, or deleted twice.
    let allowed: Vec<(&str, Txn)> = vec![
        (
            "one key in each branch",
            Txn::new()
                .when([Compare::value("k", CompareOp::Equal, "v")])
                .and_then([TxnOp::put("k", "then", None)])
                .or_else([TxnOp::put("k", "else", None)]),
        ),
        (
            "one key in each branch of a nested txn",
            Txn::new().and_then([TxnOp::txn(
                Txn::new()
                    .when([Compare::value("k", CompareOp::Equal, "then")])
                    .and_then([TxnOp::put("k", "nested-then", None)])
                    .or_else([TxnOp::put("k", "nested-else", None)]),
            )]),
        ),
        (
            "one key deleted twice",
            Txn::new().and_then([TxnOp::delete("gone", None), TxnOp::delete("gone", None)]),
        ),
    ];
    for (what, txn) in allowed {
        client
            .txn(txn)
            .await
            .unwrap_or_else(|e| panic!("{what}: refused: {e:?}"));
    }
    let response = client.get("k", None).await.unwrap();
    assert_eq!(response.kvs()[0].value(), b"nested-then");
    assert!(client.get("a", None).await.unwrap().kvs().is_empty());
    // Revisions: 3 (then), 4 (nested-then); the double delete of a missing key wrote nothing.
    assert_still_serves(cluster.member_mut(0), 4).await;
}

#[tokio::test]
async fn an_empty_key_is_refused() {
    let mut cluster = Cluster::single();
    let mut client: Client = cluster.member(0).client().await;

    assert_grpc_error(
        client.put("", "v", None).await,
        Code::InvalidArgument,
        NO_KEY,
    );
    assert_grpc_error(
        client
            .put("", "v", Some(PutOptions::new().with_prev_key()))
            .await,
        Code::InvalidArgument,
        NO_KEY,
    );
    assert_grpc_error(client.get("", None).await, Code::InvalidArgument, NO_KEY);
    assert_grpc_error(client.delete("", None).await, Code::InvalidArgument, NO_KEY);
    for op in [
        TxnOp::put("", "v", None),
        TxnOp::get("", None),
        TxnOp::delete("", None),
    ] {
        let description = format!("{op:?}");
        let result = client
            .txn(Txn::new().and_then([TxnOp::put("fine", "v", None), op]))
            .await;
        match result {
            Err(error) => assert_eq!(
                status_of(&error).map(|s| (s.code(), s.message().to_string())),
                Some((Code::InvalidArgument, NO_KEY.to_string())),
                "{description}"
            ),
            Ok(response) => panic!("{description}: accepted: {response:?}"),
        }
    }
    // etcdctl's view of the same refusal.
    let output = cluster.member(0).etcdctl().run(&["put", "", "v"]);
    output.assert_failure();
    assert_eq!(
        output.stderr_messages(),
        [format!("Error: {NO_KEY}")],
        "{output}"
    );

    assert!(client.get("fine", None).await.unwrap().kvs().is_empty());
    assert_still_serves(cluster.member_mut(0), 1).await;
}

/// A protobuf `PutRequest { key, value }`, encoded by hand.
fn put_request(key: &[u8], value: &[u8]) -> Vec<u8> {
    assert!(key.len() < 128 && value.len() < 128);
    let mut bytes = vec![0x0a, key.len() as u8];
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&[0x12, value.len() as u8]);
    bytes.extend_from_slice(value);
    bytes
}

/// Pseudo-random bytes from a fixed seed (xorshift), so a failure reproduces.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// Opens an authenticated HTTP/2 connection, sends `call` on stream 1 and returns how the
/// server ended it.
async fn exchange(member: &Member, call: Vec<u8>) -> StreamEnd {
    let stream = tls_connect(member.client_addr(), identity_config(&member.admin()))
        .await
        .expect("mutual TLS handshake");
    let mut h2 = H2::start(stream).await.expect("HTTP/2 preface");
    h2.send(&call).await.expect("sending the call");
    h2.await_stream_end(1).await
}

fn unary_call(member: &Member, path: &str, body: &[u8]) -> Vec<u8> {
    let mut call = grpc_call_headers(1, &member.client_addr().to_string(), path);
    call.extend(frame(DATA, END_STREAM, 1, body));
    call
}

#[tokio::test]
async fn hostile_bytes_on_an_authenticated_connection_do_not_hurt_the_member() {
    let mut cluster = Cluster::single();
    let member = cluster.member(0);
    const PUT: &str = "/etcdserverpb.KV/Put";

    // Control: a well-formed call made by hand is answered with one response message, so the
    // refusals below are refusals and not a broken test client.
    let end = exchange(
        member,
        unary_call(member, PUT, &grpc_frame(&put_request(b"raw", b"ok"))),
    )
    .await;
    assert!(
        matches!(end, StreamEnd::Ended { data_frames: 1 }),
        "a hand-made Put should succeed: {end:?}"
    );

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a message that is not protobuf",
            unary_call(member, PUT, &grpc_frame(&[0xff; 16])),
        ),
        (
            "random bytes as the message",
            unary_call(member, PUT, &grpc_frame(&noise(4096, 0x5eed))),
        ),
        (
            "a length prefix of 4 GiB with 10 bytes of body",
            unary_call(member, PUT, &grpc_message(false, 0xffff_fff0, &[0u8; 10])),
        ),
        (
            "a length prefix longer than the body",
            unary_call(
                member,
                PUT,
                &grpc_message(false, 100, &put_request(b"cut", b"short")),
            ),
        ),
        (
            "a truncated length prefix",
            unary_call(member, PUT, &[0, 0, 0]),
        ),
        (
            "the compressed flag without an encoding",
            unary_call(member, PUT, &{
                let body = put_request(b"zip", b"zip");
                grpc_message(true, body.len() as u32, &body)
            }),
        ),
        (
            "an unknown method",
            unary_call(
                member,
                "/etcdserverpb.KV/Explode",
                &grpc_frame(&put_request(b"x", b"y")),
            ),
        ),
        (
            "an unknown service",
            unary_call(member, "/no.Such/Service", &grpc_frame(&[])),
        ),
        (
            "a header block referring to a missing HPACK table entry",
            frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &[0xff, 0xff, 0xff, 0x0f],
            ),
        ),
    ];
    for (what, call) in cases {
        let end = exchange(member, call).await;
        assert_eq!(
            end.data_frames(),
            0,
            "{what}: the server answered with a response message: {end:?}"
        );
    }

    // A 2 GiB promise, then the client vanishes mid-message.
    {
        let stream = tls_connect(member.client_addr(), identity_config(&member.admin()))
            .await
            .expect("mutual TLS handshake");
        let mut h2 = H2::start(stream).await.expect("HTTP/2 preface");
        let mut call = grpc_call_headers(1, &member.client_addr().to_string(), PUT);
        call.extend(frame(
            DATA,
            0,
            1,
            &grpc_message(false, 0x7fff_ffff, &noise(1000, 7)),
        ));
        h2.send(&call).await.expect("sending");
        drop(h2);
    }

    // Not HTTP/2 at all after the handshake.
    let mut stream = tls_connect(member.client_addr(), identity_config(&member.admin()))
        .await
        .expect("mutual TLS handshake");
    let reaction = write_then_read_to_end(&mut stream, &noise(64 * 1024, 42)).await;
    drop(reaction);

    // Nothing the hostile calls carried was written: only the control put (revision 2).
    let mut client = cluster.member(0).client().await;
    for key in ["cut", "zip", "x"] {
        assert!(
            client.get(key, None).await.unwrap().kvs().is_empty(),
            "{key} must not exist"
        );
    }
    assert_eq!(
        client.get("raw", None).await.unwrap().kvs()[0].value(),
        b"ok"
    );
    assert_still_serves(cluster.member_mut(0), 2).await;
}
