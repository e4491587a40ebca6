//! Crash points: a test kills the bus at one named step of its housekeeping
//! (`--test-crash-at STEP`), to prove that a restart finds nothing referenced missing and a
//! log that checks out. The process aborts there, as a SIGKILL would stop it: nothing is
//! flushed or cleaned up.
//!
//! The steps, in the order a pass reaches them: `checkpoint-written` (a segment's checkpoint
//! is on disk, nothing truncated yet), `header-written` (the new first segment names its
//! checkpoint, older segments still there), `segments-removed` (before old checkpoints go),
//! `blobs-doomed` (due content reported absent, nothing removed), `pack-copied` (the
//! live records of the packs being collected moved to the newest and made durable, the old
//! packs not deleted), `blobs-removed` (before the
//! pending list is saved).

use std::sync::OnceLock;

static ARMED: OnceLock<String> = OnceLock::new();

/// The steps a test may name.
pub const STEPS: &[&str] = &[
    "checkpoint-written",
    "header-written",
    "segments-removed",
    "blobs-doomed",
    "pack-copied",
    "blobs-removed",
];

/// Arms the crash at `step` for this process (once).
pub fn arm(step: &str) -> Result<(), String> {
    if !STEPS.contains(&step) {
        return Err(format!(
            "unknown crash step {step:?}; one of: {}",
            STEPS.join(", ")
        ));
    }
    let _ = ARMED.set(step.to_owned());
    Ok(())
}

/// Aborts the process if the crash was armed at `step`.
pub fn point(step: &str) {
    if ARMED.get().is_some_and(|armed| armed == step) {
        eprintln!("crash point {step}: aborting");
        std::process::abort();
    }
}
