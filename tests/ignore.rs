//! Ignore rules: `.filesyncignore` keeps paths out of the log.

use std::fs;
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::testkit::Pattern;

use crate::util::{builder_on, must};

on_each_backend! {
async fn filesyncignore_rules_keep_paths_out_of_the_log(backend) {
    let mut c = must(
        builder_on(backend, "ignore")
            .prepare(|m| {
                fs::write(m.join(".filesyncignore"), "*.log\nbuild/\n").expect("write rules")
            })
            .start()
            .await,
    );
    let m = c.master_dir();
    fs::write(m.join("app.log"), "noise").expect("write");
    fs::create_dir_all(m.join("build/obj")).expect("mkdir");
    fs::write(m.join("build/obj/x.o"), "bin").expect("write");
    fs::write(m.join("keep.txt"), "signal").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("keep.txt"))
            .await,
    );
    must(
        c.events
            .expect_none(
                Pattern::notify().path_glob("{*.log,build,build/**}"),
                Duration::from_millis(500),
            )
            .await,
    );
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
async fn exclude_patterns_keep_paths_out_beside_the_file_and_win_over_it(backend) {
    let mut c = must(
        builder_on(backend, "exclude")
            // The file would let `keep.tmp` through; --exclude wins.
            .prepare(|m| fs::write(m.join(".filesyncignore"), "!keep.tmp\n").expect("write"))
            .master_args(&["--exclude", "*.tmp", "--exclude", "cache/"])
            .start()
            .await,
    );
    let m = c.master_dir();
    fs::create_dir_all(m.join("sub/cache")).expect("mkdir");
    fs::write(m.join("sub/cache/blob"), "cached").expect("write");
    fs::write(m.join("sub/x.tmp"), "scratch").expect("write");
    fs::write(m.join("keep.tmp"), "scratch").expect("write");
    fs::write(m.join("sub/real.txt"), "signal").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("sub/real.txt"))
            .await,
    );
    must(c.settle().await);
    must(
        c.events
            .expect_none(
                Pattern::notify().path_glob("{**/*.tmp,*.tmp,**/cache,**/cache/**}"),
                Duration::from_millis(300),
            )
            .await,
    );
    c.assert_checks(CheckOptions::default());
    // A pattern that cannot be parsed is one line, and nothing is created.
    let state = c.dir().join("state/refused");
    let out = std::process::Command::new(crate::util::bin())
        .args([
            "master",
            "--listen",
            "127.0.0.1:0",
            "--exclude",
            "a{b",
            "--dir",
        ])
        .arg(&m)
        .arg("--state")
        .arg(&state)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--exclude: bad pattern"), "{stderr}");
    assert!(!state.exists());
}
}
