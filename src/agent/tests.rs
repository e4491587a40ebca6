//! The agents' loops against the in-memory bus (`bus/memory.rs`): no socket, no bus process.
//! What the integration suite proves over the real bus, here in miniature, to show that the
//! API (`bus/api.rs`) is all the agents need.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::master::{self, MasterOptions};
use super::slave::{self, SlaveOptions};
use crate::bus::memory::MemoryBus;
use crate::bus::Dial;
use crate::event::{Event, Op, Tag};

fn master_options(dir: &Path, bus: &MemoryBus) -> MasterOptions {
    MasterOptions {
        dir: dir.to_path_buf(),
        bus: String::new(),
        name: "master".into(),
        token: None,
        takeover: false,
        allow_empty: false,
        tls: None,
        exclude: Vec::new(),
        dial: Some(Arc::new(bus.clone()) as Arc<dyn Dial>),
    }
}

fn slave_options(dir: &Path, state: &Path, bus: &MemoryBus) -> SlaveOptions {
    SlaveOptions {
        dir: dir.to_path_buf(),
        bus: String::new(),
        name: "slave".into(),
        token: None,
        state_dir: state.to_path_buf(),
        verify_every: None,
        keep_local: false,
        bus_id: None,
        wait_for_bus: None,
        dial: Some(Arc::new(bus.clone()) as Arc<dyn Dial>),
    }
}

/// The slave's consume of a change to `path` with `op`.
fn consumed(path: &'static str, op: Op) -> impl Fn(&Event) -> bool {
    move |e: &Event| {
        e.tag() == Some(Tag::Consume)
            && e.agent == "slave"
            && e.body.op == Some(op)
            && e.body.path.as_deref() == Some(path)
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 20 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_and_slave_mirror_through_a_bus_in_memory() {
    let root = tempfile::tempdir().expect("tempdir");
    let (m, s, state) = (
        root.path().join("m"),
        root.path().join("s"),
        root.path().join("st"),
    );
    std::fs::create_dir_all(&m).expect("master dir");
    std::fs::write(m.join("before.txt"), b"there before the master started").expect("write");
    let bus = MemoryBus::new();
    let (stop_master, master_stopped) = oneshot::channel::<()>();
    let (stop_slave, slave_stopped) = oneshot::channel::<()>();
    let master = tokio::spawn(master::run(master_options(&m, &bus), async {
        let _ = master_stopped.await;
    }));
    let slave = tokio::spawn(slave::run(slave_options(&s, &state, &bus), async {
        let _ = slave_stopped.await;
    }));
    within(
        "the existing file",
        bus.wait_for(consumed("before.txt", Op::Put)),
    )
    .await;

    // A large file goes in chunks, through the upload in pieces and the manifest.
    let large = crate::testkit::noise(3 << 20, 1);
    std::fs::write(m.join("large.bin"), &large).expect("write");
    std::fs::write(m.join("small.txt"), b"new").expect("write");
    let put = within(
        "the large file",
        bus.wait_for(consumed("large.bin", Op::Put)),
    )
    .await;
    assert!(put.body.manifest.is_some(), "stored in chunks: {put:?}");
    within(
        "the small file",
        bus.wait_for(consumed("small.txt", Op::Put)),
    )
    .await;
    std::fs::remove_file(m.join("small.txt")).expect("remove");
    within(
        "the delete",
        bus.wait_for(consumed("small.txt", Op::Delete)),
    )
    .await;

    assert_eq!(std::fs::read(s.join("large.bin")).expect("read"), large);
    assert_eq!(
        std::fs::read(s.join("before.txt")).expect("read"),
        b"there before the master started"
    );
    assert!(!s.join("small.txt").exists());

    let _ = stop_slave.send(());
    let _ = stop_master.send(());
    within("the slave's stop", slave)
        .await
        .expect("join")
        .expect("slave ran");
    within("the master's stop", master)
        .await
        .expect("join")
        .expect("master ran");
    let events = bus.events();
    for agent in ["master", "slave"] {
        assert!(
            events
                .iter()
                .any(|e| e.agent == agent && e.tag() == Some(Tag::Leave)),
            "{agent} left"
        );
    }
    // The log the memory bus kept checks out as the embedded bus's would.
    let checked = crate::check::check_log(&events, crate::check::CheckOptions::default());
    assert!(checked.violations.is_empty(), "{:?}", checked.violations);
}
