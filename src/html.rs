//! The log as a picture: a self-contained HTML page (no network fetches; one inline script,
//! for the filter box) with one lane per agent, one row per event, arrows from each notify
//! to the consumes and errors that answer it, errors in red, and the events behind each
//! violated invariant (or the unmet expectations of a failed test) highlighted and listed at
//! the top. A burst (many events close together, none of them wrong) is one row with its
//! counts, expandable below the picture as the log's lines; a long log is summarised around
//! what went wrong (`plan_rows`).

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
    let (order, lanes, x) = lanes(events);
    let lane_x = |agent: &str| lanes.get(agent).map(|(center, _)| *center).unwrap_or(LEFT);
    let flagged: HashSet<u64> = report
        .map(|r| {
            r.violations
                .iter()
                .flat_map(|v| v.seqs.iter().copied())
                .collect()
        })
        .unwrap_or_default();
    let rows = plan_rows(events, &flagged);
    // Where each drawn event is: its row.
    let row_of: HashMap<u64, usize> = rows
        .iter()
        .enumerate()
        .filter_map(|(row, r)| match r {
            Row::Event(idx) => Some((events[*idx].seq, row)),
            Row::Gap(..) | Row::Burst(..) => None,
        })
        .collect();
    let start = events
        .first()
        .and_then(|e| humantime::parse_rfc3339(&e.time).ok());
    let width = x + LABEL_ROOM;
    let height = TOP + ROW * rows.len() + 20;

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
    let drawn = || {
        rows.iter().enumerate().filter_map(|(row, r)| match r {
            Row::Event(idx) => Some((row, &events[*idx])),
            Row::Gap(..) | Row::Burst(..) => None,
        })
    };
    for (row, r) in rows.iter().enumerate() {
        let y = TOP + ROW * row + ROW / 2;
        match r {
            Row::Gap(first, last) => {
                let _ = write!(
                    svg,
                    r##"<rect x="0" y="{}" width="{width}" height="{ROW}" fill="#f6f8fa"/><text x="8" y="{}" fill="#57606a" font-style="italic">… {}</text>"##,
                    y - ROW / 2,
                    y + 4,
                    escape(&gap_summary(&events[*first..=*last]))
                );
            }
            Row::Burst(first, last) => {
                let _ = write!(
                    svg,
                    r##"<a href="#burst{}"><rect x="0" y="{}" width="{width}" height="{ROW}" fill="#ddf4ff"/><text x="8" y="{}" fill="#0969da">▸ {} (expand below)</text></a>"##,
                    events[*first].seq,
                    y - ROW / 2,
                    y + 4,
                    escape(&burst_summary(&events[*first..=*last]))
                );
            }
            Row::Event(_) => {}
        }
    }
    for (row, event) in drawn() {
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
    for (row, event) in drawn() {
        let (Some(cause), Some(Tag::Consume | Tag::Error)) = (event.body.cause, event.body.tag)
        else {
            continue;
        };
        let Some(&from_row) = row_of.get(&cause) else {
            continue;
        };
        let Some(Row::Event(notify_idx)) = rows.get(from_row) else {
            continue;
        };
        let notify = &events[*notify_idx];
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
    for (row, event) in drawn() {
        let bad = event.body.tag == Some(Tag::Error) || flagged.contains(&event.seq);
        dot(
            &mut svg,
            event,
            lane_x(&event.agent),
            TOP + ROW * row + ROW / 2,
            bad,
        );
    }
    svg.push_str("</svg>");
    let bursts = bursts_listed(&rows, events);

    let summary = summary(events, report, &rows, unmet);
    page(&summary, &svg, &bursts)
}

/// The lanes, masters first, then slaves, then listeners (narrow), each in order of
/// appearance: the agents in that order, each lane's centre and width, and where the last
/// one ends.
fn lanes(events: &[Event]) -> (Vec<&str>, BTreeMap<String, (usize, usize)>, usize) {
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
    (order, lanes, x)
}

/// One event's dot and label in its lane at height `y`, its log line on hover; red when
/// `bad` (an error, or an event a violation names).
fn dot(svg: &mut String, event: &Event, x: usize, y: usize, bad: bool) {
    let mut label = format!("{} {}", event.body.tag_name(), event.body.what());
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
        r##"<g id="e{}"><title>{}</title><circle cx="{x}" cy="{y}" r="5" fill="{}"/><text x="{}" y="{}" fill="{}" stroke="white" stroke-width="3" paint-order="stroke">{}</text></g>"##,
        event.seq,
        escape(&event.to_line()),
        if bad { "#d1242f" } else { color(event) },
        x + 9,
        y + 4,
        if bad { "#d1242f" } else { "#24292f" },
        escape(&short)
    );
}

