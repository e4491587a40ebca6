//! `filesync listen`: the event log, live, one readable line per event (or raw JSON).

use std::io::Write;

use anyhow::Context;
use globset::Glob;

use crate::bus::{BusClient, ClientError, Hello, Subscription};
use crate::cli::{shutdown_signal, ListenArgs};
use crate::event::{Event, Role};

/// One readable line: time of day, seq, tag, agent, op, path, and cause or error.
pub fn format_line(event: &Event) -> String {
    let time = event.time.get(11..26).unwrap_or(&event.time);
    let tag = event.body.tag.map(|t| t.as_str()).unwrap_or("?");
    let op = event.body.op.map(|o| o.as_str()).unwrap_or("");
    let mut line = format!(
        "{time}  #{:<6} {tag:<8} {:<10} {op:<6} {}",
        event.seq,
        event.agent,
        event.body.display_path()
    );
    if let Some(kind) = event.body.kind {
        line.push_str(&format!("  ({})", format!("{kind:?}").to_lowercase()));
    }
    if let Some(cause) = event.body.cause {
        line.push_str(&format!("  <- #{cause}"));
    }
    if let Some(error) = &event.body.error {
        line.push_str(&format!("  ERROR: {error}"));
    }
    line.trim_end().to_owned()
}

pub async fn run(args: ListenArgs) -> anyhow::Result<i32> {
    let tag = args
        .tag
        .as_deref()
        .map(parse_enum::<crate::event::Tag>)
        .transpose()?;
    let op = args
        .op
        .as_deref()
        .map(parse_enum::<crate::event::Op>)
        .transpose()?;
    let glob = args
        .path
        .as_deref()
        .map(|g| Glob::new(g).map(|g| g.compile_matcher()))
        .transpose()
        .context("bad --path glob")?;
    let tls = args.client_tls()?;
    let hello = Hello::new(Role::Listener, "listener", args.token);
    let (client, welcome) = BusClient::connect_with(&args.bus, hello, tls.as_ref()).await?;
    let mut subscription = Subscription::new(client, args.from.unwrap_or(welcome.head + 1));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let stdout = std::io::stdout();
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => return Ok(0),
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
            event => event?,
        };
        let keep = tag.is_none_or(|t| event.body.tag == Some(t))
            && op.is_none_or(|o| event.body.op == Some(o))
            && args.agent.as_ref().is_none_or(|a| &event.agent == a)
            && glob.as_ref().is_none_or(|g| {
                [&event.body.path, &event.body.from, &event.body.to]
                    .into_iter()
                    .flatten()
                    .any(|p| g.is_match(p))
            });
        if !keep {
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

fn parse_enum<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .with_context(|| format!("unknown value {text:?}"))
}
