#![doc = include_str!("../../docs/TESTKIT.md")]
