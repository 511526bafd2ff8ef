//! Bulwark's own client commands (`bulwark get/put/del`): connecting through `--data-dir` or
//! explicit flags, key ranges, a table for people, `-w json` byte-compatible with etcdctl's, and
//! one-line errors with a non-zero exit.

mod common;

use common::json::shape;
use common::{free_port, run_bulwark, Cluster, Member, Output};
use serde_json::Value;

/// `bulwark ARGS` with explicit connection flags instead of `--data-dir`.
fn cli_with_flags(member: &Member, args: &[&str]) -> Output {
    let admin = member.admin();
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend([
        "--endpoints".to_string(),
        member.endpoint(),
        "--cacert".to_string(),
        admin.ca.display().to_string(),
        "--cert".to_string(),
        admin.cert.display().to_string(),
        "--key".to_string(),
        admin.key.display().to_string(),
    ]);
    run_bulwark(&all)
}

/// The value etcdctl sees for `key` (empty if absent).
fn etcdctl_value(member: &Member, key: &str) -> String {
    member
        .etcdctl()
        .run(&["get", key, "--print-value-only"])
        .assert_success()
        .stdout
        .trim_end_matches('\n')
        .to_string()
}

fn etcdctl_keys(member: &Member, prefix: &str) -> Vec<String> {
    member
        .etcdctl()
        .run(&["get", prefix, "--prefix", "--keys-only"])
        .assert_success()
        .stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[track_caller]
fn assert_one_line_error(output: &Output) {
    output.assert_failure();
    let lines: Vec<&str> = output
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "an error is one line on stderr:\n{output}");
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout on error:\n{output}"
    );
}

#[test]
fn put_get_del_through_the_data_dir() {
    let cluster = Cluster::single();
    let member = cluster.member(0);

    for (key, value) in [
        ("app/a", "1"),
        ("app/b", "2"),
        ("app/c", "3"),
        ("other", "x"),
    ] {
        member.cli(&["put", key, value]).assert_success();
        assert_eq!(etcdctl_value(member, key), value);
    }

    let output = member.cli(&["get", "app/a"]);
    output.assert_success();
    for text in ["app/a", "1"] {
        assert!(
            output.stdout.contains(text),
            "the table shows {text}:\n{output}"
        );
    }

    let output = member.cli(&["get", "app/", "--prefix"]);
    output.assert_success();
    for key in ["app/a", "app/b", "app/c"] {
        assert!(
            output.stdout.contains(key),
            "--prefix lists {key}:\n{output}"
        );
    }
    assert!(
        !output.stdout.contains("other"),
        "--prefix stops at the prefix:\n{output}"
    );

    let output = member.cli(&["get", "app/a", "app/c"]);
    output.assert_success();
    assert!(
        output.stdout.contains("app/a") && output.stdout.contains("app/b"),
        "{output}"
    );
    assert!(
        !output.stdout.contains("app/c"),
        "RANGE_END is exclusive:\n{output}"
    );

    let output = member.cli(&["get", "app/c", "--from-key"]);
    output.assert_success();
    assert!(
        output.stdout.contains("app/c") && output.stdout.contains("other"),
        "{output}"
    );
    assert!(!output.stdout.contains("app/b"), "{output}");

    // Overwrite, and see the previous value.
    let output = member.cli(&["put", "app/a", "1b", "--prev-kv"]);
    output.assert_success();
    assert!(
        output.stdout.contains('1'),
        "--prev-kv shows the old value:\n{output}"
    );
    assert_eq!(etcdctl_value(member, "app/a"), "1b");

    member.cli(&["del", "app/a"]).assert_success();
    assert_eq!(etcdctl_keys(member, "app/"), ["app/b", "app/c"]);
    let output = member.cli(&["del", "app/", "--prefix", "--prev-kv"]);
    output.assert_success();
    assert!(
        output.stdout.contains("app/b"),
        "--prev-kv shows what went:\n{output}"
    );
    assert!(etcdctl_keys(member, "app/").is_empty());
    member.cli(&["del", "a", "--from-key"]).assert_success();
    assert!(
        etcdctl_keys(member, "").is_empty(),
        "--from-key a deletes everything left"
    );
}

#[test]
fn explicit_connection_flags_and_a_fallback_endpoint() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    cli_with_flags(member, &["put", "k", "v"]).assert_success();
    let output = cli_with_flags(member, &["get", "k", "-w", "json"]);
    let json = output.assert_success().json();
    assert_eq!(json["kvs"][0]["value"], "dg==", "{json}");
    cli_with_flags(member, &["del", "k"]).assert_success();
    assert_eq!(etcdctl_value(member, "k"), "");

    // The first endpoint is dead; the second serves.
    let admin = member.admin();
    let dead = format!("https://127.0.0.1:{}", free_port());
    let output = run_bulwark(&[
        "put".to_string(),
        "k2".to_string(),
        "v2".to_string(),
        "--endpoints".to_string(),
        format!("{dead},{}", member.endpoint()),
        "--cacert".to_string(),
        admin.ca.display().to_string(),
        "--cert".to_string(),
        admin.cert.display().to_string(),
        "--key".to_string(),
        admin.key.display().to_string(),
    ]);
    output.assert_success();
    assert_eq!(etcdctl_value(member, "k2"), "v2");

    // Explicit flags win over --data-dir.
    let output = run_bulwark(&[
        "get".to_string(),
        "k2".to_string(),
        "--data-dir".to_string(),
        member.data_dir().display().to_string(),
        "--endpoints".to_string(),
        dead,
    ]);
    assert_one_line_error(&output);
}

