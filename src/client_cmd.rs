//! Client commands (`watch`, `get`, `list`, `put`, `patch`, `delete`, and
//! `pending` and `resolve` for the offline queue), built on
//! `edgesync-client`: they share one local replica and offline queue per
//! (server, user), so a write made while the server is down is queued
//! durably and delivered, in order, by the next command that reaches it.
//! `watch` prints every change it applies from the feed, including those a
//! `put` beside it already stored; two `watch`es on one replica each follow
//! the feed from where they last read, so each prints every change.
//!
//! Exit codes: 0 ok, 1 runtime or server error, 2 usage error.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{ArgGroup, Args, Subcommand};
use edgesync_client::{
    is_valid_name, ChangeEvent, Client, Document, Error, FlushError, Mode, Mutation, Op,
    ParkReason, ParkedMutation, PendingMutation, Resolution, ResyncReason, SendOutcome, Status,
    SyncEvent, REPLICA_FILE,
};
use serde_json::Value;

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the edgesync server.
    #[arg(long, env = "EDGESYNC_URL", default_value = "http://127.0.0.1:8787")]
    pub url: String,
    /// Bearer token (see `edgesync token`).
    #[arg(long, env = "EDGESYNC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Directory of the local replica and offline queue [default:
    /// $XDG_DATA_HOME/edgesync/<hash of URL and user>].
    #[arg(long, env = "EDGESYNC_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Options of the writing commands.
#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    /// Fail (exit 1) instead of queueing the mutation when the server cannot
    /// take it now.
    #[arg(long, visible_alias = "no-queue")]
    pub fail_fast: bool,
    /// Only apply if the document is at this version (0, for put: only if
    /// it does not exist yet); otherwise the server refuses it with its
    /// current version (exit 1, or parked for `edgesync resolve` if it was
    /// queued). Without it the write is last-writer-wins: it applies to
    /// whatever the server holds, an edit made meanwhile elsewhere included.
    #[arg(long, value_name = "VERSION")]
    pub if_version: Option<u64>,
}

fn name(s: &str) -> Result<String, String> {
    if is_valid_name(s) {
        Ok(s.to_string())
    } else {
        Err("names are 1-128 characters of A-Z a-z 0-9 . _ ~ - (not . or ..)".into())
    }
}

