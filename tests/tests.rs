//! The integration suite: one binary (it links once), a module per area. Every test runs real
//! processes on real directories and sockets, states the events it expects (and what must
//! never appear), and ends with the checker over the whole log and every directory.

mod util;

mod bad_input;
mod basics;
mod check_cli;
mod cli;
mod moves;
mod races;
mod restarts;
