//! A real bus in this process, for the kit's own unit tests (no processes, no files beyond a
//! temporary state directory).

use crate::bus::api::{call, Link};
use crate::bus::{Bus, BusClient, BusOptions, Hello};
use crate::event::Role;

/// A bus serving on a free loopback port until the test ends.
pub(crate) struct TestBus {
    pub addr: String,
    _state: tempfile::TempDir,
}

impl TestBus {
    pub async fn start(checkpoints: bool) -> TestBus {
        let state = tempfile::tempdir().expect("tempdir");
        let bus = Bus::open(&BusOptions {
            state_dir: state.path().to_path_buf(),
            token: None,
            checkpoints,
            idle_timeout: None,
            log: crate::bus::log::LogOptions::default(),
            retention: crate::bus::retention::Retention::default(),
            tls: None,
        })
        .expect("bus");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(bus.serve(listener, std::future::pending()));
        TestBus {
            addr,
            _state: state,
        }
    }

    /// A client connected as `name` in `role`.
    pub async fn client(&self, role: Role, name: &str) -> Link {
        let hello = Hello::new(role, name, None);
        let (client, _) = BusClient::connect(&self.addr, hello)
            .await
            .expect("connect");
        std::sync::Arc::new(client)
    }
}

/// Publishes, as a master, a notify that applies to any log: a put of directory `path`
/// (again, if it is one already). Returns its seq.
pub(crate) async fn notify_dir(master: &Link, path: &str) -> u64 {
    let change = filesync_master::Change::Put {
        path: filesync_master::RelPath::new(path).expect("valid"),
        entry: filesync_master::Entry::dir(0o755),
    };
    call(master.publish(crate::event::Draft::notify(&change)))
        .await
        .expect("publish")
}

/// Publishes the put of directory `path` and then its delete; returns the delete's seq.
pub(crate) async fn notify_delete(master: &Link, path: &str) -> u64 {
    notify_dir(master, path).await;
    let change = filesync_master::Change::Delete {
        path: filesync_master::RelPath::new(path).expect("valid"),
        kind: filesync_master::Kind::Dir,
    };
    call(master.publish(crate::event::Draft::notify(&change)))
        .await
        .expect("publish")
}
