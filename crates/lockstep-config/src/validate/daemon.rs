//! `[daemon]`: the address of the daemon's HTTP endpoint and its log format; the status
//! page's authentication is read in `web.rs`.

use super::reader::{Reader, Tbl};
use crate::diagnostic::ErrorKind;
use crate::model::{DaemonConfig, LogFormat};

/// The keys accepted in `[daemon]`.
pub(super) const DAEMON_KEYS: &[&str] = &[
    "listen",
    "log_format",
    "web_token_env",
    "web_user",
    "web_password_hash",
];

/// The accepted values of `log_format`.
pub(super) const LOG_FORMATS: &[(&str, LogFormat)] =
    &[("text", LogFormat::Text), ("json", LogFormat::Json)];

impl Reader<'_> {
    pub(super) fn daemon(&mut self, root: &Tbl<'_, '_>) -> DaemonConfig {
        let mut daemon = DaemonConfig::default();
        let Some(t) = self.table(root, "daemon") else {
            return daemon;
        };
        self.check_keys(&t, DAEMON_KEYS);
        if let Some(listen) = self.string(&t, "listen") {
            let valid = listen
                .value
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if valid {
                daemon.listen = listen.value.to_owned();
            } else {
                self.error(
                    ErrorKind::InvalidAddress,
                    listen.span,
                    format!("`daemon.listen` must be host:port, found `{}`", listen.value),
                    "not host:port",
                    "write e.g. listen = \"127.0.0.1:9464\", or \"0.0.0.0:9464\" for every interface",
                );
            }
        }
        if let Some(format) = self.enumerated(&t, "log_format", LOG_FORMATS) {
            daemon.log_format = format;
        }
        daemon.web_auth = self.web_auth(&t);
        daemon
    }
}
