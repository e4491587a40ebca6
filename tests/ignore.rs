//! Ignore rules: `.filesyncignore` keeps paths out of the log.

use std::fs;
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::testkit::Pattern;

use crate::util::must;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesyncignore_rules_keep_paths_out_of_the_log() {
    let mut c = must(
        filesync::testkit::Cluster::start_with(&crate::util::bin(), "ignore", 1, |m| {
            fs::write(m.join(".filesyncignore"), "*.log\nbuild/\n").expect("write rules");
        })
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
