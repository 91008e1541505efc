//! The mission's email-list example end to end: HubSpot contacts (the fake HubSpot) kept in
//! a Mailchimp audience (the fake Mailchimp, behind Prism's check against Mailchimp's OpenAPI
//! description) and in a GNU Mailman 3 list (a real server) by two mirror syncs. New contacts
//! are subscribed, renamed ones updated, an unsubscribe made in Mailchimp is not overwritten
//! by later runs, and contacts archived in the CRM are archived in Mailchimp and unsubscribed
//! in Mailman, with exact metrics for every run.

use std::path::Path;

use lockstep_e2e::{lockstep, run};
use lockstep_fake_hubspot::ObjectType;
use serde_json::Value;

use crate::hubspot::{Fake as HubSpot, TOKEN, TOKEN_VAR};
use crate::mailchimp::{Fake as Mailchimp, KEY, KEY_VAR, LIST};
use crate::mailman::{addr, Lists, PASSWORD_VAR};

/// Runs `sync` with every connector's secret in the child's environment; its JSON report.
fn run_sync(dir: &Path, sync: &str) -> Value {
    let (out, stdout, stderr) = run(lockstep(dir)
        .env(TOKEN_VAR, TOKEN)
        .env(KEY_VAR, KEY)
        .env(PASSWORD_VAR, lockstep_test_support::mailman::ADMIN_PASSWORD)
        .args(["run", sync, "--output", "json"]));
    assert!(out.status.success(), "{sync}: {stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"))
}

/// (read, added, updated, unchanged, deleted, rejected) of a run's report.
fn counts(report: &Value) -> [u64; 6] {
    [
        "read",
        "added",
        "updated",
        "unchanged",
        "deleted",
        "rejected",
    ]
    .map(|k| report["metrics"][k].as_u64().unwrap_or(u64::MAX))
}

