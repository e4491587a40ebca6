//! The log as a picture: a self-contained HTML page (no scripts, no network fetches) with one
//! lane per agent, one row per event, arrows from each notify to the consumes and errors that
//! answer it, errors in red, and the events behind each violated invariant (or the unmet
//! expectations of a failed test) highlighted and listed at the top.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

use crate::check::Report;
use crate::event::{Event, Role, Tag};

const ROW: usize = 24;
const LANE: usize = 260;
const TOP: usize = 40;
const LEFT: usize = 170;
const NARROW_LANE: usize = 150;
/// Room right of the last lane for its labels.
const LABEL_ROOM: usize = 160;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(event: &Event) -> &'static str {
    match event.body.tag {
        Some(Tag::Notify) => "#1f6feb",
        Some(Tag::Consume) => "#1a7f37",
        Some(Tag::Error) => "#d1242f",
        Some(Tag::Join | Tag::Leave) => "#8c959f",
        Some(Tag::Ready) => "#8250df",
        None => "#000",
    }
}

/// Renders `events` (with the checker's `report` and a failed test's `unmet` expectations,
/// when there are any) as one HTML document.
pub fn render(events: &[Event], report: Option<&Report>, unmet: &[String]) -> String {
    // Lanes: masters, then slaves, then listeners (narrow), each in order of appearance.
    let mut roles: HashMap<&str, Role> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for event in events {
        if let (Some(Tag::Join), Some(role)) = (event.body.tag, event.body.role) {
            roles.entry(&event.agent).or_insert(role);
        }
        if !order.contains(&event.agent.as_str()) {
            order.push(&event.agent);
        }
    }
    let rank = |agent: &str| match roles.get(agent) {
        Some(Role::Master) => 0,
        Some(Role::Slave) => 1,
        None => 2,
        Some(Role::Listener) => 3,
    };
    order.sort_by_key(|agent| rank(agent));
    let mut lanes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut x = LEFT;
    for agent in &order {
        let width = if rank(agent) == 3 { NARROW_LANE } else { LANE };
        lanes.insert((*agent).to_owned(), (x + width / 2, width));
        x += width;
    }
    let lane_x = |agent: &str| lanes.get(agent).map(|(center, _)| *center).unwrap_or(LEFT);
    let flagged: HashSet<u64> = report
        .map(|r| {
            r.violations
                .iter()
                .flat_map(|v| v.seqs.iter().copied())
                .collect()
        })
        .unwrap_or_default();
    let row_of: HashMap<u64, usize> = events
        .iter()
        .enumerate()
        .map(|(idx, e)| (e.seq, idx))
        .collect();
    let start = events
        .first()
        .and_then(|e| humantime::parse_rfc3339(&e.time).ok());
    let width = x + LABEL_ROOM;
    let height = TOP + ROW * events.len() + 20;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="ui-monospace, monospace" font-size="12">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#57606a"/></marker>
<marker id="arrow-red" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#d1242f"/></marker></defs>
"##
    );
    for agent in &order {
        let x = lane_x(agent);
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#d0d7de" stroke-width="2"/><text x="{x}" y="22" text-anchor="middle" font-weight="bold" font-size="14">{}</text>"##,
            TOP - 8,
            height - 10,
            escape(agent)
        );
    }
    for (row, event) in events.iter().enumerate() {
        let y = TOP + ROW * row + ROW / 2;
        if flagged.contains(&event.seq) {
            let _ = write!(
                svg,
                r##"<rect x="0" y="{}" width="{width}" height="{ROW}" fill="#fff8c5"/>"##,
                y - ROW / 2
            );
        }
        let offset = match (start, humantime::parse_rfc3339(&event.time).ok()) {
            (Some(start), Some(time)) => time
                .duration_since(start)
                .map(|d| format!("+{:.1} ms", d.as_secs_f64() * 1000.0))
                .unwrap_or_default(),
            _ => String::new(),
        };
        let _ = write!(
            svg,
            r##"<text x="8" y="{}" fill="#57606a">#{} {}</text>"##,
            y + 4,
            event.seq,
            offset
        );
    }
    // Arrows first, so dots and labels are drawn over them.
    for (row, event) in events.iter().enumerate() {
        let (Some(cause), Some(Tag::Consume | Tag::Error)) = (event.body.cause, event.body.tag)
        else {
            continue;
        };
        let Some(&from_row) = row_of.get(&cause) else {
            continue;
        };
        let Some(notify) = events.get(from_row) else {
            continue;
        };
        let x1 = lane_x(&notify.agent);
        let x2 = lane_x(&event.agent);
        let y1 = TOP + ROW * from_row + ROW / 2;
        let y2 = TOP + ROW * row + ROW / 2;
        let red = event.body.tag == Some(Tag::Error);
        let _ = writeln!(
            svg,
            r##"<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{}" stroke="{}" stroke-width="1.2" marker-end="url(#{})"/>"##,
            y2.saturating_sub(5),
            if red { "#d1242f" } else { "#8c959f" },
            if red { "arrow-red" } else { "arrow" }
        );
    }
    for (row, event) in events.iter().enumerate() {
        let x = lane_x(&event.agent);
        let y = TOP + ROW * row + ROW / 2;
        let tag = event.body.tag.map(|t| t.as_str()).unwrap_or("?");
        let op = event.body.op.map(|o| o.as_str()).unwrap_or("");
        let mut label = format!("{tag} {op} {}", event.body.display_path());
        if let Some(error) = &event.body.error {
            label.push_str(&format!(": {error}"));
        }
        let label = label.split_whitespace().collect::<Vec<_>>().join(" ");
        let short: String = label.chars().take(34).collect();
        let short = if short.len() < label.len() {
            format!("{short}…")
        } else {
            short
        };
        let _ = writeln!(
            svg,
            r##"<g><title>{}</title><circle cx="{x}" cy="{y}" r="5" fill="{}"/><text x="{}" y="{}" fill="{}" stroke="white" stroke-width="3" paint-order="stroke">{}</text></g>"##,
            escape(&event.to_line()),
            color(event),
            x + 9,
            y + 4,
            if event.body.tag == Some(Tag::Error) {
                "#d1242f"
            } else {
                "#24292f"
            },
            escape(&short)
        );
    }
    svg.push_str("</svg>");

    let mut summary = String::new();
    if let Some(report) = report {
        let verdict = if report.is_ok() {
            "all invariants hold"
        } else {
            "invariants violated"
        };
        let _ = write!(
            summary,
            "<p class=\"{}\"><b>{verdict}</b>: {} events, {} notifies, slaves: {}</p>",
            if report.is_ok() { "ok" } else { "bad" },
            report.n_events,
            report.n_notifies,
            escape(&report.slaves.join(", "))
        );
        if !report.violations.is_empty() {
            summary.push_str("<ul class=\"violations\">");
            for violation in &report.violations {
                let _ = write!(summary, "<li>{}</li>", escape(&violation.to_string()));
            }
            summary.push_str("</ul>");
        }
    }
    if !unmet.is_empty() {
        summary
            .push_str("<p class=\"bad\"><b>expectations not met</b>:</p><ul class=\"violations\">");
        for pattern in unmet {
            let _ = write!(summary, "<li>{}</li>", escape(pattern));
        }
        summary.push_str("</ul>");
    }
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>filesync event log</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 16px; color: #24292f; }}
h1 {{ font-size: 18px; margin: 0 0 8px; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #d1242f; }}
.violations li {{ background: #fff8c5; margin: 2px 0; padding: 2px 6px; font-family: ui-monospace, monospace; font-size: 12px; }}
.legend span {{ margin-right: 14px; font-size: 12px; }}
.legend i {{ display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 4px; }}
</style></head><body>
<h1>filesync event log</h1>
{summary}
<p class="legend"><span><i style="background:#1f6feb"></i>notify</span><span><i style="background:#1a7f37"></i>consume</span><span><i style="background:#d1242f"></i>error</span><span><i style="background:#8250df"></i>ready</span><span><i style="background:#8c959f"></i>join / leave</span><span style="background:#fff8c5">highlighted: events behind a violation</span> (hover a dot for its log line)</p>
{svg}
</body></html>
"##
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{check_log, CheckOptions};

    #[test]
    fn a_broken_log_is_drawn_with_its_violation_and_fetches_nothing() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/logs/broken-mismatch.jsonl");
        let events = crate::bus::log::read_log(&path).expect("golden log");
        let report = check_log(&events, CheckOptions::default());
        let html = render(
            &events,
            Some(&report),
            &["put consume by slave for x.txt".into()],
        );
        assert!(html.contains("invariants violated") && html.contains("invariant 3"));
        assert!(
            html.contains("#fff8c5"),
            "the violating events are highlighted"
        );
        assert!(html.contains("marker-end"), "notify -> consume arrows");
        assert!(html.contains("expectations not met") && html.contains("x.txt"));
        // The only URL in the page is the SVG namespace, which is never fetched.
        assert_eq!(
            html.matches("http").count(),
            html.matches("http://www.w3.org/2000/svg").count()
        );
        assert!(
            !html.contains("https://") && !html.contains("<script"),
            "self-contained, no fetches"
        );
    }
}