/// How `resolve` settles a parked mutation: exactly one of the two.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("how").required(true).args(["discard", "overwrite"])))]
pub struct ResolveHow {
    /// Drop it: the server's state wins.
    #[arg(long)]
    pub discard: bool,
    /// Apply it anyway on top of the server's current version (a conflict
    /// is re-queued conditional on the version the server reported, so an
    /// edit made meanwhile conflicts again instead of being overwritten).
    #[arg(long)]
    pub overwrite: bool,
}

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Follow the user's changes live and print each one.
    ///
    /// Human-readable lines by default, one JSON object per line with
    /// --json. On a terminal (and without --json, whose stdout carries
    /// nothing but the JSON lines) a status line shows online/syncing,
    /// pending mutations and lag; otherwise stderr says when the connection
    /// or the error changes. Every change is printed once, also when another
    /// command on the same replica (`list`, a second `watch`) read it
    /// first; a change the replica already holds a newer version of is
    /// not printed: the newer one is. Stops on Ctrl-C.
    Watch {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this collection's changes.
        #[arg(long, value_parser = name)]
        collection: Option<String>,
        /// One JSON object per change per line.
        #[arg(long)]
        json: bool,
        /// Smart-poll (battery mode) instead of long-polling.
        #[arg(long)]
        battery: bool,
    },
    /// Print a document as JSON.
    ///
    /// Delivers queued mutations first, then reads from the server; when the
    /// server cannot be reached, prints the local copy (with a warning on
    /// stderr) unless --fail-fast.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(value_parser = name)]
        collection: String,
        #[arg(value_parser = name)]
        id: String,
        /// Fail instead of printing the local copy when the server cannot be
        /// reached.
        #[arg(long, visible_alias = "no-queue")]
        fail_fast: bool,
    },
    /// Print documents, one JSON object per line, by collection and id.
    ///
    /// Brings the local replica up to date first (delivering queued
    /// mutations too); when the server cannot be reached, prints the local
    /// copies (with a warning on stderr) unless --fail-fast.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this collection's documents.
        #[arg(long, value_parser = name)]
        collection: Option<String>,
        /// Fail instead of printing the local copies when the server cannot
        /// be reached.
        #[arg(long, visible_alias = "no-queue")]
        fail_fast: bool,
    },
    /// Create or replace a document; prints the stored document.
    ///
    /// Last writer wins unless --if-version is given. When the server is
    /// unreachable the write is queued durably (exit 0,
    /// a note on stderr) and sent by the next command that reaches it.
    Put {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(value_parser = name)]
        collection: String,
        #[arg(value_parser = name)]
        id: String,
        /// The JSON value, @FILE to read it from a file, or - for stdin.
        value: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Merge-patch a document (RFC 7396); prints the stored document.
    Patch {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(value_parser = name)]
        collection: String,
        #[arg(value_parser = name)]
        id: String,
        /// The JSON merge patch, @FILE, or - for stdin.
        patch: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Delete a document.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(value_parser = name)]
        collection: String,
        #[arg(value_parser = name)]
        id: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// List the mutations this replica has not delivered.
    ///
    /// Queued ones are sent, in order, by the next command that reaches the
    /// server; parked ones were refused by it (a failed --if-version, a
    /// document that no longer exists) and wait for `edgesync resolve`.
    /// Works offline.
    Pending {
        #[command(flatten)]
        client: ClientArgs,
        /// One JSON object per mutation per line.
        #[arg(long)]
        json: bool,
    },
    /// Settle a parked mutation: discard it or apply it anyway.
    ///
    /// An overwritten mutation is queued again and delivered at once when
    /// the server can be reached (or by the next command that reaches it).
    Resolve {
        #[command(flatten)]
        client: ClientArgs,
        /// The mutation's number, as `edgesync pending` shows it.
        number: u64,
        #[command(flatten)]
        how: ResolveHow,
    },
}

/// A usage error found after parsing (bad JSON, missing token): reported the
/// way clap reports its own, with exit code 2.
fn usage_error(msg: impl std::fmt::Display) -> ! {
    let err = clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{msg}\n"));
    err.exit()
}

/// Run a client command.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Watch {
            client,
            collection,
            json,
            battery,
        } => {
            let mode = if battery { Mode::Battery } else { Mode::Live };
            watch(open(&client, mode)?, collection, json).await
        }
        ClientCommand::Get {
            client,
            collection,
            id,
            fail_fast,
        } => get(open(&client, Mode::Live)?, &collection, &id, fail_fast).await,
        ClientCommand::List {
            client,
            collection,
            fail_fast,
        } => list(open(&client, Mode::Live)?, collection.as_deref(), fail_fast).await,
        ClientCommand::Put {
            client,
            collection,
            id,
            value,
            write,
        } => {
            let value = read_json(&value);
            let m = Mutation::put(collection, id, value);
            mutate(open(&client, Mode::Live)?, m, &write).await
        }
        ClientCommand::Patch {
            client,
            collection,
            id,
            patch,
            write,
        } => {
            let patch = read_json(&patch);
            let m = Mutation::patch(collection, id, patch);
            mutate(open(&client, Mode::Live)?, m, &write).await
        }
        ClientCommand::Delete {
            client,
            collection,
            id,
            write,
        } => {
            mutate(
                open(&client, Mode::Live)?,
                Mutation::delete(collection, id),
                &write,
            )
            .await
        }
        ClientCommand::Pending { client, json } => pending(&open(&client, Mode::Live)?, json),
        ClientCommand::Resolve {
            client,
            number,
            how,
        } => {
            let resolution = if how.overwrite {
                Resolution::Overwrite
            } else {
                Resolution::Discard
            };
            resolve(open(&client, Mode::Live)?, number, resolution).await
        }
    }
}

