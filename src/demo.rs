//! `filesync demo`: a master, a slave and a listener as real processes in fresh temporary
//! directories; a walkthrough of create, modify, move (file and directory) and delete, with
//! the events printed live by the listener; then the checker's verdict. Exit 0 only if the
//! log checks out and the directories match.

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::check::CheckOptions;
use crate::event::Op;
use crate::testkit::{Cluster, Pattern};

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n== {text}");
    let _ = out.flush();
}

/// Runs the demo; with `keep`, its directories and log stay for `check --html` and a look.
pub async fn run(keep: bool) -> anyhow::Result<i32> {
    let bin = std::env::current_exe().context("cannot find the filesync binary")?;
    say("starting a master and a slave in temporary directories");
    let mut cluster = Cluster::start(&bin, "demo", 1)
        .await
        .map_err(|e| anyhow!(e))?;
    let master = cluster.master_dir();
    let slave = cluster.slaves[0].dir.clone();
    println!(
        "   master dir: {}\n   slave dir:  {}\n   bus:        {}",
        master.display(),
        slave.display(),
        cluster.addr
    );
    println!("   event log:  {}", cluster.log_path().display());

    say("a listener prints every event as the bus appends it:");
    let mut listener = Command::new(&bin)
        .args(["listen", "--from", "1", "--bus", &cluster.addr])
        .stdout(Stdio::inherit())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the listener")?;

    let outcome = walkthrough(&mut cluster).await;
    // Let the listener print the last events before we stop it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = listener.kill();
    let _ = listener.wait();
    if let Err(err) = outcome {
        let kept = cluster.keep();
        println!(
            "\nDEMO FAILED: {err}\n(directories and process logs kept in {})",
            kept.display()
        );
        return Ok(1);
    }

    say("stopping the slave and the master (SIGTERM: each appends `leave`)");
    cluster.stop_slave(0).map_err(|e| anyhow!(e))?;
    cluster.stop_master().map_err(|e| anyhow!(e))?;

    say("filesync check: the log's invariants, and both directories against the log");
    let report = cluster.check(CheckOptions::default());
    print!("{report}");
    if report.is_ok() {
        println!("\nThe slave mirrors the master, and the log proves it.");
        if keep {
            let log = cluster.log_path();
            let kept = cluster.keep();
            println!("Kept in {}. Draw the log as a timeline:", kept.display());
            println!("  filesync check {} --html timeline.html", log.display());
        }
        println!("Next: `cargo test` runs the suite; README.md walks through two terminals.");
        Ok(0)
    } else {
        let kept = cluster.keep();
        println!(
            "\nDEMO FAILED (directories and logs kept in {})",
            kept.display()
        );
        Ok(1)
    }
}

async fn walkthrough(cluster: &mut Cluster) -> anyhow::Result<()> {
    let master = cluster.master_dir();
    let pause = || tokio::time::sleep(Duration::from_millis(150));
    // The seed's expectation: a notify by the master, then a consume by the slave.
    let expect_pair = |op: Op, path: &str| {
        vec![
            Pattern::notify().by("master").op(op).path(path),
            Pattern::consume().by("slave").op(op).path(path),
        ]
    };

    say("create hello.txt");
    fs::write(master.join("hello.txt"), "hello, world\n")?;
    cluster
        .events
        .expect_all(expect_pair(Op::Put, "hello.txt"))
        .await?;
    pause().await;

    say("modify hello.txt");
    fs::OpenOptions::new()
        .append(true)
        .open(master.join("hello.txt"))?
        .write_all(b"and again\n")?;
    cluster
        .events
        .expect_all(expect_pair(Op::Put, "hello.txt"))
        .await?;
    pause().await;

    say("mkdir -p docs/guide and write docs/guide/intro.md");
    fs::create_dir_all(master.join("docs/guide"))?;
    fs::write(master.join("docs/guide/intro.md"), "# Intro\n")?;
    cluster
        .events
        .expect_all(expect_pair(Op::Put, "docs/guide/intro.md"))
        .await?;
    pause().await;

    say("move hello.txt to greeting.txt (one move event, no copy)");
    fs::rename(master.join("hello.txt"), master.join("greeting.txt"))?;
    cluster
        .events
        .expect_all(expect_pair(Op::Move, "greeting.txt"))
        .await?;
    pause().await;

    say("move the directory docs to manual (one move event for the whole tree)");
    fs::rename(master.join("docs"), master.join("manual"))?;
    cluster
        .events
        .expect_all(expect_pair(Op::Move, "manual"))
        .await?;
    pause().await;

    say("delete greeting.txt");
    fs::remove_file(master.join("greeting.txt"))?;
    cluster
        .events
        .expect_all(expect_pair(Op::Delete, "greeting.txt"))
        .await?;
    Ok(())
}
