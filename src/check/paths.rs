//! Invariant 5: no path in any event escapes the root.

use super::reading::Step;
use super::{Invariant, Violation};

pub fn inside_root(step: &Step<'_>, out: &mut Vec<Violation>) {
    let event = step.event;
    if let Err(err) = event.body.check_paths() {
        out.push(Violation::new(
            Invariant::InsideRoot,
            vec![event.seq],
            format!("#{} {err}", event.seq),
        ));
    }
}
