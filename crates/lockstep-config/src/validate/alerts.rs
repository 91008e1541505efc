//! `[alerts]`: when the daemon alerts (failures in a row, low volume, recovery) and where
//! (`[[alerts.webhook]]`, `[alerts.email]`).
//!
//! Invariant: every string of `[alerts]` that may hold a credential or an address is
//! interpolated, and a value from the environment is never shown in a message.

use toml::de::DeValue;

use super::reader::{with_article, Reader, Span, Tbl};
use crate::diagnostic::ErrorKind;
use crate::model::{AlertsConfig, EmailAlert, StartTls, WebhookAlert};
use crate::secrets::Secrets;

/// The keys accepted in `[alerts]`.
pub(super) const ALERTS_KEYS: &[&str] = &[
    "consecutive_failures",
    "repeat_interval",
    "on_recovery",
    "low_volume_fraction",
    "low_volume_window",
    "webhook",
    "email",
];
/// The keys accepted in an `[[alerts.webhook]]` table.
pub(super) const WEBHOOK_KEYS: &[&str] = &["url"];
/// The keys accepted in `[alerts.email]`.
pub(super) const EMAIL_KEYS: &[&str] = &[
    "smtp_host",
    "smtp_port",
    "starttls",
    "username",
    "password",
    "from",
    "to",
];

/// The accepted values of `starttls`.
pub(super) const STARTTLS: &[(&str, StartTls)] = &[
    ("off", StartTls::Off),
    ("opportunistic", StartTls::Opportunistic),
    ("required", StartTls::Required),
];

