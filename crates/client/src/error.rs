use crate::location::NoDefaultLocation;
use crate::model::Problem;
use crate::storage::StorageError;
use std::time::Duration;

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local replica store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No HTTP response: connection refused, DNS, TLS, timeout…
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server answered with an error status.
    #[error("{problem}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's problem document (or one made up from the status).
        problem: Problem,
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
    },
    /// A collection or document name the server would refuse.
    #[error(
        "invalid {what} {name:?}: names are 1-128 characters of A-Z a-z 0-9 . _ ~ - (not . or ..)"
    )]
    InvalidName {
        /// `collection` or `id`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A mutation that cannot be sent as given.
    #[error("invalid mutation: {0}")]
    InvalidMutation(String),
    /// No storage was configured, and the default replica location
    /// ([`crate::default_replica_path`]) cannot be determined.
    #[error(
        "no storage configured and no default replica location ({0}): \
         call .sqlite(path), .memory() or .storage(..)"
    )]
    NoStorage(#[from] NoDefaultLocation),
    /// The server URL is unusable.
    #[error("invalid server URL {0}")]
    InvalidUrl(String),
    /// The server answered something the contract does not allow.
    #[error("unexpected response from the server: {0}")]
    Protocol(String),
    /// `resolve` named a mutation that is not parked.
    #[error("no parked mutation with queue position {0}")]
    NotParked(u64),
    /// The replica follows another server: its cursor and queue mean
    /// nothing here. Use one replica (storage) per server and user.
    #[error(
        "the local replica belongs to the server {replica}, not {given}: \
         use a separate replica per server and user"
    )]
    WrongServer {
        /// The server the replica belongs to (normalised URL).
        replica: String,
        /// The server this client was given (normalised URL).
        given: String,
    },
    /// The replica holds another user's documents and queued mutations:
    /// sending them with this token would act as the wrong user. Use one
    /// replica (storage) per server and user.
    #[error(
        "the local replica belongs to the user {replica:?}, but the token is {}: \
         use a separate replica per server and user",
        match .given { Some(u) => format!("for {u:?}"), None => "not a JWT with a `sub`".into() }
    )]
    WrongUser {
        /// The user the replica belongs to.
        replica: String,
        /// The token's `sub` (`None`: unreadable).
        given: Option<String>,
    },
    /// A mutation was to be queued while the replica knows no user (the
    /// token has no readable `sub`): it would later go out with whichever
    /// user's token came next. Every edgesync token names its user.
    #[error(
        "cannot queue a mutation: the token is not a JWT with a `sub`, so the replica \
         does not know whose mutation it is"
    )]
    UnknownUser,
}

impl Error {
    /// Whether retrying later may succeed (network trouble, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable(_) => true,
            Error::Server { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}
