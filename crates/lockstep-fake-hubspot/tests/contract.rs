//! The contract test: HubSpot's official Node client (`@hubspot/api-client`, generated from
//! HubSpot's own OpenAPI descriptions) drives the fake through list paging, search, batch
//! upsert, archive and a 429, and parses every answer into its typed models
//! (`contract/contract.mjs`). It needs Node.js and `npm ci` in `contract/`, which `.ci/run`
//! does; without them it is recorded as skipped, except under CI (`CI=true` or `CI=1`), where it fails.

use std::path::Path;
use std::time::Duration;

use lockstep_fake_hubspot::{FakeHubSpot, Options};

#[tokio::test]
async fn hubspots_official_client_parses_the_fakes_answers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contract");
    if !dir.join("node_modules/@hubspot/api-client").exists() {
        lockstep_test_support::skip::skip_or_fail(format!(
            "the contract test needs HubSpot's client: run `npm ci` in {}",
            dir.display()
        ));
        return;
    }
    let fake = FakeHubSpot::start(Options {
        rate_limit: Some((10, Duration::from_secs(60))),
        ..Options::default()
    })
    .await
    .unwrap();
    let output = tokio::process::Command::new("node")
        .arg("contract.mjs")
        .current_dir(&dir)
        .env("HUBSPOT_BASE_URL", fake.base_url())
        .env("HUBSPOT_TOKEN", fake.token())
        .output()
        .await
        .expect("Node.js runs (`node` on the PATH)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("contract: ok"),
        "the official client refused the fake's answers:\n{stdout}\n{stderr}"
    );
    let (_, throttled) = fake.counts();
    assert_eq!(throttled, 1, "the client met exactly one 429");
}
