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

/// `lockstep ARGS…` with every connector's secret in the child's environment: (success,
/// stdout, stderr).
fn cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let (out, stdout, stderr) = run(lockstep(dir)
        .env(TOKEN_VAR, TOKEN)
        .env(KEY_VAR, KEY)
        .args(args));
    (out.status.success(), stdout, stderr)
}

fn metric(report: &Value, name: &str) -> u64 {
    report["metrics"][name].as_u64().unwrap_or(u64::MAX)
}

/// Records written by a run, on either side.
fn written(report: &Value) -> u64 {
    ["added", "updated", "deleted"]
        .iter()
        .map(|k| metric(report, k))
        .sum()
}

/// The seed's own two-way example: sales people edit contacts in HubSpot while members edit
/// their names in Mailchimp (through the fake Mailchimp behind Prism), and one two-way sync
/// with `merge-fields` and a `manual` fallback keeps both. A contact new on either side
/// reaches the other, edits of different fields of the same person are merged without a
/// person's help, an edit of the same field on both sides waits in the conflict queue with
/// neither side written, a value set by hand with `lockstep conflicts resolve --set` reaches
/// both systems at the next run, and runs without edits write nothing in either system (what
/// Lockstep wrote, read back, is no change).
#[test]
fn hubspot_and_mailchimp_both_edit_the_same_contacts() {
    let Some(mailchimp) = Mailchimp::start(Default::default()) else {
        return;
    };
    let crm = HubSpot::start();
    let email = |local: &str| format!("{local}@northwind-traders.net");
    let mut ids = std::collections::HashMap::new();
    for (local, first, last) in [
        ("ann", "Ann", "Arbor"),
        ("bob", "Bob", "Baker"),
        ("cy", "Cy", "Cole"),
    ] {
        ids.insert(local, crm.contact(&email(local), first, last, "customer"));
    }
    // Dee signed up through a Mailchimp form and is not in the CRM yet.
    mailchimp.fake.add_member(
        LIST,
        &email("dee"),
        "subscribed",
        &[("FNAME", "Dee"), ("LNAME", "Dale")],
    );

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
# Side a is the CRM, side b the audience; each side's modification time is its own.
[syncs.people]
source = "crm.contacts"
destination = "mc.members"
mode = "two-way"
cursor = "lastmodifieddate"
tombstone = "archived"
key = ["email_address"]
max_delete_fraction = 0.5
[syncs.people.fields]
email_address = "email"
FNAME = "firstname"
LNAME = "lastname"
[syncs.people.two_way]
policy = "merge-fields"
fallback = "manual"
b_cursor = "last_changed"
b_tombstone = "archived"
"#,
        hubspot_url = crm.fake.base_url(),
        mailchimp = mailchimp.connection(),
    );
    std::fs::write(d.join("lockstep.toml"), config).unwrap();

    // Both systems as (email, first name, last name), sorted by email.
    let in_crm = || -> Vec<[String; 3]> {
        let mut rows: Vec<[String; 3]> = crm
            .fake
            .records(ObjectType::Contacts)
            .into_iter()
            .filter(|r| r.archived_ms.is_none())
            .map(|r| {
                ["email", "firstname", "lastname"]
                    .map(|p| r.properties.get(p).cloned().unwrap_or_default())
            })
            .collect();
        rows.sort();
        rows
    };
    let in_audience = || -> Vec<[String; 3]> {
        mailchimp
            .live()
            .into_iter()
            .map(|[e, _, first, last]| [e, first, last])
            .collect()
    };
    let person =
        |local: &str, first: &str, last: &str| [email(local), first.to_owned(), last.to_owned()];
    let run_people = || {
        let (ok, stdout, stderr) = cli(d, &["run", "people", "--output", "json"]);
        assert!(ok, "{stdout}\n{stderr}");
        let report: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
        assert_eq!(metric(&report, "rejected"), 0, "{report}\n{stderr}");
        report
    };
    // Mailchimp's `last_changed` has whole seconds and a read leaves the current second for
    // the next one: edits are made a second before the run that must see them.
    let settle = || std::thread::sleep(std::time::Duration::from_millis(1100));

    // First run: the CRM's three contacts reach the audience, Dee reaches the CRM.
    settle();
    let first = run_people();
    assert_eq!(metric(&first, "added"), 4, "{first}");
    assert_eq!(metric(&first, "conflicts"), 0, "{first}");
    let everyone = vec![
        person("ann", "Ann", "Arbor"),
        person("bob", "Bob", "Baker"),
        person("cy", "Cy", "Cole"),
        person("dee", "Dee", "Dale"),
    ];
    assert_eq!(in_crm(), everyone);
    assert_eq!(in_audience(), everyone);

    // What the first run wrote, read back from both systems, is no change.
    settle();
    let echo = run_people();
    assert_eq!(
        (written(&echo), metric(&echo, "conflicts")),
        (0, 0),
        "{echo}"
    );

    // Ann fixes her first name in Mailchimp. Bob's first name changes in the CRM and his
    // last name in Mailchimp: different fields, merged. Cy's last name changes on both sides
    // differently: the manual fallback queues it.
    assert!(mailchimp
        .fake
        .change_member(LIST, &email("ann"), None, &[("FNAME", "Annie")]));
    assert!(crm.fake.update(
        ObjectType::Contacts,
        &ids["bob"],
        &[("firstname", "Robert")]
    ));
    assert!(mailchimp
        .fake
        .change_member(LIST, &email("bob"), None, &[("LNAME", "Barker")]));
    assert!(crm.fake.update(
        ObjectType::Contacts,
        &ids["cy"],
        &[("lastname", "Cole-Smith")]
    ));
    assert!(mailchimp
        .fake
        .change_member(LIST, &email("cy"), None, &[("LNAME", "Coleman")]));
    settle();
    let edited = run_people();
    assert_eq!(
        metric(&edited, "conflicts"),
        2,
        "Bob merged, Cy queued: {edited}"
    );
    assert_eq!(
        in_crm(),
        [
            person("ann", "Annie", "Arbor"),
            person("bob", "Robert", "Barker"),
            person("cy", "Cy", "Cole-Smith"),
            person("dee", "Dee", "Dale"),
        ],
        "the CRM took Ann's and Bob's edits and kept its own value for Cy"
    );
    assert_eq!(
        in_audience(),
        [
            person("ann", "Annie", "Arbor"),
            person("bob", "Robert", "Barker"),
            person("cy", "Cy", "Coleman"),
            person("dee", "Dee", "Dale"),
        ],
        "the audience took Bob's merged record and kept its own value for Cy"
    );

    // The queue: Cy's conflict, open, with the base and both values of the field.
    let (ok, stdout, stderr) = cli(d, &["conflicts", "list", "people", "-o", "json"]);
    assert!(ok, "{stdout}\n{stderr}");
    let open: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(open.len(), 1, "one conflict waits for a person: {stdout}");
    assert_eq!(open[0]["key"], format!("[\"{}\"]", email("cy")), "{stdout}");
    let id = open[0]["id"].as_i64().expect("a conflict id").to_string();
    let (ok, stdout, stderr) = cli(d, &["conflicts", "show", &id, "-o", "json"]);
    assert!(ok, "{stdout}\n{stderr}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    let text = shown.to_string();
    for value in ["Cole", "Cole-Smith", "Coleman"] {
        assert!(text.contains(&format!("\"{value}\"")), "{value} in {text}");
    }

    // Nobody decided yet: the next run writes nothing and finds no new conflict.
    settle();
    let waiting = run_people();
    assert_eq!(written(&waiting), 0, "{waiting}");
    assert_eq!(
        cli(d, &["conflicts", "list", "people", "-o", "json"])
            .1
            .matches("\"id\"")
            .count(),
        1
    );

    // A person settles on a value of their own; the next run writes it to both systems.
    let (ok, stdout, stderr) = cli(
        d,
        &["conflicts", "resolve", &id, "--set", "LNAME=Cole-Coleman"],
    );
    assert!(ok, "{stdout}\n{stderr}");
    settle();
    let resolved = run_people();
    assert_eq!(metric(&resolved, "conflicts"), 0, "{resolved}");
    let settled = vec![
        person("ann", "Annie", "Arbor"),
        person("bob", "Robert", "Barker"),
        person("cy", "Cy", "Cole-Coleman"),
        person("dee", "Dee", "Dale"),
    ];
    assert_eq!(in_crm(), settled);
    assert_eq!(in_audience(), settled);
    let (ok, stdout, _) = cli(d, &["conflicts", "list", "people", "-o", "json"]);
    assert!(
        ok && serde_json::from_str::<Vec<Value>>(&stdout)
            .unwrap()
            .is_empty(),
        "{stdout}"
    );

    // Quiet again: a run without edits writes nothing anywhere.
    settle();
    let quiet = run_people();
    assert_eq!(
        (written(&quiet), metric(&quiet, "conflicts")),
        (0, 0),
        "{quiet}"
    );

    // Deletes both ways, by each system's own archive: Dee archived in the CRM is archived in
    // the audience; Ann archived in Mailchimp is archived in the CRM.
    let dee = crm
        .fake
        .records(ObjectType::Contacts)
        .into_iter()
        .find(|r| r.properties.get("email") == Some(&email("dee")))
        .expect("Dee reached the CRM");
    assert!(crm.fake.archive(ObjectType::Contacts, &dee.id.to_string()));
    assert!(mailchimp
        .fake
        .change_member(LIST, &email("ann"), Some("archived"), &[]));
    settle();
    let deleted = run_people();
    assert_eq!(metric(&deleted, "deleted"), 2, "{deleted}");
    let remaining = vec![
        person("bob", "Robert", "Barker"),
        person("cy", "Cy", "Cole-Coleman"),
    ];
    assert_eq!(in_crm(), remaining);
    assert_eq!(in_audience(), remaining);

    // What those deletes did, read back as each system's tombstones, is no change either.
    for _ in 0..2 {
        settle();
        let quiet = run_people();
        assert_eq!(
            (written(&quiet), metric(&quiet, "conflicts")),
            (0, 0),
            "{quiet}"
        );
    }
    assert_eq!(in_crm(), remaining);
    assert_eq!(in_audience(), remaining);
    mailchimp.assert_valid();
}
