//! The server commands as an operator meets them: `bulwark init` creates a member and prints a
//! working etcdctl command line, refuses to overwrite one; `bulwark serve` restarts a member and
//! refuses a directory without one; SIGTERM and SIGINT stop it cleanly; private keys are private;
//! a member runs without transparent huge pages.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{free_port, loopback, run_bounded, run_bulwark, temp_dir, Cluster, COMMAND_TIMEOUT};

/// `bulwark init` on `dir` with fresh ports, expected to exit (it refuses).
fn init_expecting_refusal(dir: &Path) -> common::Output {
    let output = run_bulwark(&[
        "init".to_string(),
        "--data-dir".to_string(),
        dir.display().to_string(),
        "--listen-client".to_string(),
        loopback(free_port()).to_string(),
        "--listen-peer".to_string(),
        loopback(free_port()).to_string(),
    ]);
    output.assert_failure();
    assert!(
        !output.stderr.trim().is_empty(),
        "a refusal must say why on stderr:\n{output}"
    );
    output
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn snapshot(dir: &Path, names: &[&str]) -> Vec<Vec<u8>> {
    names
        .iter()
        .map(|name| std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

const IDENTITY_FILES: &[&str] = &[
    "admin/ca.crt",
    "admin/client.crt",
    "admin/client.key",
    "pki/ca.key",
];

#[test]
fn init_refuses_a_directory_that_holds_a_member() {
    let mut cluster = Cluster::single();
    let dir = cluster.member(0).data_dir().to_path_buf();
    let etcdctl = cluster.member(0).etcdctl();
    etcdctl.run(&["put", "k", "before"]).assert_success();
    let before = snapshot(&dir, IDENTITY_FILES);

    // While the member runs...
    let output = init_expecting_refusal(&dir);
    assert!(
        output.stderr.contains(&dir.display().to_string()),
        "the message names the directory:\n{output}"
    );
    assert_eq!(
        snapshot(&dir, IDENTITY_FILES),
        before,
        "nothing was overwritten"
    );
    assert_eq!(
        etcdctl
            .run(&["get", "k", "--print-value-only"])
            .assert_success()
            .stdout,
        "before\n",
        "the running member is undisturbed"
    );

    // ...and while it is stopped.
    assert!(cluster.member_mut(0).terminate().success());
    init_expecting_refusal(&dir);
    assert_eq!(
        snapshot(&dir, IDENTITY_FILES),
        before,
        "nothing was overwritten"
    );
    cluster.member_mut(0).restart();
    assert_eq!(
        etcdctl
            .run(&["get", "k", "--print-value-only"])
            .assert_success()
            .stdout,
        "before\n",
        "the member and its data survive the refused init"
    );
}

#[test]
fn init_refuses_a_directory_with_other_files() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("precious.txt"), "not Bulwark's").unwrap();
    init_expecting_refusal(&data);
    assert_eq!(
        std::fs::read_to_string(data.join("precious.txt")).unwrap(),
        "not Bulwark's"
    );
    assert!(!data.join("admin").exists() && !data.join("pki").exists());
}

#[test]
fn serve_refuses_an_empty_or_missing_directory() {
    let dir = temp_dir();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = dir.path().join("missing");
    for data in [&empty, &missing] {
        let output = run_bulwark(&["serve", "--data-dir", &data.display().to_string()]);
        output.assert_failure();
        for hint in ["bulwark init", "bulwark join"] {
            assert!(
                output.stderr.contains(hint),
                "the message must point to `{hint}`:\n{output}"
            );
        }
        assert!(
            !data.join("member.toml").exists(),
            "serve must not create a member"
        );
    }
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "serve leaves an empty directory empty"
    );
}

#[test]
fn serve_refuses_a_request_size_limit_its_log_could_not_hold() {
    // Every Raft log entry holds at most one request of this size plus a batch of small ones;
    // the log stores no value over 256 MiB, so the limit is capped well below that.
    let dir = temp_dir();
    let data = dir.path().display().to_string();
    let output = run_bulwark(&[
        "serve",
        "--data-dir",
        &data,
        "--max-request-bytes",
        &(64 * 1024 * 1024 + 1).to_string(),
    ]);
    output.assert_failure();
    assert!(
        output.stderr.contains("--max-request-bytes"),
        "the refusal must name the flag:\n{output}"
    );
}

#[test]
fn serve_refuses_a_member_that_is_already_running() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    member.etcdctl().run(&["put", "k", "v"]).assert_success();
    let output = run_bulwark(&[
        "serve",
        "--data-dir",
        &member.data_dir().display().to_string(),
    ]);
    output.assert_failure();
    assert_eq!(
        member
            .etcdctl()
            .run(&["get", "k", "--print-value-only"])
            .assert_success()
            .stdout,
        "v\n",
        "the running member is undisturbed"
    );
}

/// The harness sends SIGTERM as soon as it reads the "serving clients" line; the member must
/// already catch it then (CI once saw a member killed by the default action in that gap).
#[test]
fn a_member_stopped_the_moment_it_says_it_serves_exits_cleanly() {
    let mut cluster = Cluster::single();
    for round in 0..5 {
        let status = cluster.member_mut(0).terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: clean exit 0, got {status}"
        );
        cluster.member_mut(0).restart();
    }
}

