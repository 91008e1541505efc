//! `[daemon]`'s status-page authentication and its errors.

use super::*;

const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$3jXgWuTXJzuH2zvhT5CHBrRe7kDkaQ3BEA1nmD0Bbc8";

#[test]
fn token_and_basic_auth_are_read() {
    let config = parse_ok(&format!(
        "[daemon]\nweb_token_env = \"LOCKSTEP_WEB_TOKEN\"\nweb_user = \"ops\"\nweb_password_hash = \"{HASH}\"\n"
    ));
    let auth = &config.daemon.web_auth;
    assert_eq!(auth.token_env.as_deref(), Some("LOCKSTEP_WEB_TOKEN"));
    let basic = auth.basic.as_ref().expect("basic auth");
    assert_eq!(basic.user, "ops");
    assert_eq!(basic.password_hash, HASH);
    assert!(auth.is_configured());
    assert!(
        !format!("{basic:?}").contains("argon2"),
        "the hash stays out of Debug"
    );
    assert!(!parse_ok("").daemon.web_auth.is_configured());
}

#[test]
fn a_token_value_instead_of_a_variable_name_is_refused() {
    let error = only_error("[daemon]\nweb_token_env = \"s3cret token!\"\n");
    assert_eq!(error.kind(), ErrorKind::InvalidValue);
    assert!(
        error
            .to_string()
            .contains("`daemon.web_token_env` must name an environment variable"),
        "{error}"
    );
}

#[test]
fn a_plain_password_is_refused_with_how_to_hash_it() {
    let error = only_error("[daemon]\nweb_user = \"ops\"\nweb_password_hash = \"hunter2\"\n");
    assert_eq!(error.kind(), ErrorKind::InvalidValue);
    assert!(
        error
            .to_string()
            .contains("`daemon.web_password_hash` must be an argon2 hash"),
        "{error}"
    );
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

#[test]
fn user_and_hash_come_together() {
    let error = only_error("[daemon]\nweb_user = \"ops\"\n");
    assert_eq!(error.kind(), ErrorKind::MissingKey);
    assert!(error.to_string().contains("web_password_hash"), "{error}");
    let error = only_error(&format!("[daemon]\nweb_password_hash = \"{HASH}\"\n"));
    assert_eq!(error.kind(), ErrorKind::MissingKey);
    assert!(error.to_string().contains("web_user"), "{error}");
}