/// A JSON argument: inline, `@file`, or `-` for stdin.
fn read_json(arg: &str) -> Value {
    let (text, source) = if arg == "-" {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            usage_error(format_args!("cannot read the value from stdin: {e}"));
        }
        (s, "stdin".to_string())
    } else if let Some(path) = arg.strip_prefix('@') {
        match std::fs::read_to_string(path) {
            Ok(s) => (s, path.to_string()),
            Err(e) => usage_error(format_args!("cannot read {path}: {e}")),
        }
    } else {
        (arg.to_string(), "the argument".to_string())
    };
    // Read as the server reads a body: a member named twice is refused, not
    // silently collapsed to its last value before it is sent.
    edgesync_core::strict_json::parse(text.as_bytes())
        .unwrap_or_else(|e| usage_error(format_args!("{source} is not valid JSON: {e}")))
}

fn open(args: &ClientArgs, mode: Mode) -> anyhow::Result<Client> {
    let Some(token) = args.token.clone().filter(|t| !t.is_empty()) else {
        usage_error("no token: pass --token or set EDGESYNC_TOKEN (see `edgesync token`)");
    };
    // Without --state-dir, the library's default replica for this server
    // and user: the one an app embedding the client opens too.
    let mut builder = Client::builder(&args.url, token).mode(mode);
    if let Some(dir) = &args.state_dir {
        builder = builder.sqlite(dir.join(REPLICA_FILE));
    }
    match builder.build() {
        Err(Error::InvalidUrl(u)) => usage_error(format_args!("invalid --url {u}")),
        Err(Error::NoStorage(why)) => usage_error(format_args!("{why}; or pass --state-dir")),
        // A replica holds one user's queue and one server's cursor: never
        // send them elsewhere or as someone else.
        Err(e @ (Error::WrongServer { .. } | Error::WrongUser { .. })) => {
            let advice = match &args.state_dir {
                Some(dir) => format!(
                    "the state dir {} (--state-dir / EDGESYNC_STATE_DIR) holds another \
                     server's or user's replica: give each server and user its own \
                     --state-dir, or leave it unset (the default is one per server and user)",
                    dir.display()
                ),
                None => "check --url and --token (EDGESYNC_URL, EDGESYNC_TOKEN), or pass a \
                         --state-dir of its own"
                    .to_string(),
            };
            Err(anyhow!("{e}\n{advice}"))
        }
        other => other.context("cannot open the local replica"),
    }
}

fn print_json(doc: &Document) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if out.is_terminal() {
        serde_json::to_writer_pretty(&mut out, doc)?;
    } else {
        serde_json::to_writer(&mut out, doc)?;
    }
    writeln!(out)?;
    Ok(())
}

/// `put todos/a1`: what a mutation does, for messages.
fn what(m: &Mutation) -> String {
    format!("{} {}/{}", m.op.as_str(), m.collection, m.id)
}

fn describe_parked(p: &ParkedMutation) -> String {
    let what = what(&p.pending.mutation);
    match &p.reason {
        ParkReason::Conflict {
            current_version,
            problem,
        } => match (problem, current_version) {
            (Some(p), _) => format!("{what}: {p}"),
            (None, Some(v)) => format!("{what}: conflict, the document is at version {v}"),
            (None, None) => format!("{what}: conflict, the document does not exist"),
        },
        ParkReason::Rejected { status, problem } => match problem {
            Some(p) => format!("{what}: {p}"),
            None => format!("{what}: refused with status {status}"),
        },
    }
}

/// Report mutations from earlier commands that the server refused: they stay
/// parked in the replica (never dropped silently).
fn warn_parked(parked: &[ParkedMutation], except: Option<&str>) {
    let mut shown = false;
    for p in parked
        .iter()
        .filter(|p| Some(p.pending.key.as_str()) != except)
    {
        eprintln!(
            "warning: an earlier queued mutation (#{}) was not applied: {}",
            p.pending.seq,
            describe_parked(p)
        );
        shown = true;
    }
    if shown {
        eprintln!("{RESOLVE_ADVICE}");
    }
}

const RESOLVE_ADVICE: &str = "edgesync: `edgesync pending` lists what waits for a decision; \
     `edgesync resolve <number> --discard` or `--overwrite` settles it";

