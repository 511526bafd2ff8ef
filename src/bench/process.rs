//! The processes a benchmark run starts (Bulwark and etcd members), and what `/proc` says of
//! their memory.
//!
//! Invariants: a [`Process`] is SIGKILLed and reaped when it drops (a failed run, Ctrl-C, a
//! panic), and the kernel SIGKILLs it if the bench process itself dies without running drops
//! (`PR_SET_PDEATHSIG`). Each process writes its stdout and stderr to files in the run's
//! directory, so that a member that fails to start can be shown with its own words.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::BenchError;

/// Poll interval of the waits on a process's output.
const POLL: Duration = Duration::from_millis(20);
/// How many lines of a failed process's output an error shows.
const TAIL_LINES: usize = 30;

/// A child process with its output in `LOG_DIR/LABEL.stdout` and `.stderr`.
pub struct Process {
    label: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Process {
    /// Starts `program ARGS` with `env` added, its output in `log_dir`, stdin closed.
    pub fn spawn<S: AsRef<OsStr>>(
        program: &Path,
        args: &[S],
        env: &[(&str, &str)],
        log_dir: &Path,
        label: &str,
    ) -> Result<Process, BenchError> {
        fs::create_dir_all(log_dir).map_err(|e| BenchError::io(log_dir, e))?;
        let stdout = log_dir.join(format!("{label}.stdout"));
        let stderr = log_dir.join(format!("{label}.stderr"));
        let create = |path: &Path| File::create(path).map_err(|e| BenchError::io(path, e));
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(create(&stdout)?)
            .stderr(create(&stderr)?);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|source| BenchError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
        Ok(Process {
            label: label.to_string(),
            child,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Everything it printed on stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// The last lines of its stdout and stderr, for error messages.
    pub fn output_tail(&self) -> String {
        let tail = |path: &Path| {
            let text = read_lossy(path);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
        };
        format!(
            "--- {} ---\n{}\n--- {} ---\n{}",
            self.stdout.display(),
            tail(&self.stdout),
            self.stderr.display(),
            tail(&self.stderr)
        )
    }

    /// Waits until a stdout line starts with `prefix` and returns that line. Fails if the process
    /// exits first or nothing comes within `timeout`.
    pub async fn wait_for_line(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> Result<String, BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stdout().lines().find(|l| l.starts_with(prefix)) {
                return Ok(line.to_string());
            }
            if let Some(status) = self.exited() {
                return Err(BenchError::Exited {
                    process: self.label.clone(),
                    status,
                    output: self.output_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(BenchError::NotReady {
                    process: self.label.clone(),
                    waited: timeout,
                    output: self.output_tail(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM (a clean stop), then SIGKILL if it has not exited within `grace`; reaps it.
    pub async fn stop(mut self, grace: Duration) {
        // SAFETY: kill(2) on our own child, which is not reaped yet (we hold its `Child`).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while self.exited().is_none() && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        // Drop kills it if it is still there.
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child gets SIGKILL if the thread that started it dies before it (the bench killed, or a
/// crash), so no member outlives a run. Members are spawned from the thread that runs the bench
/// future, which lives as long as the run, never from a short-lived blocking-pool thread.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// A loopback port nothing listens on now: bind port 0, read it, close it. Ports handed out
/// before in this run are never handed out again, so the members of one run cannot collide.
pub fn free_port() -> Result<u16, BenchError> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| BenchError::io(Path::new("127.0.0.1:0"), e))?;
        let port = listener
            .local_addr()
            .map_err(|e| BenchError::io(Path::new("127.0.0.1:0"), e))?
            .port();
        drop(listener);
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            return Ok(port);
        }
    }
    Err(BenchError::NoFreePort)
}

/// One member's resident memory as the kernel counts it, in MiB.
#[derive(Debug, Clone, Serialize)]
pub struct MemberMemory {
    pub member: String,
    pub pid: u32,
    /// `VmHWM`: the peak since the last [`reset_peak_memory`] (or since start).
    pub peak_rss_mib: f64,
    /// `VmRSS`: now.
    pub rss_mib: f64,
}

/// Reads `VmHWM` and `VmRSS` of `pid`; `None` if it is gone.
pub fn memory_of(member: &str, pid: u32) -> Option<MemberMemory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib as f64 / 1024.0)
    };
    Some(MemberMemory {
        member: member.to_string(),
        pid,
        peak_rss_mib: field("VmHWM:")?,
        rss_mib: field("VmRSS:")?,
    })
}

/// Resets `VmHWM` of `pid` to its current RSS (writing 5 to `/proc/PID/clear_refs`, Linux 4.0+),
/// so that the peak read after a row is that row's. Best effort: on failure the peak stays the
/// peak since start, which is never lower.
pub fn reset_peak_memory(pid: u32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), b"5");
}

/// CPU time (user + system) `pid` has used since it started; `None` if it is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its closing ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5); `fields[0]` is field 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf(3) reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|t| *t > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}
