//! The events seen, as an aligned timeline a person reads in seconds.

use std::fmt::Write;

use crate::event::Event;

/// One line per event: seq, offset from the first event, tag, agent, op, path, cause/error.
pub fn timeline(events: &[Event]) -> String {
    let start = events
        .first()
        .and_then(|e| humantime::parse_rfc3339(&e.time).ok());
    let agent_width = events
        .iter()
        .map(|e| e.agent.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:>5}  {:>10}  {:<8} {:<agent_width$}  {:<6}  path",
        "seq", "+ms", "tag", "agent", "op"
    );
    for event in events {
        let offset = match (start, humantime::parse_rfc3339(&event.time).ok()) {
            (Some(start), Some(time)) => time
                .duration_since(start)
                .map(|d| format!("{:.3}", d.as_secs_f64() * 1000.0))
                .unwrap_or_else(|_| "?".into()),
            _ => "?".into(),
        };
        let body = &event.body;
        let _ = writeln!(
            out,
            "  {:>5}  {:>10}  {:<8} {:<agent_width$}  {:<6}  {}{}",
            event.seq,
            offset,
            body.tag_name(),
            event.agent,
            body.op_name(),
            body.display_path(),
            body.outcome()
        );
    }
    out
}
