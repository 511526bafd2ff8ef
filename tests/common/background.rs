//! [`Background`]: a command left running while the test goes on (a lock holder, a lock waiter,
//! a keep-alive), its stdout and stderr collected as it prints.
//!
//! It runs in a process group of its own, so that killing it also kills what it started
//! (`bulwark lock NAME -- sleep ...`): the group is SIGKILLed and the process reaped on drop, even
//! on a panic, and the process dies with the test thread that started it (`PR_SET_PDEATHSIG`).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{die_with_parent, Output, POLL};

/// A running command and what it printed so far.
pub struct Background {
    child: Child,
    /// Set once the process has exited and been reaped.
    status: Option<ExitStatus>,
    command: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Background {
    /// Starts `command` (stdin closed, stdout and stderr collected) in its own process group.
    pub fn spawn(mut command: Command) -> Background {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        die_with_parent(&mut command);
        let description = format!("{command:?}");
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(
                Box::new(child.stdout.take().expect("stdout pipe")),
                stdout.clone(),
            ),
            collect(
                Box::new(child.stderr.take().expect("stderr pipe")),
                stderr.clone(),
            ),
        ];
        Background {
            child,
            status: None,
            command: description,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Whether the process still runs (reaps it, and kills what is left of its group, if it
    /// exited).
    pub fn is_running(&mut self) -> bool {
        if self.status.is_none() {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                self.kill_group();
            }
        }
        self.status.is_none()
    }

    /// Waits until stdout contains `text`. Panics, with everything printed, if the process exits
    /// first or `timeout` passes.
    #[track_caller]
    pub fn wait_for_stdout(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stdout().contains(text) {
            assert!(
                self.is_running(),
                "exited before printing {text:?}:\n{}",
                self.describe()
            );
            assert!(
                Instant::now() < deadline,
                "did not print {text:?} within {timeout:?}:\n{}",
                self.describe()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the process to exit on its own and returns what it printed. Panics (after
    /// killing it) if it still runs after `timeout`.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                self.kill9();
                panic!(
                    "still running after {timeout:?}, killed:\n{}",
                    self.describe()
                );
            }
            std::thread::sleep(POLL);
        }
        // What it printed just before exiting may still be in the pipes: read it all.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.output()
    }

    /// SIGKILL to the process and everything in its group (a crash), then reaps it.
    pub fn kill9(&mut self) {
        if self.status.is_none() {
            self.kill_group();
            self.status = Some(self.child.wait().expect("waiting for a killed process"));
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// The command line, its exit code (`None` while running or when a signal ended it) and
    /// what it printed so far.
    pub fn output(&self) -> Output {
        Output {
            command: self.command.clone(),
            stdout: self.stdout(),
            stderr: self.stderr(),
            code: self.status.and_then(|status| status.code()),
        }
    }

    fn describe(&self) -> String {
        self.output().to_string()
    }

    fn kill_group(&self) {
        // SAFETY: kill(2) on the process group this struct's child leads (it was started with
        // `process_group(0)`, so the group id is its pid).
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
    }
}

/// Appends everything `pipe` yields to `into`, on a thread of its own.
fn collect(mut pipe: Box<dyn Read + Send>, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buffer) {
            if n == 0 {
                return;
            }
            into.lock().unwrap().extend_from_slice(&buffer[..n]);
        }
    })
}
