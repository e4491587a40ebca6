//! `filesync listen`: the event log, live, one readable line per event (or raw JSON); and
//! `filesync export`: the log as it stands, its lines unchanged, for `filesync check`.

use std::io::Write;

use std::time::Duration;

use anyhow::Context;

use crate::bus::{ClientError, Subscription};
use crate::cli::{shutdown_signal, ExportArgs, ListenArgs};
use crate::event::Event;
use crate::select::{PathMatch, Selector};

/// One readable line: time of day, seq, tag, agent, op, path, and cause or error.
pub fn format_line(event: &Event) -> String {
    let time = event.time.get(11..26).unwrap_or(&event.time);
    let body = &event.body;
    let mut line = format!(
        "{time}  #{:<6} {:<8} {:<10} {:<6} {}",
        event.seq,
        body.tag_name(),
        event.agent,
        body.op_name(),
        body.display_path()
    );
    if let Some(kind) = body.kind {
        line.push_str(&format!("  ({})", format!("{kind:?}").to_lowercase()));
    }
    line.push_str(&body.outcome());
    line.trim_end().to_owned()
}

/// Which events `listen` prints: each flag given is a set (repeated flags), and an event
/// must be in every set given; `--path` follows gitignore's rules over any path the event
/// names.
fn selector(args: &ListenArgs) -> anyhow::Result<Selector> {
    let touching = match args.path.is_empty() {
        true => None,
        false => Some(
            PathMatch::gitignore(&args.path).map_err(|err| anyhow::anyhow!("bad --path: {err}"))?,
        ),
    };
    Ok(Selector {
        tags: parse_all(&args.tag, "tag")?,
        ops: parse_all(&args.op, "op")?,
        agents: args.agent.clone(),
        touching,
        ..Selector::default()
    })
}

/// How long to wait between attempts to reach a bus that went away.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

pub async fn run(args: ListenArgs) -> anyhow::Result<i32> {
    let filter = selector(&args)?;
    let (hello, tls) = args.reader.hello("listener", args.announce)?;
    let bus = &args.reader.address()?;
    let dial = crate::bus::dial(bus, tls);
    let (client, welcome) = dial.dial(&hello).await?;
    let mut subscription = Subscription::new(client, args.from.unwrap_or(welcome.head + 1));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let stdout = std::io::stdout();
    let quiet_for = args.until_quiet.unwrap_or(Duration::MAX);
    loop {
        if args.to.is_some_and(|to| subscription.position() > to) {
            return Ok(0);
        }
        let event = tokio::select! {
            _ = &mut shutdown => return Ok(0),
            _ = tokio::time::sleep(quiet_for), if args.until_quiet.is_some() => return Ok(0),
            event = subscription.next() => event,
        };
        let event = match event {
            Err(ClientError::Truncated { start }) if start > subscription.position() => {
                eprintln!(
                    "filesync listen: events #{} to #{} were removed by retention; going on from #{start}",
                    subscription.position(),
                    start - 1
                );
                subscription.skip_to(start);
                continue;
            }
            Err(err) if err.is_connection() => {
                let from = subscription.position();
                eprintln!(
                    "filesync listen: lost the bus at {} ({err}); reconnecting",
                    bus
                );
                let reconnect = async {
                    loop {
                        tokio::time::sleep(RECONNECT_EVERY).await;
                        match dial.dial(&hello).await {
                            Ok((client, _)) => break Ok(client),
                            Err(err) if err.is_connection() => continue,
                            Err(err) => break Err(err),
                        }
                    }
                };
                let client = tokio::select! {
                    _ = &mut shutdown => return Ok(0),
                    client = reconnect => client?,
                };
                eprintln!("filesync listen: reconnected; going on from #{from}");
                subscription = Subscription::new(client, from);
                continue;
            }
            event => event?,
        };
        if args.to.is_some_and(|to| event.seq > to) {
            return Ok(0);
        }
        if !filter.matches(&event) {
            continue;
        }
        let line = if args.json {
            event.to_line()
        } else {
            format_line(&event)
        };
        let mut out = stdout.lock();
        // A closed pipe (`filesync listen | head`) is the reader's choice, not an error.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(0);
        }
    }
}

/// Writes the bus's log from its start to its head when we joined, unchanged, and ends.
/// A truncated log starts later than 1: stderr says so, as `check` would need its
/// checkpoint (on the bus's machine) to judge what came before.
pub async fn export(args: ExportArgs) -> anyhow::Result<i32> {
    let (hello, tls) = args.reader.hello("export", false)?;
    let dial = crate::bus::dial(&args.reader.address()?, tls);
    let (client, welcome) = dial.dial(&hello).await?;
    if welcome.start > 1 {
        eprintln!(
            "filesync export: the log starts at #{} (retention removed what came before; its checkpoint is on the bus's machine)",
            welcome.start
        );
    }
    let mut subscription = Subscription::new(client, welcome.start);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while subscription.position() <= welcome.head {
        let event = match subscription.next().await {
            Err(ClientError::Truncated { start }) => anyhow::bail!(
                "retention removed events #{} to #{} while they were exported; export again",
                subscription.position(),
                start - 1
            ),
            event => event?,
        };
        if writeln!(out, "{}", event.to_line()).is_err() {
            return Ok(0);
        }
    }
    out.flush().context("cannot write the log")?;
    Ok(0)
}

/// Each of `values` (a repeated `--what`) as a `T`.
fn parse_all<T: serde::de::DeserializeOwned>(
    values: &[String],
    what: &str,
) -> anyhow::Result<Vec<T>> {
    values
        .iter()
        .map(|v| parse_enum(v).with_context(|| format!("bad --{what}")))
        .collect()
}

fn parse_enum<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .with_context(|| format!("unknown value {text:?}"))
}
