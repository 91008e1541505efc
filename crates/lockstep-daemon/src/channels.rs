//! Where alerts go: webhooks (a JSON POST) and email over SMTP.
//!
//! A channel that fails is logged and counted, never retried in a loop and never fatal: the
//! scheduler does not wait on alert delivery. Webhook urls often carry a token in their path,
//! so logs name only the url's host.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use lockstep_config::{AlertsConfig, EmailAlert, Secrets, StartTls, WebhookAlert};

use crate::alerts::Alert;
use crate::metrics::Metrics;

const SEND_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends `alert` to every channel of `config`, logging each failure.
pub(crate) async fn deliver(
    config: &AlertsConfig,
    secrets: &Secrets,
    http: &reqwest::Client,
    metrics: &Metrics,
    alert: &Alert,
) {
    for hook in &config.webhooks {
        match post_webhook(http, hook, alert).await {
            Ok(()) => tracing::info!(
                sync = %alert.sync,
                run = alert.run,
                alert = alert.kind.name(),
                "alert sent to the webhook at {}",
                url_host(&hook.url)
            ),
            Err(e) => {
                metrics.alert_failed("webhook");
                tracing::warn!(
                    sync = %alert.sync,
                    run = alert.run,
                    alert = alert.kind.name(),
                    "could not deliver the alert to the webhook at {}: {}",
                    url_host(&hook.url),
                    secrets.redact(&e)
                );
            }
        }
    }
    if let Some(email) = &config.email {
        match send_email(email, alert).await {
            Ok(()) => tracing::info!(
                sync = %alert.sync,
                run = alert.run,
                alert = alert.kind.name(),
                "alert emailed to {}",
                email.to.join(", ")
            ),
            Err(e) => {
                metrics.alert_failed("email");
                tracing::warn!(
                    sync = %alert.sync,
                    run = alert.run,
                    alert = alert.kind.name(),
                    "could not email the alert through {}:{}: {}",
                    email.smtp_host,
                    email.smtp_port,
                    secrets.redact(&e)
                );
            }
        }
    }
}

async fn post_webhook(
    http: &reqwest::Client,
    hook: &WebhookAlert,
    alert: &Alert,
) -> Result<(), String> {
    let response = http
        .post(&hook.url)
        .timeout(SEND_TIMEOUT)
        .json(&alert.webhook_body())
        .send()
        .await
        // The error's text may include the url; only its kind is kept.
        .map_err(|e| {
            if e.is_timeout() {
                "the request timed out".to_owned()
            } else if e.is_connect() {
                "cannot connect".to_owned()
            } else {
                "the request failed".to_owned()
            }
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered HTTP {status}"))
    }
}

async fn send_email(email: &EmailAlert, alert: &Alert) -> Result<(), String> {
    let parse = |address: &str, role: &str| -> Result<Mailbox, String> {
        address
            .parse()
            .map_err(|e| format!("the {role} address `{address}` is not valid: {e}"))
    };
    let mut message = Message::builder()
        .from(parse(&email.from, "from")?)
        .subject(alert.subject());
    for to in &email.to {
        message = message.to(parse(to, "to")?);
    }
    let message = message
        .header(ContentType::TEXT_PLAIN)
        .body(alert.text())
        .map_err(|e| format!("cannot build the message: {e}"))?;

    let tls = match email.starttls {
        StartTls::Off => Tls::None,
        StartTls::Opportunistic => Tls::Opportunistic(tls_parameters(&email.smtp_host)?),
        StartTls::Required => Tls::Required(tls_parameters(&email.smtp_host)?),
    };
    let mut transport =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(email.smtp_host.as_str())
            .port(email.smtp_port)
            .tls(tls)
            .timeout(Some(SEND_TIMEOUT));
    if let (Some(user), Some(password)) = (&email.username, &email.password) {
        transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn tls_parameters(host: &str) -> Result<TlsParameters, String> {
    TlsParameters::new(host.to_owned()).map_err(|e| format!("cannot set up TLS for `{host}`: {e}"))
}

/// The host of a url, for logs (`hooks.example.com`), without its path or credentials.
fn url_host(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(port) => format!("{h}:{port}"),
                None => h.to_owned(),
            })
        })
        .unwrap_or_else(|| "(invalid url)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_name_only_the_webhook_host() {
        assert_eq!(
            url_host("https://hooks.example.com/services/T000/SECRET"),
            "hooks.example.com"
        );
        assert_eq!(
            url_host("http://user:pw@127.0.0.1:8080/x"),
            "127.0.0.1:8080"
        );
    }
}
