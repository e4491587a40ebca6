//! `filesync status` on NATS: the report the embedded bus gives (`bus/status.rs`), built by
//! the asking link. Who is connected comes from the agents' leases (each master and
//! slave; a listener holds none, so none is listed); each name's position and open errors
//! from the link's rules, brought up to the log's head by reading it once from the lowest
//! slave's position (which also says how far behind each slave is, and what its last
//! error said); the sizes from the streams'.

use std::collections::HashMap;

use super::{lease, lost, Inner, Reader};
use crate::bus::client::ClientError;
use crate::bus::status::{self, Backlog, StatusReport};
use crate::event::Tag;

pub(super) async fn report(link: &Inner) -> Result<StatusReport, ClientError> {
    let log = link.log.get_info().await.map_err(lost)?;
    let content = link.content.get_info().await.map_err(lost)?;
    let (start, head) = (log.state.first_sequence.max(1), log.state.last_sequence);
    // Positions only grow: read from the lowest the rules knew at the dial (or the oldest
    // open error, for its text), the backlog of every slave is in what is read.
    let from = {
        let replica = link.replica();
        let agents = status::agents_of(&replica.rules, &[]);
        let first_error = agents
            .iter()
            .filter_map(|a| a.open_errors.first().map(|(seq, _)| *seq))
            .min();
        let lowest = status::backlog_start(&agents, start, head);
        first_error.map_or(lowest, |seq| seq.min(lowest))
    };
    let mut backlog = Backlog::default();
    let mut errors: HashMap<u64, String> = HashMap::new();
    let mut reader = Reader::new(link.log.clone(), link.address.clone(), Vec::new());
    let mut next = from;
    while next <= head {
        for event in reader.read(next, false).await? {
            next = event.seq + 1;
            link.judge(&event, reader.author(&event));
            backlog.observe(&event);
            if let (Some(Tag::Error), Some(error)) = (event.tag(), &event.body.error) {
                errors.insert(event.seq, error.clone());
            }
        }
    }
    let connected = lease::holders(&link.js, &link.address).await?;
    let mut agents = status::agents_of(&link.replica().rules, &connected);
    for agent in &mut agents {
        agent.last_error = agent
            .open_errors
            .last()
            .and_then(|(seq, _)| errors.get(seq).cloned());
    }
    backlog.fill(&mut agents);
    Ok(StatusReport {
        start,
        head,
        log_bytes: log.state.bytes,
        state_bytes: log.state.bytes + content.state.bytes,
        agents,
    })
}