/// `bulwark ARGS -w json` and `etcdctl ARGS -w json` on the same state print the same JSON.
#[test]
fn json_output_is_etcdctls() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    for (key, value) in [("a", "1"), ("b", "2"), ("b", "2b"), ("c", "3"), ("d", "")] {
        member.etcdctl().run(&["put", key, value]).assert_success();
    }
    // Revision 6 now; reads do not change it, so both tools see the same state.
    let reads: &[&[&str]] = &[
        &["get", "a"],
        &["get", "b"],
        &["get", "missing"],
        &["get", "d"],
        &["get", "a", "c"],
        &["get", "a", "--from-key"],
        &["get", "a", "--from-key", "--limit", "2"],
        &["get", "b", "--from-key"],
        &["get", "b", "--prefix"],
        &["get", "b", "--rev", "3"],
        &["get", "a", "--from-key", "--keys-only"],
        &[
            "get",
            "a",
            "--from-key",
            "--sort-by=MODIFY",
            "--order=DESCEND",
        ],
        &[
            "get",
            "a",
            "--from-key",
            "--sort-by=VALUE",
            "--order=ASCEND",
            "--limit",
            "3",
        ],
    ];
    for args in reads {
        let mut with_format = args.to_vec();
        with_format.extend(["-w", "json"]);
        let ours = member.cli(&with_format);
        let theirs = member.etcdctl().run(&with_format);
        assert_eq!(
            ours.assert_success().json(),
            theirs.assert_success().json(),
            "bulwark vs etcdctl for {args:?}\n{ours}\n{theirs}"
        );
    }
    let ours = member.cli(&["get", "a", "--from-key", "--count-only", "-w", "json"]);
    let json = ours.assert_success().json();
    assert_eq!(
        (&json["count"], json.get("kvs")),
        (&Value::from(4), None),
        "{json}"
    );

    // Writes: the same request through both tools on twin keys; the outputs differ only in
    // revisions.
    let pairs: &[(&[&str], &[&str])] = &[
        (&["put", "p1", "x"], &["put", "p2", "x"]),
        (
            &["put", "p1", "y", "--prev-kv"],
            &["put", "p2", "y", "--prev-kv"],
        ),
        (&["del", "p1", "--prev-kv"], &["del", "p2", "--prev-kv"]),
        (&["del", "nothing"], &["del", "nothing"]),
    ];
    for (ours_args, theirs_args) in pairs {
        let mut ours_args = ours_args.to_vec();
        ours_args.extend(["-w", "json"]);
        let mut theirs_args = theirs_args.to_vec();
        theirs_args.extend(["-w", "json"]);
        let ours = member.cli(&ours_args).assert_success().json();
        let theirs = member.etcdctl().run(&theirs_args).assert_success().json();
        assert_eq!(
            shape(&ours),
            shape(&theirs),
            "same JSON fields for {ours_args:?}\n  bulwark: {ours}\n  etcdctl: {theirs}"
        );
        for field in ["deleted", "prev_kvs", "prev_kv"] {
            let strip = |v: &Value| {
                let mut v = v[field].clone();
                if let Some(kvs) = v.as_array_mut() {
                    for kv in kvs {
                        kv.as_object_mut().map(|o| o.remove("key"));
                        kv.as_object_mut().map(|o| o.remove("create_revision"));
                        kv.as_object_mut().map(|o| o.remove("mod_revision"));
                    }
                } else if let Some(o) = v.as_object_mut() {
                    o.remove("key");
                    o.remove("create_revision");
                    o.remove("mod_revision");
                }
                v
            };
            assert_eq!(strip(&ours), strip(&theirs), "{field} of {ours_args:?}");
        }
    }
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let mut cluster = Cluster::single();
    cluster.member(0).cli(&["put", "k", "v"]).assert_success();

    let output = cluster.member(0).cli(&["get", "k", "--rev", "1000"]);
    assert_one_line_error(&output);
    assert!(
        output
            .stderr
            .contains("etcdserver: mvcc: required revision is a future revision"),
        "{output}"
    );
    let output = cluster.member(0).cli(&["put", "", "v"]);
    assert_one_line_error(&output);
    assert!(
        output.stderr.contains("etcdserver: key is not provided"),
        "{output}"
    );

    let missing = cluster.dir().join("no-such-member");
    let output = run_bulwark(&["get", "k", "--data-dir", &missing.display().to_string()]);
    assert_one_line_error(&output);

    // A stopped member.
    assert!(cluster.member_mut(0).terminate().success());
    for args in [&["get", "k"][..], &["put", "k", "v2"], &["del", "k"]] {
        let output = cluster.member(0).cli(args);
        assert_one_line_error(&output);
        let output = cli_with_flags(cluster.member(0), args);
        assert_one_line_error(&output);
    }
}

/// etcdctl (clientv3's `WithPrefix`/`WithFromKey`) turns an empty key into `\0`, so
/// `get "" --prefix` and `get "" --from-key` mean every key; Bulwark's CLI must do the same.
#[test]
fn an_empty_key_with_prefix_or_from_key_means_every_key() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    for key in ["a", "b", "c"] {
        member.etcdctl().run(&["put", key, "v"]).assert_success();
    }
    for args in [
        &["get", "", "--prefix", "-w", "json"][..],
        &["get", "", "--from-key", "-w", "json"],
        &["get", "", "--prefix", "--keys-only", "-w", "json"],
    ] {
        let ours = member.cli(args);
        let theirs = member.etcdctl().run(args);
        assert_eq!(
            ours.assert_success().json(),
            theirs.assert_success().json(),
            "bulwark vs etcdctl for {args:?}"
        );
    }
    let output = member.cli(&["del", "", "--prefix"]);
    output.assert_success();
    assert!(
        etcdctl_keys(member, "").is_empty(),
        "del \"\" --prefix deletes every key"
    );
}
