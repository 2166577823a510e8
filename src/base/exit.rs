//! Exit codes, and the trait by which every error says which one it ends the process with.
//!
//! Exit codes follow sysexits(3) so a unit (the watch-mode drop-in) can name the permanent
//! ones in `RestartPreventExitStatus=` and let systemd retry only what a retry can fix.
//! Each module's error implements [`ExitStatus`]; `main` asks the error a stage returned.

/// Process exit codes, documented in README.md ("Exit codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    /// `status`: a stage failed (or `--wait` ran out of time); `query`: no such key.
    Failed = 1,
    /// `status` without `--wait`: a stage is still pending or running.
    StillRunning = 2,
    /// EX_USAGE: bad flags or arguments, or an endpoint that cannot be used as written.
    /// Permanent.
    Usage = 64,
    /// EX_DATAERR: user-data present but not valid parameters. Permanent.
    BadUserData = 65,
    /// EX_NOINPUT: the instance has no user-data (after the grace period), a user-data file
    /// is missing or empty, `query` finds no parameters yet, or a sync source has nothing
    /// in it (an empty prefix, a missing archive, a missing `file://` directory). Permanent.
    NoInput = 66,
    /// EX_UNAVAILABLE: IMDS is disabled, or IMDSv2 is required but not offered. Permanent.
    ImdsDisabled = 69,
    /// EX_SOFTWARE: a boot hook failed or outlived its deadline.
    HookFailed = 70,
    /// EX_CANTCREAT: an output file or the state dir cannot be written.
    CantCreate = 73,
    /// EX_TEMPFAIL: IMDS or S3 did not answer usefully before the deadline. A restart may help.
    TempFail = 75,
    /// EX_PROTOCOL: downloaded data failed verification (size, checksum, MD5, or a pinned
    /// SHA-256).
    Protocol = 76,
    /// EX_NOPERM: AWS refused access (AccessDenied, NoSuchBucket, bad keys) or there are no
    /// credentials at all, a file cannot be read for lack of permission, or a command that
    /// needs root was run as another user.
    NoPerm = 77,
    /// A new generation's `verify` command failed: the previous generation was swapped
    /// back (or, with none kept, the failed one stays, marked failed). Not EX_*: its own
    /// code, so a script can tell a release that failed its health check from a sync
    /// that failed.
    VerifyFailed = 79,
    /// The shell's code: the app's command exists but cannot be executed.
    CannotExecute = 126,
    /// The shell's code: the app's command was not found.
    NotFound = 127,
}

/// What an error ends the process with. Implemented next to each error type, so the
/// meaning of a failure is decided where the failure is understood.
pub trait ExitStatus {
    fn exit_code(&self) -> ExitCode;
}
