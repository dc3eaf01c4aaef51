//! Test-only crash points of the batch lane: `EMBQ_TEST_ABORT_AT=<step>` makes the worker abort
//! (no clean-up, like a SIGKILL) when it reaches that step, so a test can prove a restarted
//! worker recovers from a crash at each step of submission and collection. Unset, nothing
//! happens.

use std::sync::OnceLock;

/// The variable naming the step.
pub const ABORT_AT_VAR: &str = "EMBQ_TEST_ABORT_AT";

/// The steps (`after_record`, `after_upload`, `after_create`, `after_download`, `mid_store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The batch and its jobs are recorded; nothing uploaded.
    AfterRecord,
    /// The file is uploaded; its id not yet recorded.
    AfterUpload,
    /// The provider batch is created; its id not yet recorded.
    AfterCreate,
    /// Results downloaded; none stored.
    AfterDownload,
    /// The first chunk of results stored; the rest not.
    MidStore,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Self::AfterRecord => "after_record",
            Self::AfterUpload => "after_upload",
            Self::AfterCreate => "after_create",
            Self::AfterDownload => "after_download",
            Self::MidStore => "mid_store",
        }
    }
}

/// Aborts the process if the test asked for a crash at `step`.
pub(super) fn check(step: Step) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(ABORT_AT_VAR).ok());
    if at.as_deref() == Some(step.name()) {
        eprintln!("{ABORT_AT_VAR}={}: aborting here", step.name());
        std::process::abort();
    }
}