async fn mutate(client: Client, m: Mutation, write: &WriteArgs) -> anyhow::Result<()> {
    let m = match write.if_version {
        Some(v) => m.if_version(v),
        None => m,
    };
    if write.fail_fast {
        warn_parked(&client.parked()?, None);
        return match client.send_now(m).await? {
            SendOutcome::Delivered(d) => {
                if let Some(doc) = d.document {
                    print_json(&doc)?;
                }
                Ok(())
            }
            SendOutcome::Refused(p) => Err(anyhow!(describe_parked(&p))),
        };
    }
    let queued = client.enqueue(m)?;
    deliver(client, queued, Refused::Discard).await
}

/// What to do with a mutation the server refuses while its command waits.
#[derive(Clone, Copy, PartialEq)]
enum Refused {
    /// Report it and drop it: the value is still on the command line.
    Discard,
    /// Report it and keep it parked: the queue holds the only copy.
    KeepParked,
}

/// Flush the queue and report what became of `queued`: its document on
/// stdout when delivered; an error when the server refused it; exit 0 with
/// a note when it stays queued because the server cannot be reached.
async fn deliver(client: Client, queued: PendingMutation, refused: Refused) -> anyhow::Result<()> {
    let what = what(&queued.mutation);
    // A flush that stops at an error still reports what it delivered and
    // parked before: this mutation may be among them.
    let (report, failure) = match client.flush().await {
        Ok(report) => (report, None),
        Err(FlushError { report, error }) => (report, Some(error)),
    };
    // Every parked mutation, not only those parked now: each waits for a
    // decision until someone makes it.
    let parked = client.parked()?;
    warn_parked(&parked, Some(&queued.key));
    if let Some(d) = report.delivered.iter().find(|d| d.key == queued.key) {
        if let Some(doc) = &d.document {
            print_json(doc)?;
        }
        if let Some(e) = failure {
            let pending = client.status().pending;
            eprintln!(
                "edgesync: {e}\nedgesync: {pending} earlier queued mutation(s) stay queued; \
                 the next edgesync command that reaches the server delivers them"
            );
        }
        return Ok(());
    }
    // Parked here, or by another client sharing this replica.
    if let Some(p) = parked.iter().find(|p| p.pending.key == queued.key) {
        if refused == Refused::KeepParked {
            return Err(anyhow!(
                "{}; it stays parked as #{}",
                describe_parked(p),
                p.pending.seq
            ));
        }
        client.resolve(p.pending.seq, Resolution::Discard)?;
        return Err(anyhow!(describe_parked(p)));
    }
    if !client.pending()?.iter().any(|p| p.key == queued.key) {
        // Out of the queue, neither delivered nor parked by this flush:
        // another client sharing this replica (`edgesync watch`, say)
        // delivered it, and its result is in the replica.
        eprintln!("edgesync: {what} was delivered by another edgesync process on this replica");
        if queued.mutation.op != Op::Delete {
            let (collection, id) = (&queued.mutation.collection, &queued.mutation.id);
            if let Some(doc) = client.get(collection, id)? {
                print_json(&doc)?;
            }
        }
        return Ok(());
    }
    match failure {
        None => Err(anyhow!(
            "{what} was neither applied nor refused by the server"
        )),
        Some(e) if e.is_transient() => {
            let pending = client.status().pending;
            eprintln!(
                "edgesync: {e}\nedgesync: queued {what} ({pending} pending); the next edgesync \
                 command that reaches the server delivers it"
            );
            Ok(())
        }
        Some(e) => Err(anyhow!("{e} ({what} stays queued)")),
    }
}

