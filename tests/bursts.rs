//! Bursts: many files at once, each mirrored exactly once.

use std::fs;
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::event::EntryKind;
use filesync::testkit::Pattern;

use crate::util::{cluster_on, must};

on_each_backend! {
async fn a_burst_of_files_is_mirrored_exactly_once_each(backend) {
    let mut c = cluster_on(backend, "burst", 1).await;
    let m = c.master_dir();
    for dir in 0..10 {
        fs::create_dir(m.join(format!("d{dir}"))).expect("mkdir");
        for file in 0..30 {
            fs::write(m.join(format!("d{dir}/f{file}")), format!("{dir}/{file}")).expect("write");
        }
    }
    let puts = Pattern::consume().by("slave").put().kind(EntryKind::File);
    must(
        c.events
            .expect_count(puts, 300, Duration::from_millis(500))
            .await,
    );
    c.assert_checks(CheckOptions::default());
}
}
