//! `berth run`: a command in a new instance of the active deployment's
//! image. Attached (the default), stdin is forwarded, stdout and stderr
//! come back apart and live, and berth exits with the command's exit code;
//! `--detach` prints the run's id (`berth logs <id>` shows its output).
//!
//! From a terminal (stdin and stdout both terminals, or `--tty`) the
//! command gets a terminal of its own: the local one is in raw mode for the
//! session (restored on every way out), its window size follows the local
//! one (SIGWINCH), and stdout and stderr are one stream.

use super::Ctx;
use crate::client::ClientError;
use crate::output::emitln;
use base64::Engine as _;
use berth_core::model::LogStream;
use berth_core::ops::{CreateRun, Run, RunLine, RunStatus, RunStreamEvent, TtyFrame};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long, env = "BERTH_PROJECT")]
    project: String,
    /// The service whose active deployment's image runs it [default: web].
    #[arg(long)]
    service: Option<String>,
    /// [default: production]
    #[arg(long = "env")]
    environment: Option<String>,
    /// Return at once with the run's id; `berth logs <id>` shows its output.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Do not forward stdin (the command reads end of file).
    #[arg(long)]
    no_stdin: bool,
    /// Give the command a terminal even when berth's stdin or stdout is
    /// not one. With a terminal, stdout and stderr are one stream.
    /// [default: a terminal when stdin and stdout both are terminals]
    #[arg(long, short = 't', conflicts_with_all = ["no_tty", "detach"])]
    tty: bool,
    /// Never give the command a terminal: stdout and stderr stay apart.
    #[arg(long = "no-tty", short = 'T')]
    no_tty: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// `berth run`; returns the exit code to leave with.
pub async fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<u8> {
    let body = CreateRun {
        service: a.service,
        environment: a.environment,
        command: a.command,
    };
    if a.detach {
        let reply = ctx.client.create_run(&a.project, &body).await?;
        if ctx.json {
            ctx.print_json(&reply)?;
        } else {
            let run = reply.parse()?;
            emitln(&format!(
                "run {} started; follow it with: berth logs {} --follow",
                run.id, run.id
            ));
        }
        return Ok(0);
    }
    let tty =
        a.tty || (!a.no_tty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
    if tty {
        return run_tty(ctx, &a.project, &body, !a.no_stdin).await;
    }
    let stdin = (!a.no_stdin && stdin_may_have_input()).then(stdin_body);
    let mut resp = ctx.client.attach_run(&a.project, &body, stdin).await?;
    let mut buf: Vec<u8> = Vec::new();
    let mut done: Option<Run> = None;
    loop {
        let chunk = ctx.client.next_chunk(&mut resp).await?;
        let Some(chunk) = chunk else { break };
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let event: RunStreamEvent =
                serde_json::from_slice(&line).map_err(|e| ClientError::Decode(e.to_string()))?;
            if ctx.json {
                // The API's events as they came, one JSON object a line.
                emitln(String::from_utf8_lossy(&line).trim_end());
            }
            match event {
                RunStreamEvent::Started { .. } => {}
                RunStreamEvent::Line(l) if !ctx.json => print_line(&l),
                RunStreamEvent::Line(_) | RunStreamEvent::Output { .. } => {}
                RunStreamEvent::Exit { run } => done = Some(*run),
            }
        }
    }
    let run = done.ok_or_else(|| {
        anyhow::anyhow!("the connection to berth ended before the run did; see berth logs")
    })?;
    exit_code_of(&run)
}

/// `berth run` with a terminal. The local terminal is raw until the
/// session ends; the guard restores it on every way out (the end, an
/// error, SIGTERM/SIGHUP/SIGINT sent to berth, a panic).
async fn run_tty(
    ctx: &Ctx,
    project: &str,
    body: &CreateRun,
    with_stdin: bool,
) -> anyhow::Result<u8> {
    use tokio::signal::unix::{signal, SignalKind};
    let size = crate::terminal::size().unwrap_or(crate::terminal::Size { cols: 80, rows: 24 });
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let frames = tty_body(with_stdin)?;
    let mut resp = ctx
        .client
        .attach_run_tty(project, body, (size.cols, size.rows), with_stdin, frames)
        .await?;
    let raw = crate::terminal::RawMode::enable()?;
    let mut buf: Vec<u8> = Vec::new();
    let mut done: Option<Run> = None;
    let ended: anyhow::Result<()> = loop {
        let chunk = tokio::select! {
            c = ctx.client.next_chunk(&mut resp) => c,
            _ = hangup.recv() => break Err(anyhow::anyhow!("hung up; the run goes on: see berth logs")),
            _ = terminate.recv() => break Err(anyhow::anyhow!("terminated; the run goes on: see berth logs")),
            _ = interrupt.recv() => break Err(anyhow::anyhow!("interrupted; the run goes on: see berth logs")),
        };
        let chunk = match chunk {
            Ok(Some(c)) => c,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        buf.extend_from_slice(&chunk);
        let mut failed = None;
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let event: RunStreamEvent = match serde_json::from_slice(&line) {
                Ok(e) => e,
                Err(e) => {
                    failed = Some(ClientError::Decode(e.to_string()));
                    break;
                }
            };
            if ctx.json {
                emitln(String::from_utf8_lossy(&line).trim_end());
            }
            match event {
                RunStreamEvent::Output { data } if !ctx.json => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data.as_bytes())
                        .map_err(|e| ClientError::Decode(e.to_string()))?;
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(&bytes);
                    let _ = o.flush();
                }
                RunStreamEvent::Exit { run } => done = Some(*run),
                _ => {}
            }
        }
        if let Some(e) = failed {
            break Err(e.into());
        }
    };
    // The terminal as it was before anything else is printed.
    drop(raw);
    ended?;
    let run = done.ok_or_else(|| {
        anyhow::anyhow!("the connection to berth ended before the run did; see berth logs")
    })?;
    exit_code_of(&run)
}