/// `edgesync pending`: parked mutations first (they need a decision), then
/// the queue in delivery order.
fn pending(client: &Client, json: bool) -> anyhow::Result<()> {
    let parked = client.parked()?;
    let queued = client.pending()?;
    let mut out = std::io::stdout().lock();
    if json {
        for p in &parked {
            let line = pending_json(&p.pending, "parked", Some(&p.reason))?;
            writeln!(out, "{line}")?;
        }
        for q in &queued {
            writeln!(out, "{}", pending_json(q, "queued", None)?)?;
        }
        return Ok(());
    }
    if parked.is_empty() && queued.is_empty() {
        eprintln!("edgesync: nothing pending: every mutation was delivered");
        return Ok(());
    }
    for p in &parked {
        writeln!(out, "#{:<5} parked  {}", p.pending.seq, describe_parked(p))?;
    }
    for q in &queued {
        let mut line = format!("#{:<5} queued  {}", q.seq, what(&q.mutation));
        if let Some(v) = q.mutation.if_version {
            line.push_str(&format!(" if-version {v}"));
        }
        line.push_str(&format!(
            " (since {})",
            edgesync_core::rfc3339_millis(q.enqueued_at_ms)
        ));
        writeln!(out, "{line}")?;
    }
    if !parked.is_empty() {
        drop(out);
        eprintln!("{RESOLVE_ADVICE}");
    }
    Ok(())
}

fn pending_json(
    p: &PendingMutation,
    state: &str,
    reason: Option<&ParkReason>,
) -> anyhow::Result<String> {
    let mut v = serde_json::json!({
        "number": p.seq,
        "state": state,
        "key": p.key,
        "mutation": p.mutation,
        "enqueued_at": edgesync_core::rfc3339_millis(p.enqueued_at_ms),
    });
    if let Some(r) = reason {
        v["reason"] = serde_json::to_value(r)?;
    }
    Ok(v.to_string())
}

/// `edgesync resolve`: discard a parked mutation, or queue it again and try
/// to deliver it now.
async fn resolve(client: Client, number: u64, how: Resolution) -> anyhow::Result<()> {
    let parked = client.parked()?;
    let Some(p) = parked.iter().find(|p| p.pending.seq == number) else {
        let queued = client.pending()?.iter().any(|q| q.seq == number);
        return Err(if queued {
            anyhow!("#{number} is queued, not parked: the next command that reaches the server delivers it")
        } else {
            anyhow!("no parked mutation #{number} (see `edgesync pending`)")
        });
    };
    let what = describe_parked(p);
    let overwrite = how == Resolution::Overwrite;
    match client.resolve(number, how)? {
        None if overwrite => {
            eprintln!(
                "edgesync: settled #{number} ({what}): the document is gone on the server already"
            );
            Ok(())
        }
        None => {
            eprintln!("edgesync: discarded #{number} ({what})");
            Ok(())
        }
        Some(queued) => deliver(client, queued, Refused::KeepParked).await,
    }
}

async fn get(client: Client, collection: &str, id: &str, fail_fast: bool) -> anyhow::Result<()> {
    // Deliver queued writes first so the read sees them. What became of
    // those refused shows in the parked list just below; one still queued
    // for this document (a rate limit, say) is named with the answer.
    let flush_error = if client.status().pending > 0 {
        client.flush().await.err()
    } else {
        None
    };
    warn_parked(&client.parked()?, None);
    let queued_here = client
        .pending()?
        .iter()
        .any(|p| p.mutation.collection == collection && p.mutation.id == id);
    let why_queued = || match &flush_error {
        Some(e) => format!("a queued write to {collection}/{id} is not delivered yet ({e})"),
        None => format!("a queued write to {collection}/{id} is not delivered yet"),
    };
    match client.fetch(collection, id).await {
        Ok(Some(doc)) => {
            if queued_here {
                eprintln!("warning: {}; this is the server's version", why_queued());
            }
            print_json(&doc)
        }
        Ok(None) if queued_here => Err(anyhow!(
            "{collection}/{id}: not on the server: {}",
            why_queued()
        )),
        Ok(None) => Err(anyhow!("{collection}/{id}: document not found")),
        Err(e) if e.is_transient() && !fail_fast => match client.get(collection, id)? {
            Some(doc) => {
                eprintln!(
                    "warning: {e}; showing the local copy (version {})",
                    doc.version
                );
                print_json(&doc)
            }
            None => Err(anyhow!(
                "{e}; and there is no local copy of {collection}/{id}"
            )),
        },
        Err(e) => Err(e.into()),
    }
}

