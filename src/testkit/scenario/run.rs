//! Running a scenario, and the result reporter: per action how often it ran and how it
//! failed; per event the latency from notify to consume, read from the log; counts by tag and
//! op; the checker's verdict; each bound of `expect` judged. Written as JSON and as a table.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::actions::{self, ActionCtx};
use super::format::{ActionSpec, Scenario, StateBound};
use crate::check::CheckOptions;
use crate::event::{Event, Tag};
use crate::state::dir_bytes;
use crate::testkit::Cluster;

/// Per action: what happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ActionReport {
    pub label: String,
    pub runs: u64,
    pub errors: u64,
    /// The first few error messages.
    pub error_messages: Vec<String>,
    pub total_ms: f64,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyStats {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl LatencyStats {
    fn of(mut samples: Vec<f64>) -> LatencyStats {
        if samples.is_empty() {
            return LatencyStats::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
        LatencyStats {
            count: samples.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// The outcome of one scenario run.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub duration_s: f64,
    pub slaves: usize,
    pub passed: bool,
    /// Each expectation that did not hold, as a sentence.
    pub failures: Vec<String>,
    pub actions: Vec<ActionReport>,
    /// Notify to consume, over every consume in the log.
    pub latency_ms: LatencyStats,
    pub latency_ms_by_op: BTreeMap<String, LatencyStats>,
    /// Events by tag, and by `tag.op`.
    pub counts: BTreeMap<String, u64>,
    /// The checker's violations (empty when the log and directories check out).
    pub violations: Vec<String>,
    /// Kept when the run failed (or with `--keep`): the directories, logs and timeline.html.
    pub kept_at: Option<PathBuf>,
    /// The bus's state directory against the master tree, sampled through the run.
    pub state: Option<StateStats>,
}

/// The bus's state directory's size against the master tree's, sampled every
/// `SIZE_EVERY` (the bytes of their files).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StateStats {
    pub samples: usize,
    /// The largest sample of the second half of the run (and the end), and the tree then.
    pub max_state_bytes: u64,
    pub tree_bytes_at_max: u64,
    /// At the end, once the cluster settled.
    pub final_state_bytes: u64,
    pub final_tree_bytes: u64,
    /// Every sample of the run: seconds since the start, state bytes, tree bytes (at most
    /// `SERIES` of them, evenly spread), to see how the state grew and whether it levelled.
    pub series: Vec<(f64, u64, u64)>,
    /// Beside each sample of `series`: the bytes the master had uploaded by then (the sum of
    /// the notifies' `uploaded`), so that the state can be set against the new content of
    /// any stretch of the run (a history window's worth, say).
    pub uploaded: Vec<u64>,
}

/// How many samples `StateStats::series` keeps.
const SERIES: usize = 60;

const SIZE_EVERY: Duration = Duration::from_millis(250);

/// Samples the state and tree sizes on a thread of their own until `finish`.
struct SizeWatch {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<(f64, u64, u64)>>,
    /// When the first sample was taken, to place the log's events among the samples.
    began: SystemTime,
    paths: (PathBuf, PathBuf),
}

/// The state's and the tree's bytes now, read off the runtime's threads.
async fn sizes((state, tree): &(PathBuf, PathBuf)) -> Option<(u64, u64)> {
    let (state, tree) = (state.clone(), tree.clone());
    tokio::task::spawn_blocking(move || (dir_bytes(&state), dir_bytes(&tree)))
        .await
        .ok()
}

impl SizeWatch {
    fn start(state: PathBuf, tree: PathBuf) -> SizeWatch {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let paths = (state, tree);
        let watched = paths.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            loop {
                let stopped = token.is_cancelled();
                if let Some((s, t)) = sizes(&watched).await {
                    samples.push((started.elapsed().as_secs_f64(), s, t));
                }
                if stopped {
                    return samples;
                }
                tokio::select! {
                    // One more sample, as things are when the run is judged.
                    _ = token.cancelled() => {}
                    _ = tokio::time::sleep(SIZE_EVERY) => {}
                }
            }
        });
        SizeWatch {
            stop,
            task,
            began: SystemTime::now(),
            paths,
        }
    }

    /// Waits until the state is within `bound` for the tree, or `patience` has passed.
    async fn until_within(&self, bound: StateBound, patience: Duration) {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            match sizes(&self.paths).await {
                Some((state, tree)) if bound.allows(state, tree) => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Every sample taken (the last one now), and when the first was.
    async fn finish(self) -> (Vec<(f64, u64, u64)>, SystemTime) {
        self.stop.cancel();
        (self.task.await.unwrap_or_default(), self.began)
    }
}

/// The bytes uploaded by each of `times` (seconds since `began`), from the notifies'
/// `uploaded` and `time`.
fn uploaded_by(events: &[Event], began: SystemTime, times: &[f64]) -> Vec<u64> {
    let mut uploads: Vec<(f64, u64)> = events
        .iter()
        .filter(|e| e.tag() == Some(Tag::Notify))
        .filter_map(|e| {
            let at = humantime::parse_rfc3339_weak(&e.time).ok()?;
            let since = at.duration_since(began).map_or(0.0, |d| d.as_secs_f64());
            Some((since, e.body.uploaded?))
        })
        .collect();
    uploads.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0;
    let mut next = uploads.iter().peekable();
    times
        .iter()
        .map(|&t| {
            while let Some((_, bytes)) = next.next_if(|(at, _)| *at <= t) {
                total += bytes;
            }
            total
        })
        .collect()
}

/// `expect.state`: every sample from `second_half` seconds on (and the last, taken once
/// the cluster settled) within the bound; the largest of those is reported.
fn judge_state(
    scenario: &Scenario,
    (all, began): (Vec<(f64, u64, u64)>, SystemTime),
    events: &[Event],
    second_half: f64,
    report: &mut ScenarioReport,
) {
    let Some(&(_, final_state, final_tree)) = all.last() else {
        return;
    };
    let step = all.len().div_ceil(SERIES).max(1);
    let mut stats = StateStats {
        samples: all.len(),
        final_state_bytes: final_state,
        final_tree_bytes: final_tree,
        series: all.iter().step_by(step).copied().collect(),
        ..StateStats::default()
    };
    let times: Vec<f64> = stats.series.iter().map(|(t, _, _)| *t).collect();
    stats.uploaded = uploaded_by(events, began, &times);
    let mut samples: Vec<(f64, u64, u64)> = all
        .iter()
        .copied()
        .filter(|(t, _, _)| *t >= second_half)
        .collect();
    samples.extend(all.last().copied());
    for &(_, state, tree) in &samples {
        if state >= stats.max_state_bytes {
            stats.max_state_bytes = state;
            stats.tree_bytes_at_max = tree;
        }
    }
    if let Some(bound) = scenario.expect.state {
        let over = samples
            .iter()
            .find(|(_, state, tree)| !bound.allows(*state, *tree));
        if let Some((t, state, tree)) = over {
            report.failures.push(format!(
                "the bus's state was {:.1} MiB at {t:.1} s, over {}x the tree ({:.1} MiB) + {} MiB",
                *state as f64 / (1 << 20) as f64,
                bound.max_ratio,
                *tree as f64 / (1 << 20) as f64,
                bound.plus_mib
            ));
            report.passed = false;
        }
    }
    report.state = Some(stats);
}

type Stats = Arc<std::sync::Mutex<Vec<ActionReport>>>;

async fn run_one(ctx: &ActionCtx, stats: &Stats, idx: usize, spec: &ActionSpec, n: u64) {
    let started = Instant::now();
    let result = actions::run(ctx, &spec.action, &spec.params, n).await;
    let mut stats = stats.lock().unwrap_or_else(|p| p.into_inner());
    let report = &mut stats[idx];
    report.runs += 1;
    report.total_ms += started.elapsed().as_secs_f64() * 1000.0;
    if let Err(message) = result {
        report.errors += 1;
        if report.error_messages.len() < 5 {
            report.error_messages.push(message);
        }
    }
}

/// Runs `scenario` with real processes in a temporary directory. `duration` overrides the
/// file's `duration_s` (a short run in tests).
pub async fn run(
    scenario: &Scenario,
    bin: &Path,
    duration: Option<f64>,
) -> Result<ScenarioReport, String> {
    run_with(
        scenario,
        bin,
        &RunOptions {
            duration,
            ..RunOptions::default()
        },
    )
    .await
}

/// How `run_with` runs a scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Seconds to run instead of the file's `duration_s`.
    pub duration: Option<f64>,
    /// Keep the run's directories (and `timeline.html`) even when it passed.
    pub keep: bool,
    /// Called about twice a second while the actions run: seconds elapsed, seconds in all,
    /// actions run so far.
    pub progress: Option<fn(f64, f64, u64)>,
    /// The bus the run's cluster is on (the embedded bus unless told).
    pub backend: super::super::Backend,
    /// Report the latency without holding it to the scenario's bounds, and hold the bus's
    /// state to its bound only once the cluster settled (its collector's next passes
    /// included), not while the actions run: for
    /// the suite's short runs, many at once on a shared machine (speed is for the bench to
    /// measure, not for a test to time; a 2 s churn's state mid-run is as large as the
    /// collector, on cores the whole suite shares, was late: 28 MiB against 12-17 MiB
    /// alone).
    pub timing_reported_only: bool,
}

/// `run`, with the options of `filesync scenario run`.
pub async fn run_with(
    scenario: &Scenario,
    bin: &Path,
    options: &RunOptions,
) -> Result<ScenarioReport, String> {
    let duration_s = options.duration.unwrap_or(scenario.duration_s);
    let bus_args: Vec<&str> = scenario.bus_args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::builder(bin, &format!("scenario-{}", scenario.name))
        .backend(options.backend)
        .slaves(scenario.slaves)
        .master_args(&bus_args)
        .start()
        .await?;
    let sizes = SizeWatch::start(cluster.master_state(), cluster.master_dir());
    // Errors are judged by `expect.no_errors`, not by the stream.
    cluster.events.allow_errors();
    let ctx = ActionCtx {
        master_dir: cluster.master_dir(),
        cluster: Arc::new(Mutex::new(cluster)),
        cancel: CancellationToken::new(),
    };
    let stats: Stats = Arc::new(std::sync::Mutex::new(
        scenario
            .actions
            .iter()
            .map(|a| ActionReport {
                label: a.label(),
                ..ActionReport::default()
            })
            .collect(),
    ));
    let started = Instant::now();
    // Startup: the one-shot actions in file order, then the periodic ones on their clocks.
    for (idx, spec) in scenario.actions.iter().enumerate() {
        if spec.at_startup && spec.every_ms.is_none() {
            run_one(&ctx, &stats, idx, spec, 0).await;
        }
    }
    let mut periodic = tokio::task::JoinSet::new();
    for (idx, spec) in scenario.actions.iter().enumerate() {
        let Some(every_ms) = spec.every_ms else {
            continue;
        };
        let (ctx, stats, spec) = (ctx.clone(), stats.clone(), spec.clone());
        periodic.spawn(async move {
            let every = Duration::from_millis(every_ms);
            if !spec.at_startup {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = ctx.cancel.cancelled() => return,
                }
            }
            let mut n = 0;
            while !ctx.cancel.is_cancelled() {
                run_one(&ctx, &stats, idx, &spec, n).await;
                n += 1;
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = ctx.cancel.cancelled() => {}
                }
            }
        });
    }
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(duration_s);
    while tokio::time::Instant::now() < until {
        let step = until.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(step.min(Duration::from_millis(500))).await;
        if let Some(progress) = options.progress {
            let runs = stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|a| a.runs)
                .sum();
            progress(started.elapsed().as_secs_f64(), duration_s, runs);
        }
    }
    // The kill switch: periodic loops and long actions stop at their next step.
    ctx.cancel.cancel();
    while periodic.join_next().await.is_some() {}
    let teardown_ctx = ActionCtx {
        cancel: CancellationToken::new(),
        ..ctx.clone()
    };
    for (idx, spec) in scenario.actions.iter().enumerate() {
        if spec.at_teardown {
            run_one(&teardown_ctx, &stats, idx, spec, u64::MAX).await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(teardown_ctx);
    let mut cluster = Arc::try_unwrap(ctx.cluster)
        .map_err(|_| "an action still holds the cluster".to_owned())?
        .into_inner();
    let settled = cluster.settle().await;
    if let (true, Some(bound)) = (options.timing_reported_only, scenario.expect.state) {
        // Judged once settled, and the collector's part of settling is its next passes:
        // what the run superseded last waits out its grace before it goes (a 2 s churn
        // ended with 33 MiB of it waiting, freed 200 ms later). Up to three of them.
        sizes
            .until_within(bound, 3 * scenario.collector_pass())
            .await;
    }
    let sizes = sizes.finish().await;
    // What the stream saw: the whole run, even where retention truncated the log.
    let events = cluster.events.seen().to_vec();
    let check = cluster.check(CheckOptions::default());
    let actions = stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut report = judge(
        scenario,
        &events,
        actions,
        check.violations.iter().map(|v| v.to_string()).collect(),
        settled.err(),
        !options.timing_reported_only,
    );
    report.duration_s = elapsed;
    // From the second half on; or only the last sample, once settled.
    let judged_from = match options.timing_reported_only {
        true => f64::INFINITY,
        false => elapsed / 2.0,
    };
    judge_state(scenario, sizes, &events, judged_from, &mut report);
    if !report.passed || options.keep {
        report.kept_at = Some(cluster.keep());
        let html = crate::html::render(&events, Some(&check), &report.failures);
        let _ = std::fs::write(cluster.dir().join("timeline.html"), html);
    }
    Ok(report)
}

/// Evaluates `expect` over the log and the run's statistics (its latency bounds when
/// `latency_judged`).
pub fn judge(
    scenario: &Scenario,
    events: &[Event],
    actions: Vec<ActionReport>,
    violations: Vec<String>,
    settle_error: Option<String>,
    latency_judged: bool,
) -> ScenarioReport {
    let times: BTreeMap<u64, std::time::SystemTime> = events
        .iter()
        .filter(|e| e.tag() == Some(Tag::Notify))
        .filter_map(|e| humantime::parse_rfc3339(&e.time).ok().map(|t| (e.seq, t)))
        .collect();
    let mut all = Vec::new();
    let mut by_op: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for event in events {
        let tag = event.body.tag_name();
        *counts.entry(tag.to_owned()).or_default() += 1;
        if let Some(op) = event.body.op {
            *counts.entry(format!("{tag}.{op}")).or_default() += 1;
        }
        if event.tag() != Some(Tag::Consume) {
            continue;
        }
        let (Some(cause), Ok(consumed)) = (event.body.cause, humantime::parse_rfc3339(&event.time))
        else {
            continue;
        };
        if let Some(latency) = times
            .get(&cause)
            .and_then(|n| consumed.duration_since(*n).ok())
        {
            let ms = latency.as_secs_f64() * 1000.0;
            all.push(ms);
            by_op
                .entry(event.body.op.map(|o| o.to_string()).unwrap_or_default())
                .or_default()
                .push(ms);
        }
    }
    let latency = LatencyStats::of(all);
    let expect = &scenario.expect;
    let mut failures = Vec::new();
    if expect.converged {
        if let Some(err) = settle_error {
            failures.push(format!(
                "did not converge: {}",
                err.lines().next().unwrap_or_default()
            ));
        }
        for violation in &violations {
            failures.push(format!("did not converge: {violation}"));
        }
    }
    for action in actions.iter().filter(|a| a.errors > 0) {
        let first = action
            .error_messages
            .first()
            .map(String::as_str)
            .unwrap_or("");
        failures.push(format!(
            "action `{}` failed {} of {} time(s): {first}",
            action.label, action.errors, action.runs
        ));
    }
    let n_errors = counts.get("error").copied().unwrap_or(0);
    if expect.no_errors && n_errors > 0 {
        failures.push(format!("{n_errors} error event(s) in the log"));
    }
    for (name, bound, value) in [
        ("p50", expect.latency_ms.p50, latency.p50),
        ("p90", expect.latency_ms.p90, latency.p90),
        ("p99", expect.latency_ms.p99, latency.p99),
        ("max", expect.latency_ms.max, latency.max),
    ] {
        if let Some(bound) = bound.filter(|b| latency_judged && value > *b) {
            failures.push(format!(
                "latency {name} {value:.1} ms is over the bound of {bound} ms"
            ));
        }
    }
    for (key, bounds) in &expect.counts {
        let n = counts.get(key).copied().unwrap_or(0);
        if bounds.min.is_some_and(|min| n < min) || bounds.max.is_some_and(|max| n > max) {
            let range = match (bounds.min, bounds.max) {
                (Some(min), Some(max)) if min == max => format!("exactly {min}"),
                (Some(min), Some(max)) => format!("between {min} and {max}"),
                (Some(min), None) => format!("at least {min}"),
                (None, Some(max)) => format!("at most {max}"),
                (None, None) => "any number".into(),
            };
            failures.push(format!("{n} `{key}` event(s), expected {range}"));
        }
    }
    ScenarioReport {
        scenario: scenario.name.clone(),
        duration_s: 0.0,
        slaves: scenario.slaves,
        passed: failures.is_empty(),
        failures,
        actions,
        latency_ms: latency,
        latency_ms_by_op: by_op
            .into_iter()
            .map(|(op, samples)| (op, LatencyStats::of(samples)))
            .collect(),
        counts,
        violations,
        kept_at: None,
        state: None,
    }
}

impl ScenarioReport {
    /// The human summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(
            out,
            "scenario {}: {verdict} in {:.1} s with {} slave(s)",
            self.scenario, self.duration_s, self.slaves
        );
        let width = self
            .actions
            .iter()
            .map(|a| a.label.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            out,
            "  {:<width$}  {:>6}  {:>6}  {:>10}",
            "action", "runs", "errors", "time"
        );
        for action in &self.actions {
            let _ = writeln!(
                out,
                "  {:<width$}  {:>6}  {:>6}  {:>7.1} ms",
                action.label, action.runs, action.errors, action.total_ms
            );
            for message in &action.error_messages {
                let _ = writeln!(out, "  {:<width$}    error: {message}", "");
            }
        }
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "  latency notify -> consume: {} samples, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.count, l.p50, l.p90, l.p99, l.max
        );
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "  events: {}", counts.join(", "));
        if let Some(state) = &self.state {
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            let _ = writeln!(
                out,
                "  bus state: at most {:.1} MiB (tree {:.1} MiB then) over the second half; {:.1} MiB for a {:.1} MiB tree at the end",
                mib(state.max_state_bytes),
                mib(state.tree_bytes_at_max),
                mib(state.final_state_bytes),
                mib(state.final_tree_bytes)
            );
        }
        for failure in &self.failures {
            let _ = writeln!(out, "  FAILED: {failure}");
        }
        if let Some(kept) = &self.kept_at {
            let _ = writeln!(out, "  kept: {} (logs/, timeline.html)", kept.display());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Draft;

    fn notify(at: SystemTime, uploaded: Option<u64>) -> Event {
        let mut body = Draft::tagged(Tag::Notify);
        body.uploaded = uploaded;
        Event {
            seq: 1,
            time: humantime::format_rfc3339_micros(at).to_string(),
            agent: "master".into(),
            body,
        }
    }

    #[test]
    fn uploads_are_summed_up_to_each_sample() {
        let began = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: f64| began + Duration::from_secs_f64(s);
        let mut consume = notify(at(0.5), Some(1000));
        consume.body.tag = Some(Tag::Consume);
        let events = vec![
            notify(at(2.5), Some(30)),
            notify(at(0.2), Some(10)),
            notify(at(1.0), None),
            consume,
            notify(at(1.5), Some(20)),
        ];
        let times = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(uploaded_by(&events, began, &times), vec![0, 10, 30, 60]);
    }
}
