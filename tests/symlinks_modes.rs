//! Symlinks (as links), permission bits and names that are not UTF-8.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use filesync::check::CheckOptions;
use filesync::event::EntryKind;
use filesync::testkit::Pattern;

use crate::util::{cluster_on, must};

on_each_backend! {
async fn symlinks_modes_and_non_utf8_names_are_mirrored(backend) {
    let mut c = cluster_on(backend, "meta", 1).await;
    let m = c.master_dir();
    fs::write(m.join("run.sh"), "#!/bin/sh\necho hi\n").expect("write");
    fs::set_permissions(m.join("run.sh"), fs::Permissions::from_mode(0o750)).expect("chmod");
    std::os::unix::fs::symlink("run.sh", m.join("link")).expect("symlink");
    std::os::unix::fs::symlink("/etc/outside-the-root", m.join("dangling")).expect("symlink");
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(m.join(odd), "latin-1 name").expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("run.sh")
                    .with("mode 0750", |e| e.body.mode == Some(0o750)),
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("link")
                    .kind(EntryKind::Symlink),
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("dangling")
                    .kind(EntryKind::Symlink),
                Pattern::consume()
                    .by("slave")
                    .put()
                    .with("exact bytes of caf\\xe9.txt", |e| {
                        e.body.path_b64.as_deref() == Some("Y2Fm6S50eHQ=")
                    }),
            ])
            .await,
    );
    let s = &c.slaves[0].dir;
    let mode = fs::metadata(s.join("run.sh"))
        .expect("exists")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o750);
    assert_eq!(
        fs::read_link(s.join("link")).expect("link").as_os_str(),
        "run.sh"
    );
    assert_eq!(
        fs::read_link(s.join("dangling")).expect("link").as_os_str(),
        "/etc/outside-the-root"
    );
    assert_eq!(fs::read(s.join(odd)).expect("odd name"), b"latin-1 name");
    // A chmod alone is a put with the new mode.
    fs::set_permissions(m.join("run.sh"), fs::Permissions::from_mode(0o700)).expect("chmod");
    must(
        c.events
            .expect(
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("run.sh")
                    .with("mode 0700", |e| e.body.mode == Some(0o700)),
            )
            .await,
    );
    c.assert_checks(CheckOptions::default());
}
}