async fn list(client: Client, collection: Option<&str>, fail_fast: bool) -> anyhow::Result<()> {
    match client.sync_once().await {
        Ok(()) => {}
        Err(e) if e.is_transient() && !fail_fast => {
            eprintln!("warning: {e}; showing the local copies");
        }
        Err(e) => return Err(e.into()),
    }
    warn_parked(&client.parked()?, None);
    let mut out = std::io::stdout().lock();
    for doc in client.list(collection)? {
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
    }
    Ok(())
}

fn format_change(ev: &ChangeEvent) -> String {
    let mut line = String::new();
    if let Some(ts) = &ev.ts {
        line.push_str(ts);
        line.push(' ');
    }
    line.push_str(&format!(
        "{:<6} {}/{} v{}",
        ev.op.as_str(),
        ev.collection,
        ev.id,
        ev.version
    ));
    if let Some(v) = &ev.value {
        line.push(' ');
        line.push_str(&v.to_string());
    }
    if ev.origin != edgesync_client::Origin::Remote {
        line.push_str(&format!(" ({})", origin_name(ev.origin)));
    }
    line
}

fn origin_name(o: edgesync_client::Origin) -> &'static str {
    match o {
        edgesync_client::Origin::Remote => "remote",
        edgesync_client::Origin::Local => "local",
        edgesync_client::Origin::Snapshot => "snapshot",
        edgesync_client::Origin::Resync => "resync",
    }
}

fn format_status(s: &Status) -> String {
    // Not online and no error yet: the first request has not come back.
    let conn = match (s.online, &s.last_error) {
        (true, _) => "online",
        (false, None) => "connecting",
        (false, Some(_)) => "offline",
    };
    let activity = if s.syncing { "syncing" } else { "idle" };
    let lag = s.lag.map_or("?".to_string(), |l| l.to_string());
    let cursor = s.cursor.map_or("-".to_string(), |c| c.to_string());
    let mut line = format!(
        "[{conn} · {activity} · pending {} · lag {lag} · cursor {cursor}",
        s.pending
    );
    if s.parked > 0 {
        line.push_str(&format!(" · {} need attention", s.parked));
    }
    line.push(']');
    if let Some(e) = &s.last_error {
        // The innermost cause is the informative part ("Connection
        // refused"); the full chain would wrap the line.
        let cause = e.rsplit(": ").next().unwrap_or(e);
        line.push_str(&format!(" {cause}"));
    }
    line
}

/// Cut the status line to the terminal width: a wrapped line cannot be
/// cleared with a carriage return.
fn fit_width(line: &str) -> String {
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|w| *w > 10)
        .unwrap_or(80);
    line.chars().take(width - 1).collect()
}

/// Prints changes, keeping a status line under them on a terminal.
struct Printer {
    json: bool,
    tty: bool,
    status: Option<Status>,
    status_shown: bool,
}

impl Printer {
    fn change(&mut self, ev: &ChangeEvent) -> std::io::Result<()> {
        self.clear()?;
        let mut out = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer(&mut out, ev)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", format_change(ev))?;
        }
        drop(out);
        self.redraw()
    }

    /// A message on stderr, without tearing the status line.
    fn note(&mut self, msg: &str) -> std::io::Result<()> {
        self.clear()?;
        eprintln!("{msg}");
        self.redraw()
    }

    fn status(&mut self, s: Status) -> std::io::Result<()> {
        // Without a terminal there is no status line: say on stderr when
        // the connection or the error changes, so a piped `watch` that
        // stops receiving does not look idle.
        if !self.tty {
            let before = self.status.as_ref();
            if before.and_then(|b| b.last_error.as_ref()) != s.last_error.as_ref() {
                if let Some(e) = &s.last_error {
                    eprintln!(
                        "edgesync: {}: {e}",
                        if s.online { "error" } else { "offline" }
                    );
                }
            }
            // Back from an outage, not merely started.
            if s.online && before.is_some_and(|b| !b.online && b.last_error.is_some()) {
                eprintln!("edgesync: online again");
            }
        }
        self.status = Some(s);
        self.clear()?;
        self.redraw()
    }

    fn redraw(&mut self) -> std::io::Result<()> {
        let Some(s) = self.status.as_ref().filter(|_| self.tty) else {
            return Ok(());
        };
        let mut out = std::io::stdout().lock();
        write!(out, "{}", fit_width(&format_status(s)))?;
        self.status_shown = true;
        out.flush()
    }

    fn clear(&mut self) -> std::io::Result<()> {
        if self.status_shown {
            let mut out = std::io::stdout().lock();
            // Flushed now: stderr output must not land before it.
            write!(out, "\r\x1b[2K")?;
            out.flush()?;
            self.status_shown = false;
        }
        Ok(())
    }
}

