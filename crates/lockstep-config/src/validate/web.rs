//! `[daemon]`'s status-page authentication: `web_token_env` (a bearer token read from an
//! environment variable) and `web_user` with `web_password_hash` (basic auth against an
//! argon2 hash).
//!
//! Invariants: no secret value is read here (the token stays in the environment until the
//! daemon starts; the hash is a one-way hash), and every error names its key and how to fix
//! it.

use super::reader::{Reader, Tbl};
use crate::diagnostic::ErrorKind;
use crate::model::{BasicAuth, WebAuth};

/// The PHC prefixes of the argon2 variants the daemon verifies.
const ARGON2_PREFIXES: &[&str] = &["$argon2id$", "$argon2i$", "$argon2d$"];

const HASH_HINT: &str = "write the PHC string of an argon2 hash of the password, e.g. from \
     `printf %s \"$PASSWORD\" | argon2 \"$(openssl rand -hex 16)\" -id -e` (Debian package \
     argon2); it starts with `$argon2id$`";

impl Reader<'_> {
    pub(super) fn web_auth(&mut self, t: &Tbl<'_, '_>) -> WebAuth {
        let mut auth = WebAuth::default();
        if let Some(env) = self.string(t, "web_token_env") {
            let valid = env
                .value
                .chars()
                .next()
                .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
                && env
                    .value
                    .chars()
                    .all(|c| c == '_' || c.is_ascii_alphanumeric());
            if valid {
                auth.token_env = Some(env.value.to_owned());
            } else {
                self.error(
                    ErrorKind::InvalidValue,
                    env.span,
                    format!(
                        "`daemon.web_token_env` must name an environment variable, found `{}`",
                        env.value
                    ),
                    "not a variable name",
                    "write the variable's name, not its value: web_token_env = \
                     \"LOCKSTEP_WEB_TOKEN\", and export LOCKSTEP_WEB_TOKEN before starting \
                     the daemon",
                );
            }
        }
        let user = self.string(t, "web_user");
        let hash = self.string(t, "web_password_hash");
        match (user, hash) {
            (Some(user), Some(hash)) => {
                let mut ok = true;
                if user.value.is_empty() || user.value.contains(':') {
                    ok = false;
                    self.error(
                        ErrorKind::InvalidValue,
                        user.span,
                        "`daemon.web_user` must be a non-empty name without `:`",
                        "not a user name",
                        "write e.g. web_user = \"ops\"",
                    );
                }
                if !ARGON2_PREFIXES.iter().any(|p| hash.value.starts_with(p)) {
                    ok = false;
                    self.error(
                        ErrorKind::InvalidValue,
                        hash.span,
                        "`daemon.web_password_hash` must be an argon2 hash in PHC form, not \
                         the password",
                        "not an argon2 PHC string",
                        HASH_HINT,
                    );
                }
                if ok {
                    auth.basic = Some(BasicAuth {
                        user: user.value.to_owned(),
                        password_hash: hash.value.to_owned(),
                    });
                }
            }
            (Some(_), None) => self.missing(
                t,
                "web_password_hash",
                format!("`web_user` needs `web_password_hash`: {HASH_HINT}"),
            ),
            (None, Some(_)) => self.missing(
                t,
                "web_user",
                "`web_password_hash` needs `web_user`, the name to log in with: write e.g. \
                 web_user = \"ops\"",
            ),
            (None, None) => {}
        }
        auth
    }
}