#[test]
fn hubspot_contacts_follow_into_mailchimp_and_mailman() {
    let Some(lists) = Lists::start() else {
        return;
    };
    let Some(mailchimp) = Mailchimp::start(Default::default()) else {
        return;
    };
    let crm = HubSpot::start();
    let list_id = lists.new_list();
    // Addresses in the Mailman list's own domain: Mailman's addresses are server-wide.
    let email = |local: &str| addr(&list_id, local);
    let mut ids = Vec::new();
    for (local, first, last) in [
        ("ann", "Ann", "Arbor"),
        ("bob", "Bob", "Baker"),
        ("cy", "Cy", "Cole"),
        ("dan", "Dan", "Dyer"),
        ("eve", "Eve", "Evans"),
    ] {
        ids.push(crm.contact(&email(local), first, last, "customer"));
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = format!(
        r#"
[state]
url = "sqlite://state.db"

[connections.crm]
connector = "hubspot"
[connections.crm.config]
token_env = "{TOKEN_VAR}"
base_url = "{hubspot_url}"
properties = {{ contacts = ["email", "firstname", "lastname"] }}
{mailchimp}
{mailman}
# New contacts subscribed, renamed ones updated, archived ones archived; an unsubscribe made
# in Mailchimp stays (the sync does not map `status`).
[syncs.newsletter]
source = "crm.contacts"
destination = "mc.members"
mode = "mirror"
cursor = "lastmodifieddate"
tombstone = "archived"
key = ["email_address"]
max_delete_fraction = 0.5
[syncs.newsletter.fields]
email_address = "email"
FNAME = "firstname"
LNAME = "lastname"

# The same contacts as members of the Mailman list; archived ones are unsubscribed.
[syncs.announce]
source = "crm.contacts"
destination = "mm.{list_id}"
mode = "mirror"
cursor = "lastmodifieddate"
tombstone = "archived"
key = ["email"]
max_delete_fraction = 0.5
[syncs.announce.fields]
email = "email"
display_name = {{ concat = ["firstname", "' '", "lastname"] }}
"#,
        hubspot_url = crm.fake.base_url(),
        mailchimp = mailchimp.connection(),
        mailman = lists.connection("mm", &list_id, ""),
    );
    std::fs::write(d.join("lockstep.toml"), config).unwrap();

    let mailman_members = || -> Vec<(String, String)> {
        lists
            .members(&list_id)
            .into_iter()
            .map(|(email, name, _)| (email, name))
            .collect()
    };
    let mailchimp_members = || -> Vec<[String; 4]> { mailchimp.live() };
    let row = |local: &str, status: &str, first: &str, last: &str| {
        [
            email(local),
            status.to_owned(),
            first.to_owned(),
            last.to_owned(),
        ]
    };

    // First runs: all five arrive in both lists.
    assert_eq!(counts(&run_sync(d, "newsletter")), [5, 5, 0, 0, 0, 0]);
    assert_eq!(counts(&run_sync(d, "announce")), [5, 5, 0, 0, 0, 0]);
    assert_eq!(
        mailchimp_members(),
        [
            row("ann", "subscribed", "Ann", "Arbor"),
            row("bob", "subscribed", "Bob", "Baker"),
            row("cy", "subscribed", "Cy", "Cole"),
            row("dan", "subscribed", "Dan", "Dyer"),
            row("eve", "subscribed", "Eve", "Evans"),
        ]
    );
    assert_eq!(
        mailman_members(),
        [
            (email("ann"), "Ann Arbor".to_owned()),
            (email("bob"), "Bob Baker".to_owned()),
            (email("cy"), "Cy Cole".to_owned()),
            (email("dan"), "Dan Dyer".to_owned()),
            (email("eve"), "Eve Evans".to_owned()),
        ]
    );

    // In the CRM: Bob renamed, Fay new, Eve archived. In Mailchimp: Dan unsubscribes.
    assert!(crm
        .fake
        .update(ObjectType::Contacts, &ids[1], &[("firstname", "Robert")]));
    crm.contact(&email("fay"), "Fay", "Fox", "lead");
    assert!(crm.fake.archive(ObjectType::Contacts, &ids[4]));
    assert!(mailchimp
        .fake
        .change_member(LIST, &email("dan"), Some("unsubscribed"), &[]));

    // Read: Bob, Fay and Eve's tombstone; one added, one updated, one deleted.
    assert_eq!(counts(&run_sync(d, "newsletter")), [3, 1, 1, 0, 1, 0]);
    assert_eq!(counts(&run_sync(d, "announce")), [3, 1, 1, 0, 1, 0]);
    assert_eq!(
        mailchimp_members(),
        [
            row("ann", "subscribed", "Ann", "Arbor"),
            row("bob", "subscribed", "Robert", "Baker"),
            row("cy", "subscribed", "Cy", "Cole"),
            row("dan", "unsubscribed", "Dan", "Dyer"),
            row("fay", "subscribed", "Fay", "Fox"),
        ],
        "Eve archived, Dan still unsubscribed"
    );
    let archived: Vec<String> = mailchimp
        .fake
        .members(LIST)
        .into_iter()
        .filter(|m| m.status == "archived")
        .map(|m| m.email_address)
        .collect();
    assert_eq!(archived, [email("eve")]);
    assert_eq!(
        mailman_members(),
        [
            (email("ann"), "Ann Arbor".to_owned()),
            (email("bob"), "Robert Baker".to_owned()),
            (email("cy"), "Cy Cole".to_owned()),
            (email("dan"), "Dan Dyer".to_owned()),
            (email("fay"), "Fay Fox".to_owned()),
        ],
        "Eve unsubscribed from the Mailman list"
    );

    // Dan changes his name in the CRM: updated in both, and still unsubscribed in Mailchimp.
    assert!(crm
        .fake
        .update(ObjectType::Contacts, &ids[3], &[("lastname", "Dyson")]));
    assert_eq!(counts(&run_sync(d, "newsletter")), [1, 0, 1, 0, 0, 0]);
    assert_eq!(counts(&run_sync(d, "announce")), [1, 0, 1, 0, 0, 0]);
    let dan = mailchimp.fake.member(LIST, &email("dan")).unwrap();
    assert_eq!(dan.status, "unsubscribed");
    assert_eq!(dan.merge_fields["LNAME"], "Dyson");
    assert!(mailman_members().contains(&(email("dan"), "Dan Dyson".to_owned())));

    // Nothing changed: both read nothing.
    assert_eq!(counts(&run_sync(d, "newsletter")), [0, 0, 0, 0, 0, 0]);
    assert_eq!(counts(&run_sync(d, "announce")), [0, 0, 0, 0, 0, 0]);
    mailchimp.assert_valid();
}