/// The verdict, the violations earliest first (linked to their rows), the counts, what
/// the picture leaves out, and the expectations a failed test did not meet.
fn summary(events: &[Event], report: Option<&Report>, rows: &[Row], unmet: &[String]) -> String {
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
            // The earliest first: what went wrong first usually explains what follows.
            let mut violations: Vec<_> = report.violations.iter().collect();
            violations.sort_by_key(|v| v.seqs.iter().min().copied().unwrap_or(u64::MAX));
            summary.push_str("<ul class=\"violations\">");
            let more = violations.len().saturating_sub(LISTED);
            for violation in violations.into_iter().take(LISTED) {
                let links: Vec<String> = violation
                    .seqs
                    .iter()
                    .take(8)
                    .map(|seq| format!("<a href=\"#e{seq}\">#{seq}</a>"))
                    .collect();
                let _ = write!(
                    summary,
                    "<li>{} {}</li>",
                    escape(&violation.to_string()),
                    links.join(" ")
                );
            }
            if more > 0 {
                let _ = write!(
                    summary,
                    "<li>… and {more} more (`filesync check` lists them all)</li>"
                );
            }
            summary.push_str("</ul>");
        }
    }
    summary.push_str(&counts_table(events));
    if rows.iter().any(|r| matches!(r, Row::Gap(..))) {
        let _ = write!(
            summary,
            "<p>{} events: the first and last {EDGE}, and {AROUND} on each side of every event a violation names, are drawn; the rest is summarised in grey rows.</p>",
            events.len()
        );
    }
    let n_bursts = rows.iter().filter(|r| matches!(r, Row::Burst(..))).count();
    if n_bursts > 0 {
        let _ = write!(
            summary,
            "<p>{n_bursts} burst(s) of at least {BURST_MIN} events, none of them wrong, are one blue row each; their lines are under the picture.</p>"
        );
    }
    if !unmet.is_empty() {
        summary
            .push_str("<p class=\"bad\"><b>expectations not met</b>:</p><ul class=\"violations\">");
        for pattern in unmet {
            let _ = write!(summary, "<li>{}</li>", escape(pattern));
        }
        summary.push_str("</ul>");
    }
    summary
}

