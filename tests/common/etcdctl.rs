//! etcdctl 3.4 (Debian's `etcd-client` package) as a test client: the v3 API, one endpoint list,
//! optional TLS flags, bounded runs.

use std::process::Command;
use std::time::Duration;

use super::{run_bounded, Background, Output, TlsFiles, COMMAND_TIMEOUT};

/// An etcdctl invocation template: endpoints and TLS flags; each `run` adds a command.
#[derive(Debug, Clone)]
pub struct Etcdctl {
    endpoints: String,
    cacert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    dial_timeout: Duration,
    command_timeout: Duration,
}

impl Etcdctl {
    /// etcdctl against `endpoints` (comma-separated URLs), without TLS flags.
    pub fn new(endpoints: &str) -> Etcdctl {
        Etcdctl {
            endpoints: endpoints.to_string(),
            cacert: None,
            cert: None,
            key: None,
            dial_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(20),
        }
    }

    /// `--cacert`, `--cert` and `--key` from one identity.
    pub fn tls(self, files: &TlsFiles) -> Etcdctl {
        self.cacert(&files.ca.display().to_string())
            .cert(&files.cert.display().to_string())
            .key(&files.key.display().to_string())
    }
    pub fn cacert(mut self, path: &str) -> Etcdctl {
        self.cacert = Some(path.to_string());
        self
    }
    pub fn cert(mut self, path: &str) -> Etcdctl {
        self.cert = Some(path.to_string());
        self
    }
    pub fn key(mut self, path: &str) -> Etcdctl {
        self.key = Some(path.to_string());
        self
    }
    /// etcdctl's `--dial-timeout` and `--command-timeout`. A client the server refuses retries
    /// until the command timeout, so tests of refusals shorten both.
    pub fn timeouts(mut self, dial: Duration, command: Duration) -> Etcdctl {
        self.dial_timeout = dial;
        self.command_timeout = command;
        self
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    /// Runs `etcdctl FLAGS ARGS` with `stdin` as its standard input (e.g. a `txn` script).
    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run_bounded(
            self.command(args),
            stdin.map(str::as_bytes),
            COMMAND_TIMEOUT,
        )
    }

    /// Starts `etcdctl FLAGS ARGS` and leaves it running (a lock holder or waiter, a watch).
    pub fn spawn(&self, args: &[&str]) -> Background {
        Background::spawn(self.command(args))
    }

    /// The `etcdctl FLAGS ARGS` command line.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("etcdctl");
        // Nothing from the caller's environment may change what etcdctl does.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCDCTL_") {
                command.env_remove(name);
            }
        }
        command.env("ETCDCTL_API", "3");
        command.arg(format!("--endpoints={}", self.endpoints));
        for (flag, value) in [
            ("--cacert", &self.cacert),
            ("--cert", &self.cert),
            ("--key", &self.key),
        ] {
            if let Some(value) = value {
                command.arg(format!("{flag}={value}"));
            }
        }
        command.arg(format!(
            "--dial-timeout={}ms",
            self.dial_timeout.as_millis()
        ));
        command.arg(format!(
            "--command-timeout={}ms",
            self.command_timeout.as_millis()
        ));
        command.args(args);
        command
    }
}

/// etcdctl's version line, e.g. `etcdctl version: 3.4.23`.
pub fn version() -> String {
    let mut command = Command::new("etcdctl");
    command.env("ETCDCTL_API", "3").arg("version");
    let output = run_bounded(command, None, COMMAND_TIMEOUT);
    output.assert_success();
    output.stdout.lines().next().unwrap_or_default().to_string()
}
