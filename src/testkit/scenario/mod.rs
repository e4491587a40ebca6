//! Scenario files: long or periodic workloads described in JSON, as pytest-orchestration
//! does, run with real processes, and judged from the event log.
//!
//! - [`format`](mod@format): the file format and its validation (`filesync scenario check`).
//! - [`actions`]: the actions, each a named function of the kit.
//! - [`run`](mod@run): the runner (periodic actions, kill switch, teardown) and the result reporter.
//!
//! The format is documented field by field in `docs/SCENARIOS.md`, with a JSON Schema in
//! `fixtures/scenarios/scenario.schema.json`.

pub mod actions;
pub mod format;
pub mod run;

pub use format::{load, load_all, parse, parse_all, Scenario, ScenarioError};
pub use run::{run, run_with, RunOptions, ScenarioReport};

use std::path::{Path, PathBuf};

/// Every `*.json` scenario in `dir` (the schema excluded), sorted.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p.to_string_lossy().ends_with(".schema.json")
        })
        .collect();
    files.sort();
    Ok(files)
}
