//! Invariant 3: a consume agrees with the notify it answers (`op`, paths, `kind`,
//! `sha256`, `manifest`), and its byte counts add up: `fetched + reused = size`.

use super::reading::{Answer, Step};
use super::{Invariant, Violation};
use crate::event::{Draft, Tag};

pub fn consume_agrees(step: &Step<'_>, out: &mut Vec<Violation>) {
    let event = step.event;
    let Some(Answer::ToNotify {
        cause,
        notify: Some(notify),
    }) = step.answer
    else {
        return;
    };
    if event.tag() != Some(Tag::Consume) {
        return;
    }
    if let Some(message) = disagreement(&notify.body, &event.body) {
        out.push(Violation::new(
            Invariant::ConsumeAgrees,
            vec![cause, event.seq],
            format!(
                "#{} consume by {} of #{cause}: {message}",
                event.seq, event.agent
            ),
        ));
    }
}

/// What a consume gets wrong about its notify, if anything.
fn disagreement(notify: &Draft, consume: &Draft) -> Option<String> {
    let fields = [
        (
            "op",
            notify.op.map(|o| o.to_string()),
            consume.op.map(|o| o.to_string()),
        ),
        (
            "kind",
            notify.kind.map(|k| format!("{k:?}")),
            consume.kind.map(|k| format!("{k:?}")),
        ),
        ("path", notify.path.clone(), consume.path.clone()),
        (
            "path_b64",
            notify.path_b64.clone(),
            consume.path_b64.clone(),
        ),
        ("from", notify.from.clone(), consume.from.clone()),
        ("to", notify.to.clone(), consume.to.clone()),
        ("sha256", notify.sha256.clone(), consume.sha256.clone()),
        (
            "manifest",
            notify.manifest.clone(),
            consume.manifest.clone(),
        ),
    ];
    if let (Some(fetched), Some(reused)) = (consume.fetched, consume.reused) {
        let size = consume.size.or(notify.size).unwrap_or(0);
        if fetched.checked_add(reused) != Some(size) {
            return Some(format!(
                "fetched {fetched} + reused {reused} is not the size {size}"
            ));
        }
    }
    for (name, expected, got) in fields {
        if expected != got {
            let show = |value: Option<String>| value.unwrap_or_else(|| "absent".into());
            return Some(format!(
                "{name} is {}, the notify says {}",
                show(got),
                show(expected)
            ));
        }
    }
    None
}
