//! The integration suite: one binary (it links once), a module per area. Every test runs real
//! processes on real directories and sockets, states the events it expects (and what must
//! never appear), and ends with the checker over the whole log and every directory.

#[macro_use]
mod util;

mod bursts;
mod bus_input;
mod check_cli;
mod chunks;
mod cli;
mod crowd;
mod delete;
mod directories;
mod disk_errors;
mod drift;
mod editors;
mod gc;
mod hostile_paths;
mod identity;
mod ignore;
mod moves;
mod multiple_slaves;
mod nats;
mod put;
mod races;
mod restarts;
mod retention;
mod scenarios;
mod sigkill;
mod symlinks_modes;
mod tls;
mod vanished;
