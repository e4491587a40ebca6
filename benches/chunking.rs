//! `cargo bench --bench chunking`: how the content-defined chunk sizes were chosen. For each
//! candidate (min / avg / max), over 1 GiB of random bytes: how many bytes of new chunks a
//! 1 MiB overwrite and a 1 MB insertion in the middle make (what a change costs in transfer
//! and storage), the manifest's size for the file, and the chunker's speed. Results are in
//! docs/BENCHMARKS.md and beside the constants in `master/src/chunk.rs`.

use std::collections::HashSet;
use std::time::Instant;

use filesync::testkit::noise;
use filesync_master::chunk::Chunker;
use filesync_master::hash::ContentHash;

const GIB: usize = 1 << 30;

/// The chunks of `data`, as (hash, length), and how long the cutting alone took.
fn chunk(data: &[u8], sizes: (usize, usize, usize)) -> (Vec<(ContentHash, usize)>, f64) {
    let mut lens = Vec::new();
    let started = Instant::now();
    let mut chunker = Chunker::with_sizes(sizes.0, sizes.1, sizes.2);
    let mut out = |c: &[u8]| lens.push(c.len());
    for piece in data.chunks(1 << 20) {
        chunker.push(piece, &mut out);
    }
    chunker.finish(&mut out);
    let secs = started.elapsed().as_secs_f64();
    let mut at = 0;
    let chunks = lens
        .into_iter()
        .map(|len| {
            let hash = ContentHash::of(&data[at..at + len]);
            at += len;
            (hash, len)
        })
        .collect();
    (chunks, secs)
}

fn new_bytes(before: &[(ContentHash, usize)], after: &[(ContentHash, usize)]) -> usize {
    let known: HashSet<ContentHash> = before.iter().map(|(h, _)| *h).collect();
    after
        .iter()
        .filter(|(h, _)| !known.contains(h))
        .map(|(_, len)| len)
        .sum()
}

fn main() {
    let data = noise(GIB, 7);
    let middle = GIB / 2 + 12_345;
    let mut overwritten = data.clone();
    overwritten[middle..middle + (1 << 20)].copy_from_slice(&noise(1 << 20, 8));
    let mut inserted = data[..middle].to_vec();
    inserted.extend_from_slice(&noise(1_000_000, 9));
    inserted.extend_from_slice(&data[middle..]);
    println!("| min / avg / max | chunks | new bytes, 1 MiB overwritten | new bytes, 1 MB inserted | manifest | chunking speed |");
    println!("|---|---|---|---|---|---|");
    for (min, avg, max) in [
        (4 << 10, 16 << 10, 64 << 10),
        (16 << 10, 64 << 10, 256 << 10),
        (64 << 10, 256 << 10, 1 << 20),
    ] {
        let (base, secs) = chunk(&data, (min, avg, max));
        let (over, _) = chunk(&overwritten, (min, avg, max));
        let (ins, _) = chunk(&inserted, (min, avg, max));
        let mib = |b: usize| b as f64 / f64::from(1 << 20);
        println!(
            "| {} / {} / {} KiB | {} | {:.2} MiB | {:.2} MiB | {:.2} MiB | {:.0} MiB/s |",
            min >> 10,
            avg >> 10,
            max >> 10,
            base.len(),
            mib(new_bytes(&base, &over)),
            mib(new_bytes(&base, &ins)),
            mib(base.len() * 36),
            1024.0 / secs
        );
    }
}
