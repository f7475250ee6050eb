//! Child processes of the control plane.
//!
//! Every component is spawned from one dedicated thread that lives as long as
//! the process, with `PR_SET_PDEATHSIG=SIGKILL`: the kernel kills the child
//! when the thread that spawned it exits, so spawning from a short-lived
//! thread (a test's runtime worker) would kill the component early, while
//! spawning from a thread that never exits makes the child die exactly when
//! the whole process does, whether it returns, panics, aborts or is killed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, io};

struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<std::io::Result<Child>>,
}

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                // The sender lives in a static and is never dropped, so this
                // loop never ends; park anyway should it ever do so, because
                // this thread exiting would kill every component.
                for mut req in rx {
                    let _ = req.reply.send(req.command.spawn());
                }
                loop {
                    thread::park();
                }
            })
            // Start-up invariant: without this thread nothing can be started.
            .expect("cannot start the testenv spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `command` on the spawner thread, tied to the life of this process.
fn spawn_tied(mut command: Command) -> std::io::Result<Child> {
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only calls the
    // async-signal-safe functions prctl and getppid.
    unsafe {
        command.pre_exec(move || {
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
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| std::io::Error::other("testenv spawner lock poisoned"))?
        .send(SpawnRequest { command, reply })
        .map_err(|_| std::io::Error::other("testenv spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("testenv spawner thread is gone"))?
}

/// A running component of the control plane with its log file.
pub(crate) struct Process {
    pub name: &'static str,
    pub log: PathBuf,
    child: Child,
}

impl Process {
    /// Starts `program args...` with stdout and stderr appended to `log`.
    pub fn start(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(format!("opening the {name} log {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("opening the {name} log {}", log.display())))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child =
            spawn_tied(command).map_err(io(format!("starting {name} ({})", program.display())))?;
        Ok(Process { name, log, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The error to report when this component fails to start.
    pub fn failure(&self, reason: impl Into<String>) -> Error {
        Error::Component {
            component: self.name,
            reason: reason.into(),
            log: self.log.clone(),
            tail: log_tail(&self.log, 30),
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the process at once and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: plain syscall on a pid we own (a child not yet reaped).
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// The last `lines` lines of a log file (reads at most its last 64 KiB).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
