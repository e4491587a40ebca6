//! A real bus in this process, for the kit's own unit tests (no processes, no files beyond a
//! temporary state directory).

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
    pub async fn client(&self, role: Role, name: &str) -> BusClient {
        let hello = Hello {
            role,
            name: name.into(),
            token: None,
            dir: None,
        };
        BusClient::connect(&self.addr, hello)
            .await
            .expect("connect")
            .0
    }
}