/// The whole page around the summary, the picture and the bursts' lines: the styles and
/// the filter box's one inline script.
fn page(summary: &str, svg: &str, bursts: &str) -> String {
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>filesync event log</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 16px; color: #24292f; }}
h1 {{ font-size: 18px; margin: 0 0 8px; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #d1242f; }}
.violations li {{ background: #fff8c5; margin: 2px 0; padding: 2px 6px; font-family: ui-monospace, monospace; font-size: 12px; }}
.legend span {{ margin-right: 14px; font-size: 12px; }}
.counts {{ border-collapse: collapse; font-size: 12px; margin: 6px 0; }}
.counts td, .counts th {{ border: 1px solid #d0d7de; padding: 2px 8px; text-align: right; }}
.legend i {{ display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 4px; }}
#filter {{ font: 13px ui-monospace, monospace; width: 28em; padding: 3px 6px; }}
.bursts pre {{ font-size: 12px; margin: 4px 0 12px 16px; }}
.dim {{ opacity: 0.15; }}
</style></head><body>
<h1>filesync event log</h1>
{summary}
<p><input id="filter" type="search" placeholder="filter: a path, an agent, a tag, an error..." aria-label="filter events"> <span id="matches"></span></p>
<p class="legend"><span><i style="background:#1f6feb"></i>notify</span><span><i style="background:#1a7f37"></i>consume</span><span><i style="background:#d1242f"></i>error</span><span><i style="background:#8250df"></i>ready</span><span><i style="background:#8c959f"></i>join / leave</span><span style="background:#fff8c5">highlighted: events behind a violation</span> (hover a dot for its log line)</p>
{svg}
{bursts}
<script>
// The filter box: events whose log line does not contain every word typed are dimmed.
(function () {{
  var box = document.getElementById("filter"), said = document.getElementById("matches");
  var events = Array.prototype.slice.call(document.querySelectorAll("svg g[id^=e], .bursts span"));
  box.addEventListener("input", function () {{
    var words = box.value.toLowerCase().split(/\s+/).filter(Boolean), n = 0;
    events.forEach(function (el) {{
      var text = (el.querySelector("title") || el).textContent.toLowerCase();
      var hit = words.every(function (w) {{ return text.indexOf(w) >= 0; }});
      if (hit) n++;
      el.classList.toggle("dim", words.length > 0 && !hit);
    }});
    said.textContent = words.length ? n + " of " + events.length + " drawn or listed events match" : "";
  }});
}})();
</script>
</body></html>
"##
    )
}

/// The bursts' events, as the log's readable lines, each in a collapsed section the burst's
/// row links to.
fn bursts_listed(rows: &[Row], events: &[Event]) -> String {
    let mut out = String::new();
    for row in rows {
        let Row::Burst(first, last) = row else {
            continue;
        };
        let burst = &events[*first..=*last];
        let _ = write!(
            out,
            "<details id=\"burst{}\"><summary>{}</summary><pre>",
            events[*first].seq,
            escape(&burst_summary(burst))
        );
        for event in burst {
            let _ = writeln!(
                out,
                "<span class=\"line\">{}</span>",
                escape(&crate::listen::format_line(event))
            );
        }
        out.push_str("</pre></details>");
    }
    if out.is_empty() {
        return out;
    }
    format!("<div class=\"bursts\"><h2>Bursts</h2>{out}</div>")
}

/// One line for a burst: its range, how long it took, and what it was.
fn burst_summary(events: &[Event]) -> String {
    let span = match (events.first(), events.last()) {
        (Some(first), Some(last)) => {
            match (
                humantime::parse_rfc3339(&first.time),
                humantime::parse_rfc3339(&last.time),
            ) {
                (Ok(a), Ok(b)) => b
                    .duration_since(a)
                    .map(|d| format!(" in {:.1} ms", d.as_secs_f64() * 1000.0))
                    .unwrap_or_default(),
                _ => String::new(),
            }
        }
        _ => String::new(),
    };
    match counted(events, true) {
        Some((first, last, counts)) => format!(
            "burst of {} events{span}, #{first} to #{last}: {counts}",
            events.len()
        ),
        None => String::new(),
    }
}

/// The `seq` range of a run of events and how many of each tag (and op, with `by_op`).
fn counted(events: &[Event], by_op: bool) -> Option<(u64, u64, String)> {
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for event in events {
        let tag = event.body.tag_name();
        let kind = match event.body.op.filter(|_| by_op) {
            Some(op) => format!("{tag} {}", op.as_str()),
            None => tag.to_owned(),
        };
        *by_kind.entry(kind).or_default() += 1;
    }
    let counts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
    Some((events.first()?.seq, events.last()?.seq, counts.join(", ")))
}

/// The violations listed in the summary, earliest first.
const LISTED: usize = 25;
/// Above this many events, only some are drawn (`plan_rows`).
const DRAW_ALL: usize = 5000;
/// Events drawn at each end of a long log.
const EDGE: usize = 300;
/// Events drawn on each side of one a violation names (or an error).
const AROUND: usize = 15;
/// At most this many windows around flagged events are drawn.
const WINDOWS: usize = 100;

/// One row of the picture: an event, a run of events not drawn, or a burst collapsed
/// (indices, inclusive).
enum Row {
    Event(usize),
    Gap(usize, usize),
    Burst(usize, usize),
}

/// A run of at least this many events, each within `BURST_GAP` of the one before and none of
/// them flagged or an error, is drawn as one row.
const BURST_MIN: usize = 50;
const BURST_GAP: std::time::Duration = std::time::Duration::from_millis(50);

/// Collapses the bursts among the events `rows` draws one by one.
fn collapse_bursts(rows: Vec<Row>, events: &[Event], flagged: &HashSet<u64>) -> Vec<Row> {
    let times: Vec<Option<std::time::SystemTime>> = events
        .iter()
        .map(|e| humantime::parse_rfc3339(&e.time).ok())
        .collect();
    let quiet = |idx: usize| {
        !flagged.contains(&events[idx].seq) && events[idx].body.tag != Some(Tag::Error)
    };
    let close = |a: usize, b: usize| match (times[a], times[b]) {
        (Some(a), Some(b)) => b.duration_since(a).map_or(true, |gap| gap <= BURST_GAP),
        _ => false,
    };
    let mut out = Vec::with_capacity(rows.len());
    let mut run: Vec<usize> = Vec::new();
    let flush = |run: &mut Vec<usize>, out: &mut Vec<Row>| {
        match (run.first(), run.last()) {
            (Some(&first), Some(&last)) if run.len() >= BURST_MIN => {
                out.push(Row::Burst(first, last))
            }
            _ => out.extend(run.iter().map(|&idx| Row::Event(idx))),
        }
        run.clear();
    };
    for row in rows {
        match row {
            Row::Event(idx) if quiet(idx) => {
                if run
                    .last()
                    .is_some_and(|&prev| prev + 1 != idx || !close(prev, idx))
                {
                    flush(&mut run, &mut out);
                }
                run.push(idx);
            }
            other => {
                flush(&mut run, &mut out);
                out.push(other);
            }
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Which events are drawn: all of a short log; of a long one, both ends and a window around
/// each flagged event and error, the runs between them summarised in one row each, so the
/// page stays a few megabytes and quick to render whatever the log's length.
fn plan_rows(events: &[Event], flagged: &HashSet<u64>) -> Vec<Row> {
    collapse_bursts(drawn_or_not(events, flagged), events, flagged)
}

/// Which events are drawn one by one (before bursts are collapsed).
fn drawn_or_not(events: &[Event], flagged: &HashSet<u64>) -> Vec<Row> {
    if events.len() <= DRAW_ALL {
        return (0..events.len()).map(Row::Event).collect();
    }
    let mut keep = vec![false; events.len()];
    let n = events.len();
    keep[..EDGE].iter_mut().for_each(|k| *k = true);
    keep[n - EDGE..].iter_mut().for_each(|k| *k = true);
    let centres = events
        .iter()
        .enumerate()
        .filter(|(_, e)| flagged.contains(&e.seq) || e.body.tag == Some(Tag::Error))
        .map(|(idx, _)| idx)
        .take(WINDOWS);
    for idx in centres {
        let (from, to) = (idx.saturating_sub(AROUND), (idx + AROUND).min(n - 1));
        keep[from..=to].iter_mut().for_each(|k| *k = true);
    }
    let mut rows = Vec::new();
    let mut idx = 0;
    while idx < n {
        if keep[idx] {
            rows.push(Row::Event(idx));
            idx += 1;
            continue;
        }
        let first = idx;
        while idx < n && !keep[idx] {
            idx += 1;
        }
        rows.push(Row::Gap(first, idx - 1));
    }
    rows
}

/// One line for a run of events not drawn: their range and what they were.
fn gap_summary(events: &[Event]) -> String {
    match counted(events, false) {
        Some((first, last, counts)) => format!(
            "{} events not drawn, #{first} to #{last}: {counts}",
            events.len()
        ),
        None => String::new(),
    }
}

/// Per agent, how many events of each tag: the summary's table.
fn counts_table(events: &[Event]) -> String {
    let tags = [
        Tag::Join,
        Tag::Ready,
        Tag::Notify,
        Tag::Consume,
        Tag::Error,
        Tag::Leave,
    ];
    let mut counts: BTreeMap<&str, [usize; 6]> = BTreeMap::new();
    for event in events {
        let row = counts.entry(&event.agent).or_default();
        if let Some(i) = tags.iter().position(|t| Some(*t) == event.body.tag) {
            row[i] += 1;
        }
    }
    let mut table = String::from("<table class=\"counts\"><tr><th>agent</th>");
    for tag in tags {
        let _ = write!(table, "<th>{}</th>", tag.as_str());
    }
    table.push_str("</tr>");
    for (agent, row) in counts {
        let _ = write!(table, "<tr><td>{}</td>", escape(agent));
        for (i, n) in row.iter().enumerate() {
            let class = if i == 4 && *n > 0 {
                " class=\"bad\""
            } else {
                ""
            };
            let _ = write!(table, "<td{class}>{n}</td>");
        }
        table.push_str("</tr>");
    }
    table.push_str("</table>");
    table
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
            !html.contains("https://") && !html.contains(" src=") && !html.contains("fetch("),
            "self-contained, no fetches"
        );
        assert!(html.contains("id=\"filter\""), "a filter box");
    }

    /// A log of `pairs` files put and consumed, one consume of which (the middle one)
    /// names the wrong content; each pair `apart_ms` after the one before.
    fn long_log(pairs: usize, apart_ms: u64) -> Vec<Event> {
        let sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let bad = "0000000000000000000000000000000000000000000000000000000000000000";
        let mut lines = vec![
            r#"{"seq":1,"time":"2026-11-22T00:41:16.005372Z","agent":"master","tag":"join","role":"master"}"#.to_owned(),
            r#"{"seq":2,"time":"2026-11-22T00:41:16.009656Z","agent":"master","tag":"ready"}"#.to_owned(),
            r#"{"seq":3,"time":"2026-11-22T00:41:16.508567Z","agent":"slave","tag":"join","role":"slave"}"#.to_owned(),
            r#"{"seq":4,"time":"2026-11-22T00:41:16.509463Z","agent":"slave","tag":"ready"}"#.to_owned(),
        ];
        for i in 0..pairs {
            let notify = lines.len() + 1;
            let at = humantime::parse_rfc3339("2026-11-22T00:41:17.009042Z").expect("time")
                + std::time::Duration::from_millis(apart_ms * i as u64);
            let time = humantime::format_rfc3339_micros(at);
            lines.push(format!(r#"{{"seq":{notify},"time":"{time}","agent":"master","tag":"notify","op":"put","path":"f{i}","kind":"file","size":6,"sha256":"{sha}","mode":420}}"#));
            let got = if i == pairs / 2 { bad } else { sha };
            lines.push(format!(r#"{{"seq":{},"time":"{time}","agent":"slave","tag":"consume","op":"put","path":"f{i}","kind":"file","size":6,"sha256":"{got}","mode":420,"cause":{notify}}}"#, notify + 1));
        }
        lines
            .iter()
            .map(|l| Event::parse(l).expect("event"))
            .collect()
    }

    #[test]
    fn a_long_log_stays_small_summarised_around_what_went_wrong() {
        for pairs in [2_500, 50_000] {
            let events = long_log(pairs, 0);
            let report = check_log(&events, CheckOptions::default());
            assert!(!report.is_ok());
            let html = render(&events, Some(&report), &[]);
            // Bounded whatever the length: both ends, the window around the bad consume.
            assert!(
                html.len() < 1_500_000,
                "{} bytes for {pairs} pairs",
                html.len()
            );
            assert!(html.contains("events not drawn"), "gaps are summarised");
            let bad_seq = 4 + 2 * (pairs / 2) + 2;
            // The violation links to its event, which is drawn, and drawn red.
            assert!(html.contains(&format!("<a href=\"#e{bad_seq}\">")));
            let drawn = format!("<g id=\"e{bad_seq}\">");
            let at = html
                .find(&drawn)
                .unwrap_or_else(|| panic!("#{bad_seq} not drawn"));
            assert!(html[at..at + 600].contains("fill=\"#d1242f\""));
            // The summary counts every event, drawn or not.
            assert!(html.contains(&format!("<td>{pairs}</td>")));
        }
        // A short log, its events apart, is drawn whole.
        let events = long_log(100, 200);
        let html = render(&events, None, &[]);
        assert!(!html.contains("events not drawn") && !html.contains("burst of"));
        assert_eq!(html.matches("<g id=").count(), events.len());
    }

    /// 5,000 events close together, one consume wrong: the bursts before and after it are
    /// one row each with their counts, listed (collapsed) as lines under the picture; the
    /// wrong one and its neighbours are drawn; the page stays under 5 MB.
    #[test]
    fn bursts_are_one_row_each_expandable_as_lines() {
        let events = long_log(2_498, 0);
        assert_eq!(events.len(), 5_000);
        let report = check_log(&events, CheckOptions::default());
        let html = render(&events, Some(&report), &[]);
        assert!(html.len() < 5_000_000, "{} bytes", html.len());
        assert!(
            !html.contains("events not drawn"),
            "5,000 are all drawn or listed"
        );
        let rows = html.matches("<a href=\"#burst").count();
        assert_eq!(rows, 2, "before and after the bad consume");
        assert_eq!(html.matches("<details id=\"burst").count(), 2);
        let bad_seq = 4 + 2 * (2_498 / 2) + 2;
        assert!(html.contains(&format!("<g id=\"e{bad_seq}\">")));
        // Every event is drawn or listed once: dots plus burst lines.
        let listed = html.matches("<span class=\"line\">").count();
        assert_eq!(html.matches("<g id=\"e").count() + listed, events.len());
        let first_burst = html
            .split("<summary>")
            .nth(1)
            .and_then(|rest| rest.split("</summary>").next())
            .unwrap_or_default();
        assert_eq!(
            first_burst,
            "burst of 2498 events in 0.0 ms, #5 to #2502: 1249 consume put, 1249 notify put"
        );
    }
}