/// The body of a run with a terminal: stdin's bytes (read on a thread, as
/// for [`stdin_body`]) and the window's new sizes (on SIGWINCH) as
/// [`TtyFrame`]s. It ends when stdin does.
fn tty_body(with_stdin: bool) -> anyhow::Result<reqwest::Body> {
    use tokio::signal::unix::{signal, SignalKind};
    let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    if with_stdin {
        std::thread::spawn(move || read_stdin(in_tx));
    } else {
        // No stdin: the body stays open for the sizes until the run ends.
        std::mem::forget(in_tx);
    }
    let (size_tx, size_rx) = tokio::sync::mpsc::channel::<crate::terminal::Size>(4);
    let mut winch = signal(SignalKind::window_change())?;
    tokio::spawn(async move {
        while winch.recv().await.is_some() {
            if let Some(size) = crate::terminal::size() {
                if size_tx.send(size).await.is_err() {
                    return;
                }
            }
        }
    });
    let frames = futures::stream::unfold((in_rx, size_rx), |(mut in_rx, mut size_rx)| async move {
        let item = tokio::select! {
            biased;
            Some(size) = size_rx.recv() => Ok(TtyFrame::Resize { cols: size.cols, rows: size.rows }.encode()),
            input = in_rx.recv() => match input? {
                Ok(bytes) => Ok(TtyFrame::Stdin(bytes).encode()),
                Err(e) => Err(e),
            },
        };
        Some((item, (in_rx, size_rx)))
    });
    Ok(reqwest::Body::wrap_stream(frames))
}

/// The exit code `berth run` leaves with: the command's (0-255), or an
/// error when it never ran.
pub fn exit_code_of(run: &Run) -> anyhow::Result<u8> {
    match run.exit_code {
        Some(code) => {
            if run.oom_killed {
                eprintln!("berth: run {}: {}", run.id, run.outcome());
            } else if code == 137 {
                // SIGKILL that berth did not send: on cgroup v2 the engine
                // sometimes misses the kernel's OOM event, so say what it
                // most likely was without claiming it.
                eprintln!(
                    "berth: run {}: killed by SIGKILL (exit 137): most likely out of memory \
                     (the engine did not confirm an out of memory kill)",
                    run.id
                );
            }
            Ok(u8::try_from(code).unwrap_or(1))
        }
        None => anyhow::bail!("run {}: {}", run.id, run.outcome()),
    }
}

/// `berth logs <run-id>`: the run's output, and with `follow` what comes
/// until it ends.
pub async fn logs(ctx: &Ctx, first: Run, follow: bool) -> anyhow::Result<()> {
    let mut run = first;
    let mut printed = 0u64;
    loop {
        let start = run.dropped_lines;
        for (i, l) in run.output.iter().enumerate() {
            let at = start + i as u64;
            if at >= printed {
                if ctx.json {
                    emitln(&serde_json::to_string(l)?);
                } else {
                    print_line(l);
                }
                printed = at + 1;
            }
        }
        if !follow || run.status != RunStatus::Running {
            if !ctx.json && run.status != RunStatus::Running {
                eprintln!("berth: run {}: {}", run.id, run.outcome());
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        run = ctx.client.get_run(&run.id).await?.parse()?;
    }
}

fn print_line(l: &RunLine) {
    // Output goes out as it comes: flush every line.
    match l.stream {
        LogStream::Stderr => {
            let mut e = std::io::stderr().lock();
            let _ = writeln!(e, "{}", l.line);
            let _ = e.flush();
        }
        _ => {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{}", l.line);
            let _ = o.flush();
        }
    }
}

/// Whether stdin is worth forwarding: a terminal, a pipe, a socket or a
/// file, but not /dev/null (or another device) nor a closed stdin, which
/// the command reads as end of file anyway. A run on a runtime that cannot
/// forward stdin (Swarm) then works from scripts and tests without
/// `--no-stdin`.
fn stdin_may_have_input() -> bool {
    use std::io::IsTerminal;
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return true;
    }
    let Ok(fd) = stdin.as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => {
            let t = m.file_type();
            !(t.is_char_device() || t.is_block_device())
        }
        Err(_) => false,
    }
}

/// This process's stdin as a streamed request body (a terminal, a pipe or
/// a file), read on a thread so a terminal nobody types on never blocks
/// the end of the run.
fn stdin_body() -> reqwest::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    std::thread::spawn(move || read_stdin(tx));
    reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Sends this process's stdin to `tx` until end of file (or `tx` closes).
fn read_stdin(tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>) {
    use std::io::Read;
    // Not `stdin().lock()`: the raw mode guard needs stdin's handle while
    // this thread waits in `read`.
    let mut stdin = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}