/// A serving member runs without transparent huge pages (its heap's page faults would zero 2 MiB
/// each; see `server::disable_transparent_huge_pages`): one started by `init`, then by `serve`.
/// Meaningless where this test process has them off already (inherited, or a kernel without the
/// `THP_enabled` line), so it says so and checks nothing there.
#[test]
fn a_member_runs_without_transparent_huge_pages() {
    let thp_enabled = |pid: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("THP_enabled:"))
            .map(|value| value.trim() == "1")
    };
    if thp_enabled("self") != Some(true) {
        eprintln!("skipped: this process already runs without transparent huge pages");
        return;
    }
    let mut cluster = Cluster::single();
    for round in 0..2 {
        if round > 0 {
            cluster.member_mut(0).terminate();
            cluster.member_mut(0).restart();
        }
        let pid = cluster.pids()[0];
        assert_eq!(
            thp_enabled(&pid.to_string()),
            Some(false),
            "round {round}: member {pid} runs with transparent huge pages"
        );
    }
}

#[test]
fn sigterm_and_sigint_stop_a_member_cleanly() {
    let mut cluster = Cluster::single();
    cluster
        .member(0)
        .etcdctl()
        .run(&["put", "k", "v1"])
        .assert_success();
    let status = cluster.member_mut(0).terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM: clean exit 0, got {status}"
    );

    cluster.member_mut(0).restart();
    cluster
        .member(0)
        .etcdctl()
        .run(&["put", "k", "v2"])
        .assert_success();
    let status = cluster.member_mut(0).interrupt();
    assert_eq!(status.code(), Some(0), "SIGINT: clean exit 0, got {status}");

    cluster.member_mut(0).restart();
    let output = cluster.member(0).etcdctl().run(&["get", "k", "-w", "json"]);
    let json = output.assert_success().json();
    assert_eq!(json["kvs"][0]["value"], "djI=", "v2 survived: {json}");
    assert_eq!(json["kvs"][0]["version"], 2, "{json}");
    assert_eq!(json["header"]["revision"], 3, "{json}");
}

#[test]
fn init_writes_the_admin_identity_and_keeps_private_keys_private() {
    let cluster = Cluster::single();
    let dir = cluster.member(0).data_dir();
    for name in IDENTITY_FILES {
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{name} must exist: {e}"));
        assert!(text.starts_with("-----BEGIN "), "{name} is PEM");
    }
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&dir.join("pki/ca.key")),
        0o600,
        "the CA key is readable by its owner only"
    );
    let keys: Vec<PathBuf> = files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    assert!(keys.len() >= 2, "at least ca.key and client.key: {keys:?}");
    for key in keys {
        assert_eq!(
            mode(&key) & 0o077,
            0,
            "{} is accessible to group or others ({:o})",
            key.display(),
            mode(&key)
        );
    }
}

/// The `etcdctl ...` command a member prints, as its words.
fn printed_etcdctl_command(stdout: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find(|line| line.contains("etcdctl --endpoints="))
        .unwrap_or_else(|| panic!("no etcdctl command line in:\n{stdout}"));
    let command = &line[line.find("etcdctl --endpoints=").unwrap()..];
    command.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_printed_etcdctl_command_line_works() {
    let mut cluster = Cluster::single();
    let member = cluster.member(0);
    let dir = member.data_dir().display().to_string();
    let expected = format!(
        "etcdctl --endpoints={} --cacert={dir}/admin/ca.crt --cert={dir}/admin/client.crt --key={dir}/admin/client.key",
        member.endpoint()
    );
    let stdout = member.stdout();
    assert!(
        stdout.lines().any(|line| line.ends_with(&expected)),
        "init prints `{expected}`:\n{stdout}"
    );

    let run = |words: &[String], extra: &[&str]| {
        let mut command = Command::new(&words[0]);
        command
            .env("ETCDCTL_API", "3")
            .args(&words[1..])
            .args(extra);
        run_bounded(command, None, COMMAND_TIMEOUT)
    };
    let words = printed_etcdctl_command(&stdout);
    assert_eq!(
        run(&words, &["put", "greeting", "hello"])
            .assert_success()
            .stdout,
        "OK\n"
    );
    assert_eq!(
        run(&words, &["get", "greeting"]).assert_success().stdout,
        "greeting\nhello\n"
    );
    run(&words, &["endpoint", "health"]).assert_success();

    // `serve` prints it too, and it still works.
    assert!(cluster.member_mut(0).terminate().success());
    cluster.member_mut(0).restart();
    let words = printed_etcdctl_command(&cluster.member(0).stdout());
    assert_eq!(
        run(&words, &["get", "greeting", "--print-value-only"])
            .assert_success()
            .stdout,
        "hello\n"
    );
}

// Multi-threaded, so the client's connection task keeps answering the server (GOAWAY, PING)
// while the test thread blocks in `terminate()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_member_with_a_connected_client() {
    let mut cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    client.put("k", "v", None).await.expect("put");
    let status = cluster.member_mut(0).terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "clean exit with a client connected, got {status}"
    );
    assert!(
        client.get("k", None).await.is_err(),
        "a stopped member answers nobody"
    );
}

/// A client that completed its handshake and then went silent (hung, or cut off by the
/// network) must not keep the member from stopping: etcd stops its TLS gRPC server without
/// waiting for clients (embed/serve.go: no GracefulStop with TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_member_whose_client_went_silent() {
    use common::raw::{identity_config, tls_connect, H2};
    let mut cluster = Cluster::single();
    let member = cluster.member(0);
    let stream = tls_connect(member.client_addr(), identity_config(&member.admin()))
        .await
        .expect("mutual TLS handshake");
    let mut h2 = H2::start(stream).await.expect("HTTP/2 preface");
    h2.await_server_settings()
        .await
        .expect("the server's SETTINGS")
        .expect("a SETTINGS frame");
    // From here on the client reads and answers nothing, but keeps its socket open.
    let status = cluster.member_mut(0).terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "clean exit despite a silent client, got {status}"
    );
    drop(h2);
}
