use toml::de::{DeTable, DeValue};
fn dump(t: &DeTable, text: &str, ind: usize) {
    for (k, v) in t.iter() {
        let ks = k.span(); let vs = v.span();
        println!("{:ind$}{} key@{:?}={:?} val@{:?}={:?}", "", k.get_ref(), ks, &text[ks.clone()], vs, &text[vs.clone()].chars().take(40).collect::<String>(), ind=ind);
        match v.get_ref() { DeValue::Table(t2) => dump(t2, text, ind+2),
          DeValue::Array(a) => for e in a.iter() { if let DeValue::Table(t2) = e.get_ref() { println!("{:ind$} elem@{:?}", "", e.span(), ind=ind+2); dump(t2, text, ind+4)} else { println!("{:ind$} elem {:?} @{:?}", "", e.get_ref(), e.span(), ind=ind+2)} },
          DeValue::Integer(i) => println!("{:ind$}  int {} r{}", "", i.as_str(), i.radix(), ind=ind),
          _ => {} }
    }
}
#[test]
fn scratch() {
    let text = r#"
top = 1
[syncs.contacts]
source = "crm.contacts"
batch_size = 5_000
x.y = 2
[syncs.contacts.fields]
a = "b"
[syncs.other]
e = { connection = "crm", stream = 's' }
[[alerts.webhook]]
url = "u"
[[alerts.webhook]]
url = "v"
"#;
    let (doc, errs) = DeTable::parse_recoverable(text);
    println!("root span {:?}", doc.span());
    dump(doc.get_ref(), text, 0);
    println!("{errs:?}");
    for bad in ["a = \nb = 1", "a = 1\na = 2", "[x]\n[x]", "a = \"unterminated\nb = 3\nc = [1,", "a = b\nc = 'x'\nd = 1 2"] {
        let (_, errs) = DeTable::parse_recoverable(bad);
        for e in errs { println!("{:?} => {:?} @ {:?}", bad, e.message(), e.span()); }
    }
}