impl Reader<'_> {
    pub(super) fn alerts(&mut self, root: &Tbl<'_, '_>) -> AlertsConfig {
        let mut alerts = AlertsConfig::default();
        let Some(t) = self.table(root, "alerts") else {
            return alerts;
        };
        self.check_keys(&t, ALERTS_KEYS);
        if let Some(n) = self.int(
            &t,
            "consecutive_failures",
            1,
            1000,
            "alert after this many failed runs in a row; the default is 3",
        ) {
            alerts.consecutive_failures = n as u32;
        }
        if let Some((d, _)) = self.duration(&t, "repeat_interval", true) {
            alerts.repeat_interval = d;
        }
        if let Some(b) = self.bool(&t, "on_recovery") {
            alerts.on_recovery = b;
        }
        if let Some(x) = self.fraction(
            &t,
            "low_volume_fraction",
            "a run below this fraction of the median volume alerts, e.g. 0.2; 0.0 turns the alert off",
        ) {
            alerts.low_volume_fraction = x;
        }
        if let Some(n) = self.int(
            &t,
            "low_volume_window",
            1,
            1000,
            "the number of past successful runs whose median is compared; the default is 10",
        ) {
            alerts.low_volume_window = n as u32;
        }
        if let Some(value) = t.get("webhook") {
            let path = t.child("webhook");
            match value.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        if let Some(wt) = self.as_table(&item_path, "webhook", item) {
                            if let Some(webhook) = self.webhook(&wt) {
                                alerts.webhooks.push(webhook);
                            }
                        }
                    }
                }
                DeValue::Table(_) => {
                    if let Some(wt) = self.as_table(&path, "webhook", value) {
                        if let Some(webhook) = self.webhook(&wt) {
                            alerts.webhooks.push(webhook);
                        }
                    }
                }
                other => self.error(
                    ErrorKind::WrongType,
                    value.span(),
                    format!(
                        "`{path}` must be a table or a list of tables, found {}",
                        with_article(other.type_str())
                    ),
                    "expected tables",
                    "write one [[alerts.webhook]] table per webhook, each with url = \"https://...\"",
                ),
            }
        }
        if let Some(et) = self.table(&t, "email") {
            alerts.email = self.email(&et);
        }
        alerts
    }

    pub(super) fn webhook(&mut self, t: &Tbl<'_, '_>) -> Option<WebhookAlert> {
        self.check_keys(t, WEBHOOK_KEYS);
        if !t.has("url") {
            self.missing(
                t,
                "url",
                "add url = \"https://...\", where the alert is POSTed as JSON",
            );
            return None;
        }
        let (url, from_env, span) = self.interpolated(t, "url")?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            let found = if from_env {
                " (the value comes from the environment and is not shown)".to_owned()
            } else {
                format!(", found `{url}`")
            };
            self.error(
                ErrorKind::InvalidUrl,
                span,
                format!(
                    "`{}` must be an http:// or https:// url{found}",
                    t.child("url")
                ),
                "not an http url",
                "write url = \"https://hooks.example.com/...\"",
            );
            return None;
        }
        Some(WebhookAlert {
            url,
            location: self.loc(&t.span),
            secrets: Secrets::default(),
        })
    }

    pub(super) fn email_address(
        &mut self,
        path: &str,
        value: &str,
        from_env: bool,
        span: Span,
    ) -> bool {
        let valid = value
            .split_once('@')
            .is_some_and(|(user, domain)| !user.is_empty() && !domain.is_empty())
            && !value.chars().any(char::is_whitespace);
        if !valid {
            let found = if from_env {
                " (the value comes from the environment and is not shown)".to_owned()
            } else {
                format!(", found `{value}`")
            };
            self.error(
                ErrorKind::InvalidAddress,
                span,
                format!("`{path}` must be an email address{found}"),
                "not an email address",
                "write an address like \"ops@example.com\"",
            );
        }
        valid
    }

    pub(super) fn email(&mut self, t: &Tbl<'_, '_>) -> Option<EmailAlert> {
        self.check_keys(t, EMAIL_KEYS);
        let mut complete = true;
        let smtp_host = if t.has("smtp_host") {
            self.interpolated(t, "smtp_host").map(|(host, _, _)| host)
        } else {
            self.missing(t, "smtp_host", "add smtp_host = \"smtp.example.com\"");
            None
        };
        let smtp_port = self
            .int(t, "smtp_port", 1, 65535, "write a TCP port, e.g. 587 or 25")
            .map_or(587, |p| p as u16);
        let starttls = self.enumerated(t, "starttls", STARTTLS).unwrap_or_default();
        let username = self.interpolated(t, "username");
        let password = self.interpolated(t, "password");
        for (present, absent) in [("username", "password"), ("password", "username")] {
            if t.has(present) && !t.has(absent) {
                let span = t.key_span(present).unwrap_or(t.span.clone());
                self.error(
                    ErrorKind::MissingKey,
                    span,
                    format!("`{}` has `{present}` but no `{absent}`", t.path),
                    format!("`{absent}` missing"),
                    "set both username and password, or neither for a relay that needs no login",
                );
                complete = false;
            }
        }
        let from = if t.has("from") {
            self.interpolated(t, "from")
                .filter(|(from, from_env, span)| {
                    self.email_address(&t.child("from"), from, *from_env, span.clone())
                })
                .map(|(from, _, _)| from)
        } else {
            self.missing(t, "from", "add from = \"lockstep@example.com\"");
            None
        };
        let mut to = Vec::new();
        if t.has("to") {
            if let Some((addresses, span)) = self.strings(t, "to", true) {
                if addresses.is_empty() {
                    self.error(
                        ErrorKind::MissingKey,
                        span,
                        format!("`{}` is an empty list", t.child("to")),
                        "no recipients",
                        "list at least one address: to = [\"ops@example.com\"]",
                    );
                }
                for (i, address) in addresses.iter().enumerate() {
                    let path = format!("{}[{i}]", t.child("to"));
                    let (value, from_env) = self.interpolate(address.value, &address.span, &path);
                    if self.email_address(&path, &value, from_env, address.span.clone()) {
                        to.push(value);
                    }
                }
            }
        } else {
            self.missing(t, "to", "add to = [\"ops@example.com\"]");
        }
        if !complete {
            return None;
        }
        Some(EmailAlert {
            smtp_host: smtp_host?,
            smtp_port,
            starttls,
            username: username.map(|(u, _, _)| u),
            password: password.map(|(p, _, _)| p),
            from: from?,
            to,
            location: self.loc(&t.span),
            secrets: Secrets::default(),
        })
    }
}
