//! Every scenario in `fixtures/scenarios/`, run briefly with real processes, must pass; and
//! `filesync scenario check` validates them and reports a broken one usefully.

use std::path::Path;
use std::process::Command;

use filesync::testkit::{scenario, Backend};

use crate::util::bin;

fn scenarios_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scenarios")
}

on_each_backend! {
/// Every shipped scenario, each action within 2 s. On NATS, those that configure the
/// embedded bus (`"bus"`: its retention) are left out. Latency is reported, not judged,
/// and the bus's state is held to its bound once the cluster settled, not mid-run: these
/// runs share two cores with the rest of the suite (a soak's p50 of 4 ms alone was 81 ms
/// in one CI run; churn's state mid-run 28 MiB against 12-17 MiB alone), and speed is the
/// bench's to measure.
async fn every_shipped_scenario_passes_in_a_short_run(backend) {
    let files = scenario::files_in(&scenarios_dir()).expect("read fixtures/scenarios");
    assert!(
        files.len() >= 6,
        "the walkthrough, editor, burst, soak, crash-recover and large-crash scenarios ship"
    );
    let mut ran = 0;
    for file in files {
        let loaded = scenario::load(&file).unwrap_or_else(|err| panic!("{err}"));
        if backend != Backend::Embedded && !loaded.bus_args.is_empty() {
            continue;
        }
        let options = scenario::RunOptions {
            duration: Some(loaded.duration_s.min(2.0)),
            backend,
            timing_reported_only: true,
            ..scenario::RunOptions::default()
        };
        let report = scenario::run_with(&loaded, &bin(), &options)
            .await
            .unwrap_or_else(|err| panic!("{}: {err}", file.display()));
        assert!(report.passed, "{}", report.table());
        assert!(
            report.actions.iter().all(|a| a.runs > 0),
            "{}",
            report.table()
        );
        ran += 1;
    }
    assert!(ran >= 6, "{ran} scenarios ran");
}
}

#[test]
fn scenario_check_accepts_the_fixtures_and_explains_a_broken_file() {
    let ok = Command::new(bin())
        .arg("scenario")
        .arg("check")
        .arg(scenarios_dir())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("0 invalid"), "{stdout}");

    let dir = tempfile::tempdir().expect("tempdir");
    // Three problems in one file: each is reported, not only the first.
    std::fs::write(
        dir.path().join("typo.json"),
        r#"{"name":"typo","duration_s":-1,"actions":[{"action":"brust","params":{"dir":"d","count":1}},{"action":"create","params":{"path":"../x"}}]}"#,
    )
    .expect("write");
    // A file named on its own is checked too.
    let bad = Command::new(bin())
        .arg("scenario")
        .arg("check")
        .arg(dir.path().join("typo.json"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "typo.json: actions[0].action: unknown action `brust`; did you mean `burst`?"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("typo.json: duration_s: must be"),
        "{stdout}"
    );
    assert!(
        stdout.contains("typo.json: actions[1].params.path: `../x`"),
        "{stdout}"
    );
    assert!(stdout.contains("1 file(s), 1 invalid"), "{stdout}");
}

#[test]
fn a_scenario_run_writes_a_json_report_and_a_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("report.json");
    let out = Command::new(bin())
        .args(["scenario", "run"])
        .arg(scenarios_dir().join("walkthrough.json"))
        .args(["--duration", "0.5", "--keep", "--report"])
        .arg(&report)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("scenario walkthrough: PASSED")
            && stdout.contains("latency notify -> consume"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(json["passed"], true);
    assert!(
        json["latency_ms"]["count"].as_u64().unwrap_or(0) > 0,
        "{json}"
    );
    assert!(
        json["actions"].as_array().is_some_and(|a| a.len() == 6),
        "{json}"
    );
    // --keep: a passing run's directory stays, with its log.
    let kept = json["kept_at"].as_str().unwrap_or_else(|| panic!("{json}"));
    assert!(
        std::path::Path::new(kept)
            .join("state/master/events.jsonl")
            .exists(),
        "{kept}"
    );
    let _ = std::fs::remove_dir_all(kept);
}
