//! Client commands (`watch`, `get`, `put`, `patch`, `delete`).
//!
//! TEMPORARY PLACEHOLDER: the client engineer owns this file and replaces
//! its contents; `main.rs` only relies on `ClientCommand` (a clap
//! subcommand enum, flattened into the top-level commands) and
//! `run(ClientCommand)`.

use clap::{Args, Subcommand};

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the edgesync server.
    #[arg(long, env = "EDGESYNC_URL", default_value = "http://127.0.0.1:8787")]
    pub url: String,
    /// Bearer token (see `edgesync token`).
    #[arg(long, env = "EDGESYNC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Follow the changes feed.
    Watch {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a document.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        collection: String,
        id: String,
    },
    /// Create or replace a document.
    Put {
        #[command(flatten)]
        client: ClientArgs,
        collection: String,
        id: String,
        /// The JSON value.
        value: String,
    },
    /// Merge-patch a document.
    Patch {
        #[command(flatten)]
        client: ClientArgs,
        collection: String,
        id: String,
        /// The JSON merge patch.
        patch: String,
    },
    /// Delete a document.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        collection: String,
        id: String,
    },
}

/// Run a client command.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    let name = match cmd {
        ClientCommand::Watch { .. } => "watch",
        ClientCommand::Get { .. } => "get",
        ClientCommand::Put { .. } => "put",
        ClientCommand::Patch { .. } => "patch",
        ClientCommand::Delete { .. } => "delete",
    };
    anyhow::bail!("`edgesync {name}` is not implemented yet")
}
