//! Logging for `serve`: to the journal when systemd started us (it sets `JOURNAL_STREAM`), else
//! to stderr. `RUST_LOG` filters as usual; the default is `info`.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Falls back to stderr if the journal socket cannot be opened.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journald) => {
                registry
                    .with(journald.with_syslog_identifier("lumen-broker".to_string()))
                    .init();
                return;
            }
            Err(e) => eprintln!("lumen-broker: journal unavailable ({e}); logging to stderr"),
        }
    }
    // Colours only for a person at a terminal, not in files or test output.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi),
        )
        .init();
}
