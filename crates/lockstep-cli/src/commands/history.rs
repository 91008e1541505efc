//! Where `lockstep status` and `lockstep runs` read the run history from, also while the
//! config file is invalid.
//!
//! The history lives in the state store, and a daemon keeps running the last config it
//! accepted when the file on disk breaks; so an invalid file must not hide the history. Each
//! command that opens the state store of a valid config remembers the file's `[state]` table
//! (as written, before interpolation, so no value from the environment is stored) in
//! `.lockstep/<config file name>.last-state.toml` next to the config file. While the file is
//! invalid, `status` and `runs` print its errors, warn, and read the state store that table
//! names (or the one `--state URL` names).

use std::path::{Path, PathBuf};

use lockstep_config::Config;
use lockstep_state::StateStore;

use super::{print_config_errors, CliError};

/// Where the history comes from.
pub struct History {
    /// The config, when the file is valid.
    pub config: Option<Config>,
    pub state: Box<dyn StateStore>,
}

/// The remembered `[state]` table of the config file at `config_path`.
fn remembered_path(config_path: &Path) -> Option<PathBuf> {
    let dir = config_path.parent()?;
    let name = config_path.file_name()?.to_string_lossy();
    Some(
        dir.join(".lockstep")
            .join(format!("{name}.last-state.toml")),
    )
}

/// Remembers where the state store of `config` is. Failing to write is not an error (a
/// read-only directory): only the fallback is lost, and that is logged.
pub fn remember_state(config: &Config) {
    let path = std::path::absolute(&config.path).unwrap_or_else(|_| config.path.clone());
    let Some(file) = remembered_path(&path) else {
        return;
    };
    let section = config.state_section();
    if std::fs::read_to_string(&file).ok().as_deref() == Some(section.as_str()) {
        return;
    }
    let written = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&file, &section));
    if let Err(e) = written {
        tracing::debug!(
            "cannot remember the state url in {}: {e}; `lockstep status` and `lockstep runs` \
             will need --state while the config file is invalid",
            file.display()
        );
    }
}

/// Loads the config for a command that shows history. A valid file gives its config and
/// state store (or the one `state_url` names). An invalid one prints its errors and a
/// warning, and gives the state store `state_url` names or, without it, the one its last
/// valid version named.
pub async fn open(config_path: &Path, state_url: Option<&str>) -> Result<History, CliError> {
    let path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_owned());
    // A relative SQLite path on the command line is relative to where it was typed.
    let state_url = state_url.map(resolve_sqlite_arg);
    let state_url = state_url.as_deref();
    let errors = match lockstep_config::load(&path) {
        Ok(config) => {
            super::enter_config_dir(&config)?;
            let state = match state_url {
                Some(url) => open_url(url).await?,
                None => super::state(&config).await?,
            };
            return Ok(History {
                config: Some(config),
                state,
            });
        }
        Err(errors) => errors,
    };
    print_config_errors(&errors);
    let (url, secrets, whence) = match state_url {
        Some(url) => (url.to_owned(), None, "the state store given with --state"),
        None => {
            let remembered = remembered_path(&path)
                .and_then(|file| std::fs::read_to_string(file).ok())
                .and_then(|text| {
                    lockstep_config::parse(&text, &path, &|name| std::env::var(name).ok()).ok()
                });
            match remembered {
                Some(last) => (
                    last.state_url.clone(),
                    Some(last.secrets),
                    "the state store of its last valid version",
                ),
                None => {
                    return Err(CliError::Message(format!(
                        "the config file {} is invalid (see above) and no earlier valid \
                         version of it was seen here, so where its run history is stored is \
                         unknown; fix the file, or pass the state store with --state URL \
                         (e.g. --state sqlite://.lockstep/state.db)",
                        path.display()
                    )))
                }
            }
        }
    };
    let shown = lockstep_state::redact_url(&url);
    let shown = secrets.map_or(shown.clone(), |s| s.redact(&shown));
    let count = errors.iter().count();
    eprintln!(
        "warning: the config file {} is invalid ({count} error{}); showing the history in \
         {whence} ({shown}). A running daemon keeps its previous config until the file is \
         fixed and reloaded (SIGHUP); `lockstep validate` lists the problems.\n",
        path.display(),
        if count == 1 { "" } else { "s" },
    );
    Ok(History {
        config: None,
        state: open_url(&url).await?,
    })
}

/// `url` with a relative SQLite file path made absolute against the working directory.
fn resolve_sqlite_arg(url: &str) -> String {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return url.to_owned();
    };
    let file = rest.strip_prefix("//").unwrap_or(rest);
    if file.is_empty() || file.starts_with(':') || Path::new(file).is_absolute() {
        return url.to_owned();
    }
    match std::path::absolute(file) {
        Ok(abs) => format!("sqlite://{}", abs.display()),
        Err(_) => url.to_owned(),
    }
}

async fn open_url(url: &str) -> Result<Box<dyn StateStore>, CliError> {
    lockstep_state::open(url)
        .await
        .map_err(|e| CliError::Message(e.to_string()))
}
