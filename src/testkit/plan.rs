//! `Plan`: Flumotion's integration plans, done right. Spawn processes, wait for the exits you
//! anticipated, kill them, crash them; every exit must be anticipated.
//!
//! - Each process's stdout and stderr go to `<test dir>/logs/<name>`; a name used again gets
//!   a number (`slave`, `slave-1`, `slave-2`), so every run of every process keeps its log.
//! - A process that exits when no step expects it fails the test at the next step, with its
//!   name, its exit status and the tail of its log.
//! - The test directory is removed when the plan is dropped normally, and kept (its path
//!   printed) when the test panics; every process still running is killed on drop, so no
//!   test leaves orphans behind, even when it panics.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use super::process::{Proc, TestDir};

/// How long `kill` waits after SIGTERM before sending SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

/// A process in a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId(usize);

/// The exit a step anticipates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit code 0.
    Success,
    /// This exit code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Whatever happens.
    Any,
}

impl Exit {
    fn accepts(self, status: ExitStatus) -> bool {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Exit::Success => status.success(),
            Exit::Code(code) => status.code() == Some(code),
            Exit::Signal(signal) => status.signal() == Some(signal),
            Exit::Any => true,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Success => f.write_str("exit 0"),
            Exit::Code(code) => write!(f, "exit {code}"),
            Exit::Signal(signal) => write!(f, "signal {signal}"),
            Exit::Any => f.write_str("any exit"),
        }
    }
}

/// A step that could not be carried out, or an exit nobody anticipated.
#[derive(Debug, Clone)]
pub struct PlanError {
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PlanError {}

struct Slot {
    proc: Proc,
    /// An exit was anticipated (waited for, killed, crashed): no complaint when it ends.
    anticipated: bool,
}

/// Processes under a plan, in one test directory.
pub struct Plan {
    dir: TestDir,
    slots: Vec<Slot>,
    runs: HashMap<String, usize>,
}

impl Plan {
    /// A plan with a fresh test directory named after `label`.
    pub fn new(label: &str) -> Result<Plan, PlanError> {
        let dir = TestDir::new(label).map_err(|err| PlanError {
            message: format!("cannot create a test directory: {err}"),
        })?;
        Ok(Plan {
            dir,
            slots: Vec::new(),
            runs: HashMap::new(),
        })
    }

    /// The test directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where each process's output goes.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Keeps the test directory after the plan is dropped, and returns its path.
    pub fn keep(&mut self) -> PathBuf {
        self.dir.keep()
    }

