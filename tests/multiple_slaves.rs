//! Several slaves, and a slave that joins late and catches up on the backlog.

use std::fs;

use filesync::check::CheckOptions;
use filesync::testkit::Pattern;

use crate::util::{cluster_on, must};

on_each_backend! {
async fn two_slaves_and_a_late_joiner_all_converge(backend) {
    let mut c = cluster_on(backend, "multi", 2).await;
    let m = c.master_dir();
    fs::create_dir(m.join("shared")).expect("mkdir");
    fs::write(m.join("shared/a"), "a").expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("shared/a"),
                Pattern::consume().by("slave-2").put().path("shared/a"),
            ])
            .await,
    );
    let late = c.add_slave();
    must(c.start_slave(late).await);
    fs::write(m.join("shared/b"), "b").expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("shared/b"),
                Pattern::consume().by("slave-2").put().path("shared/b"),
                Pattern::consume().by("slave-3").put().path("shared/b"),
            ])
            .await,
    );
    assert_eq!(
        fs::read(c.slaves[late].dir.join("shared/a")).expect("caught up"),
        b"a"
    );
    c.assert_checks(CheckOptions::default());
}
}