async fn watch(client: Client, collection: Option<String>, json: bool) -> anyhow::Result<()> {
    // Lossless: every change is printed, however slowly the output is
    // read (a slow pipe slows the replica instead).
    let mut changes = client.changes(collection.as_deref());
    let mut events = client.events();
    let mut status = client.watch_status();
    let mut printer = Printer {
        json,
        // A status line shares stdout with what is printed: with --json,
        // stdout is for the JSON lines alone, terminal or not (`docker run
        // -t … | jq` sees a terminal inside).
        tty: !json && std::io::stdout().is_terminal(),
        status: None,
        status_shown: false,
    };
    warn_parked(&client.parked()?, None);
    client.start();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result = loop {
        tokio::select! {
            ev = changes.recv() => match ev {
                // The first snapshot is the starting point, not a change.
                Some(ev) if ev.origin == edgesync_client::Origin::Snapshot => {}
                Some(ev) => printer.change(&ev)?,
                None => break Ok(()),
            },
            ev = events.recv() => match ev {
                Ok(SyncEvent::AuthFailed(p)) => break Err(anyhow!("{p}")),
                Ok(SyncEvent::Conflict(p) | SyncEvent::Rejected(p)) => {
                    printer.note(&format!(
                        "warning: a queued mutation (#{}) was not applied: {}\n{RESOLVE_ADVICE}",
                        p.pending.seq,
                        describe_parked(&p)
                    ))?;
                }
                Ok(SyncEvent::Resynced { reason, cursor, documents }) => {
                    let why = match reason {
                        ResyncReason::Initial => "first sync",
                        ResyncReason::CursorAhead => "the server is behind this replica",
                        ResyncReason::CursorExpired => "the server no longer has the changes since the last sync",
                    };
                    let noun = if documents == 1 { "document" } else { "documents" };
                    printer.note(&format!(
                        "edgesync: loaded {documents} {noun} at cursor {cursor} ({why})"
                    ))?;
                }
                _ => {}
            },
            changed = status.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                let s = status.borrow_and_update().clone();
                printer.status(s)?;
            }
            _ = &mut ctrl_c => break Ok(()),
        }
    };
    printer.clear()?;
    client.stop().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_lines() {
        let ev = ChangeEvent {
            op: edgesync_client::Op::Put,
            collection: "todos".into(),
            id: "a1".into(),
            version: 17,
            value: Some(serde_json::json!({"t": 1})),
            ts: Some("2026-11-29T20:03:00.123Z".into()),
            origin: edgesync_client::Origin::Remote,
        };
        assert_eq!(
            format_change(&ev),
            r#"2026-11-29T20:03:00.123Z put    todos/a1 v17 {"t":1}"#
        );
        let s = Status {
            online: true,
            pending: 2,
            lag: Some(0),
            cursor: Some(17),
            ..Status::default()
        };
        assert_eq!(
            format_status(&s),
            "[online · idle · pending 2 · lag 0 · cursor 17]"
        );
        // Before the first answer nothing says the server is down.
        let starting = Status::default();
        assert!(format_status(&starting).starts_with("[connecting · "));
        let down = Status {
            last_error: Some("connect: Connection refused".into()),
            ..Status::default()
        };
        assert_eq!(
            format_status(&down),
            "[offline · idle · pending 0 · lag ? · cursor -] Connection refused"
        );
    }

    #[test]
    fn document_json_shape() {
        let d = Document {
            collection: "c".into(),
            id: "i".into(),
            version: 1,
            value: Value::Null,
            updated_at: None,
        };
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"collection":"c","id":"i","version":1,"value":null})
        );
    }
}