    /// Fails if a process exited without a step anticipating it.
    pub fn check(&mut self) -> Result<(), PlanError> {
        for slot in &mut self.slots {
            if slot.anticipated {
                continue;
            }
            if let Some(status) = slot.proc.try_status() {
                slot.anticipated = true;
                return Err(PlanError {
                    message: format!(
                        "{} exited unexpectedly ({status}); the last lines of logs/{}:\n{}",
                        slot.proc.name,
                        slot.proc.name,
                        slot.proc.stderr_tail(20)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Starts `command` as `name` (numbered if the name was used before).
    pub fn spawn(&mut self, name: &str, command: Command) -> Result<ProcId, PlanError> {
        self.check()?;
        self.start(name, command)
    }

    /// Starts several processes as one step: an exit among them is judged at the next step.
    pub fn spawn_par(&mut self, commands: Vec<(&str, Command)>) -> Result<Vec<ProcId>, PlanError> {
        self.check()?;
        commands
            .into_iter()
            .map(|(name, command)| self.start(name, command))
            .collect()
    }

    fn start(&mut self, name: &str, command: Command) -> Result<ProcId, PlanError> {
        let run = self.runs.entry(name.to_owned()).or_default();
        let unique = if *run == 0 {
            name.to_owned()
        } else {
            format!("{name}-{run}")
        };
        *run += 1;
        let proc = Proc::spawn(&unique, command, &self.logs_dir()).map_err(|err| PlanError {
            message: format!("cannot start {unique}: {err}"),
        })?;
        self.slots.push(Slot {
            proc,
            anticipated: false,
        });
        Ok(ProcId(self.slots.len() - 1))
    }

    /// The process itself (to read its log, find its pid, wait for a line).
    pub fn proc(&mut self, id: ProcId) -> &mut Proc {
        &mut self.slots[id.0].proc
    }

    /// The name it was given (`slave-1`...).
    pub fn name(&self, id: ProcId) -> &str {
        &self.slots[id.0].proc.name
    }

    /// Waits for `id` to exit, which it must do with `expected` within `timeout`.
    pub fn wait(
        &mut self,
        id: ProcId,
        expected: Exit,
        timeout: Duration,
    ) -> Result<ExitStatus, PlanError> {
        self.slots[id.0].anticipated = true;
        self.check()?;
        let slot = &mut self.slots[id.0];
        let Some(status) = slot.proc.wait_timeout(timeout) else {
            return Err(PlanError {
                message: format!(
                    "{} did not exit within {timeout:?} (expected {expected}); the last lines of its log:\n{}",
                    slot.proc.name,
                    slot.proc.stderr_tail(20)
                ),
            });
        };
        if !expected.accepts(status) {
            return Err(PlanError {
                message: format!(
                    "{} ended with {status}, expected {expected}; the last lines of its log:\n{}",
                    slot.proc.name,
                    slot.proc.stderr_tail(20)
                ),
            });
        }
        Ok(status)
    }

    /// Waits for several processes; all must end as expected within `timeout`.
    pub fn wait_par(
        &mut self,
        waits: Vec<(ProcId, Exit)>,
        timeout: Duration,
    ) -> Result<Vec<ExitStatus>, PlanError> {
        for (id, _) in &waits {
            self.slots[id.0].anticipated = true;
        }
        let until = std::time::Instant::now() + timeout;
        waits
            .into_iter()
            .map(|(id, expected)| {
                self.wait(
                    id,
                    expected,
                    until.saturating_duration_since(std::time::Instant::now()),
                )
            })
            .collect()
    }

    /// SIGTERM, then SIGKILL after `KILL_GRACE`. Any exit is accepted: it was asked for.
    pub fn kill(&mut self, id: ProcId) -> Result<ExitStatus, PlanError> {
        self.slots[id.0].anticipated = true;
        self.check()?;
        let slot = &mut self.slots[id.0];
        slot.proc.terminate(KILL_GRACE).ok_or_else(|| PlanError {
            message: format!("{} could not be killed", slot.proc.name),
        })
    }

    /// Stops a process whatever became of it or of the others (a start to be tried again):
    /// SIGTERM, then SIGKILL after `KILL_GRACE`; its exit, past or to come, is anticipated.
    pub fn abandon(&mut self, id: ProcId) {
        let slot = &mut self.slots[id.0];
        slot.anticipated = true;
        let _ = slot.proc.terminate(KILL_GRACE);
    }

    /// SIGTERM and demand a clean exit (0) within `KILL_GRACE`: the agent's shutdown path.
    pub fn stop(&mut self, id: ProcId) -> Result<(), PlanError> {
        let status = self.kill(id)?;
        if status.success() {
            return Ok(());
        }
        let slot = &self.slots[id.0];
        Err(PlanError {
            message: format!(
                "{} ended with {status} on SIGTERM, expected exit 0; the last lines of its log:\n{}",
                slot.proc.name,
                slot.proc.stderr_tail(20)
            ),
        })
    }

    /// Freezes a process (SIGSTOP) or thaws it (SIGCONT): see `Proc::freeze`.
    pub fn freeze(&mut self, id: ProcId, frozen: bool) -> Result<(), PlanError> {
        self.check()?;
        self.slots[id.0].proc.freeze(frozen);
        Ok(())
    }

    /// SIGKILL: the process dies at whatever instant it is at.
    pub fn crash(&mut self, id: ProcId) -> Result<(), PlanError> {
        self.slots[id.0].anticipated = true;
        self.check()?;
        self.slots[id.0].proc.crash();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        command
    }

    #[test]
    fn an_unanticipated_exit_fails_the_next_step_with_name_status_and_log() {
        let mut plan = Plan::new("plan-unexpected").expect("plan");
        let quitter = plan
            .spawn("quitter", sh("echo 'about to fail' >&2; exit 3"))
            .expect("spawn");
        plan.proc(quitter).wait_timeout(Duration::from_secs(10));
        let err = plan
            .spawn("next", sh("sleep 5"))
            .expect_err("the exit was not anticipated");
        assert!(err.message.contains("quitter exited unexpectedly"), "{err}");
        assert!(err.message.contains("exit status: 3"), "{err}");
        assert!(err.message.contains("about to fail"), "{err}");
    }

    #[test]
    fn waits_kills_and_names_are_as_planned() {
        let mut plan = Plan::new("plan-steps").expect("plan");
        let ids = plan
            .spawn_par(vec![("echo", sh("echo one")), ("echo", sh("echo two"))])
            .expect("spawn");
        assert_eq!([plan.name(ids[0]), plan.name(ids[1])], ["echo", "echo-1"]);
        plan.wait_par(
            vec![(ids[0], Exit::Success), (ids[1], Exit::Code(0))],
            Duration::from_secs(10),
        )
        .expect("both exit 0");
        assert_eq!(
            std::fs::read_to_string(plan.logs_dir().join("echo-1")).expect("log"),
            "two\n"
        );
        let sleeper = plan.spawn("sleeper", sh("sleep 30")).expect("spawn");
        let wrong = plan
            .wait(sleeper, Exit::Success, Duration::from_millis(100))
            .expect_err("still running");
        assert!(wrong.message.contains("did not exit"), "{wrong}");
        plan.kill(sleeper).expect("killed");
        let crasher = plan.spawn("crasher", sh("sleep 30")).expect("spawn");
        plan.crash(crasher).expect("crashed");
        let failing = plan.spawn("failing", sh("exit 1")).expect("spawn");
        let err = plan
            .wait(failing, Exit::Success, Duration::from_secs(10))
            .expect_err("exit 1 is not success");
        assert!(err.message.contains("expected exit 0"), "{err}");
        plan.check().expect("every exit was anticipated");
    }
}
