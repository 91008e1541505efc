//! `[syncs.NAME.fields]`: copies, table forms and expressions, and their errors.

use lockstep_core::FieldMapping;

use super::*;

/// (target, expression text or copied source, whether it is a copy).
fn summary(fields: &[FieldMapping]) -> Vec<(String, String, bool)> {
    fields
        .iter()
        .map(|f| (f.target.clone(), f.source.clone(), f.is_copy()))
        .collect()
}

fn row(target: &str, source: &str, copy: bool) -> (String, String, bool) {
    (target.to_owned(), source.to_owned(), copy)
}

#[test]
fn every_field_form() {
    let config = parse_ok(&with_sync(
        r#"key = ["email_key"]
[syncs.contacts.fields]
email_address = "email"
email_key = { expr = "lower(trim(email))" }
full_name = { concat = ["first_name", "' '", "last_name"] }
city = { from = "address.city" }
"props.score" = "score"
score = { from = "score_text", cast = "int64" }
tier = { from = "level", map = { "1" = "gold", "2" = "silver" }, default = "bronze" }
signup_day = { from = "created_at", format = "%Y-%m-%d" }
birthday = { from = "birth_text", parse = "%d/%m/%Y" }
email_hash = { from = "email", hash = "sha256" }
source_system = { constant = "crm" }
tags = { from = "tag_list", split = "," }
zip = { from = "address.zip", default = 0 }
ratio = { constant = 0.5 }
since = { constant = 2024-01-01 }
vip = { expr = "map(level, {'1': true}, false)" }
"`a.b`" = "x"
"#,
    ));
    let sync = &config.syncs[0];
    assert_eq!(sync.spec.key, ["email_key"]);
    assert_eq!(
        summary(&sync.spec.fields),
        [
            row("email_address", "email", true),
            row("email_key", "lower(trim(email))", false),
            row("full_name", "concat(first_name, ' ', last_name)", false),
            row("city", "address.city", true),
            row("props.score", "score", true),
            row("score", "cast(score_text, 'int64')", false),
            row(
                "tier",
                "map(level, {'1': 'gold', '2': 'silver'}, 'bronze')",
                false
            ),
            row("signup_day", "format(created_at, '%Y-%m-%d')", false),
            row("birthday", "parse(birth_text, '%d/%m/%Y')", false),
            row("email_hash", "sha256(email)", false),
            row("source_system", "'crm'", false),
            row("tags", "split(tag_list, ',')", false),
            row("zip", "default(address.zip, 0)", false),
            row("ratio", "0.5", false),
            row("since", "cast('2024-01-01', 'date')", false),
            row("vip", "map(level, {'1': true}, false)", false),
            row("`a.b`", "x", true),
        ]
    );
    let f = &sync.spec.fields;
    assert_eq!(f[4].column(), "props");
    assert_eq!(f[16].column(), "a.b");
    assert_eq!(f[3].value().unwrap().to_string(), "address.city");
    // One location per field: the name, and the value (string or table).
    let at = &sync.locations.fields;
    assert_eq!(at.len(), f.len());
    assert_eq!((at[0].target.line, at[0].source.column), (10, 17));
    assert_eq!((at[1].target.line, at[1].source.column), (11, 13));
}

#[test]
fn a_key_names_destination_fields_not_paths() {
    // `props.score` writes field `props`, which can be named by the key (the mapping then
    // refuses a JSON object as a key, with the catalog).
    let config = parse_ok(&with_sync(
        "key = [\"props\"]\n[syncs.contacts.fields]\n\"props.score\" = \"score\"",
    ));
    assert_eq!(config.syncs[0].spec.key, ["props"]);
    let error = only_error(&with_sync(
        "key = [\"props.score\"]\n[syncs.contacts.fields]\n\"props.score\" = \"score\"\n\"props.tier\" = \"tier\"",
    ));
    check(
        &error,
        ErrorKind::KeyNotMapped,
        8,
        "key field `props.score` is not a destination field of `syncs.contacts.fields`",
        "the key names destination fields, and the mapping produces: props; add `props.score` \
         to `syncs.contacts.fields`",
    );
}

#[test]
fn an_expression_that_does_not_parse() {
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\nemail_key = { expr = \"lower(trim(email)\" }",
    ));
    check(
        &error,
        ErrorKind::InvalidExpression,
        9,
        "invalid expression in `syncs.contacts.fields.email_key.expr`: expected `,` or `)`, found \
         the end",
        "write an expression such as lower(trim(email)), with fields, 'text', numbers and the \
         functions lower, upper, trim, ltrim, rtrim, replace, concat, split, get, coalesce, \
         default, cast, parse, format, sha256, xxh3, map",
    );
    // The column points into the string: `email_key = { expr = "` is 22 characters.
    assert_eq!(
        error.location().unwrap().column,
        23 + "lower(trim(email)".len()
    );
    assert_eq!(error.kind().code(), "lockstep::config::invalid-expression");
}

#[test]
fn an_unknown_function_with_a_suggestion() {
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\nk = { expr = \"lower(trimm(email))\" }",
    ));
    check(
        &error,
        ErrorKind::InvalidExpression,
        9,
        "invalid expression in `syncs.contacts.fields.k.expr`: unknown function `trimm`",
        "did you mean `trim`?",
    );
    let at = error.location().unwrap();
    assert_eq!((at.column, at.len), (21, 5));
}

#[test]
fn wrong_arguments() {
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\nk = { expr = \"lower(email, 1)\" }",
    ));
    check(
        &error,
        ErrorKind::InvalidExpression,
        9,
        "invalid expression in `syncs.contacts.fields.k.expr`: lower() takes 1 argument, found 2: \
         lower(text)",
        "write an expression such as lower(trim(email)), with fields, 'text', numbers and the \
         functions lower, upper, trim, ltrim, rtrim, replace, concat, split, get, coalesce, \
         default, cast, parse, format, sha256, xxh3, map",
    );
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\nk = { expr = \"cast(score, 'int65')\" }",
    ));
    assert_eq!(
        error.message(),
        "invalid expression in `syncs.contacts.fields.k.expr`: unknown type `int65`"
    );
    assert_eq!(error.hint(), "did you mean `int64`? the types are: boolean, int32, int64, float32, float64, decimal(p,s), text, binary, date, time, timestamp, timestamptz, uuid, json");
    assert_eq!(error.location().unwrap().column, 27);
}

#[test]
fn an_error_in_a_concat_item_points_at_the_item() {
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\nname = { concat = [\"first\", \"' \", \"last\"] }",
    ));
    check(
        &error,
        ErrorKind::InvalidExpression,
        9,
        "invalid expression in `syncs.contacts.fields.name.concat[1]`: unterminated text: the ' \
         here is never closed",
        "write an expression such as lower(trim(email)), with fields, 'text', numbers and the \
         functions lower, upper, trim, ltrim, rtrim, replace, concat, split, get, coalesce, \
         default, cast, parse, format, sha256, xxh3, map",
    );
    assert_eq!(error.location().unwrap().column, 30);
}

#[test]
fn table_form_values_are_checked() {
    let cases = [
        (
            "s = { from = \"x\", cast = \"int65\" }",
            "`syncs.contacts.fields.s.cast`: unknown type `int65`",
            "did you mean `int64`? the types are: boolean, int32, int64, float32, float64, \
             decimal(p,s), text, binary, date, time, timestamp, timestamptz, uuid, json",
        ),
        (
            "s = { from = \"x\", hash = \"md5\" }",
            "`syncs.contacts.fields.s.hash` must be one of `sha256`, `xxh3`, found `md5`",
            "write one of: sha256, xxh3",
        ),
        (
            "s = { from = \"x\", format = \"%Q\" }",
            "`syncs.contacts.fields.s.format`: invalid date/time format `%Q`: it has an unknown \
             `%` specifier",
            "write chrono strftime specifiers, e.g. %Y-%m-%d or %d/%m/%Y %H:%M",
        ),
        (
            "s = { from = \"x\", parse = \"at noon\" }",
            "`syncs.contacts.fields.s.parse`: the format `at noon` has no date or time fields to \
             parse",
            "write e.g. %Y-%m-%d",
        ),
        (
            "s = { from = \"x\", split = \"\" }",
            "`syncs.contacts.fields.s.split`: the separator is empty",
            "write the separator, e.g. split = \",\"",
        ),
        (
            "s = { from = \"x\", map = { a = 1, b = \"two\" } }",
            "`syncs.contacts.fields.s.map`: the values of a value map must be of one type, but \
             'b' maps to text and an earlier key to int64",
            "give every value of the map the same type (text, a number, or true/false)",
        ),
    ];
    for (line, message, hint) in cases {
        let error = only_error(&with_sync(&format!("[syncs.contacts.fields]\n{line}")));
        check(&error, ErrorKind::InvalidValue, 9, message, hint);
    }
}

#[test]
fn the_shape_of_a_field_table_is_checked() {
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\ns = { from = \"x\", expr = \"y\" }",
    ));
    check(
        &error,
        ErrorKind::InvalidValue,
        9,
        "`syncs.contacts.fields.s` has both `from` and `expr`",
        "a field takes its value from one of from, expr, concat or constant; compose several \
         with expr, e.g. expr = \"coalesce(a, b)\"",
    );
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\ns = { from = \"x\", cast = \"int64\", format = \"%Y\" }",
    ));
    check(
        &error,
        ErrorKind::InvalidValue,
        9,
        "`syncs.contacts.fields.s` has both `cast` and `format`",
        "a field table takes one transform; compose them with expr, e.g. expr = \
         \"format(parse(day, '%d/%m/%Y'), '%Y-%m-%d')\"",
    );
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\ns = { cast = \"int64\" }",
    ));
    check(
        &error,
        ErrorKind::MissingKey,
        9,
        "missing `from` in `syncs.contacts.fields.s`",
        "write name = \"source_field\", or a table: { from = \"field\" }, { expr = \
         \"lower(trim(email))\" }, { concat = [\"a\", \"' '\", \"b\"] } or { constant = \"crm\" }",
    );
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\ns = { from = \"x\", defualt = 1 }",
    ));
    check(
        &error,
        ErrorKind::UnknownKey,
        9,
        "unknown key `defualt` in `syncs.contacts.fields.s`",
        "did you mean `default`?",
    );
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\ns = { constant = [1, 2] }",
    ));
    check(
        &error,
        ErrorKind::WrongType,
        9,
        "`syncs.contacts.fields.s.constant` must be a string, a number, true or false, or a date, \
         found an array",
        "write e.g. constant = \"text\" or constant = 0",
    );
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\ns = { concat = \"a\" }",
    ));
    check(
        &error,
        ErrorKind::WrongType,
        9,
        "`syncs.contacts.fields.s.concat` must be a list, found a string",
        "list fields and quoted text: concat = [\"first_name\", \"' '\", \"last_name\"]",
    );
}

#[test]
fn paths_and_names_are_checked() {
    let error = only_error(&with_sync("[syncs.contacts.fields]\n\"a..b\" = \"x\""));
    check(
        &error,
        ErrorKind::InvalidValue,
        9,
        "invalid destination field `a..b` in `syncs.contacts.fields`: the path `a..b` has an \
         empty part",
        "a name with dots is a path into a JSON field the mapping builds (\"props.score\"); put \
         a name that contains dots in backticks: \"`a.b`\"",
    );
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\ncity = \"address..city\"",
    ));
    check(
        &error,
        ErrorKind::InvalidExpression,
        9,
        "invalid expression in `syncs.contacts.fields.city`: the path `address..city` has an \
         empty part",
        "write an expression such as lower(trim(email)), with fields, 'text', numbers and the \
         functions lower, upper, trim, ltrim, rtrim, replace, concat, split, get, coalesce, \
         default, cast, parse, format, sha256, xxh3, map",
    );
    assert_eq!(error.location().unwrap().column, 17);
}

#[test]
fn a_key_on_a_field_with_an_error_is_not_reported_twice() {
    let error = only_error(&with_sync(
        "key = \"k\"\n[syncs.contacts.fields]\nk = { expr = \"lowr(email)\" }",
    ));
    assert_eq!(error.kind(), ErrorKind::InvalidExpression);
}

#[test]
fn every_field_problem_is_reported_at_once() {
    let all = errors(&with_sync(
        "[syncs.contacts.fields]\na = { expr = \"lowr(x)\" }\nb = { from = \"x\", cast = \"nope\" }\nc = \"ok\"\nd = { expr = \"concat(\" }",
    ));
    let lines: Vec<(usize, ErrorKind)> = all
        .iter()
        .map(|e| (e.location().unwrap().line, e.kind()))
        .collect();
    assert_eq!(
        lines,
        [
            (9, ErrorKind::InvalidExpression),
            (10, ErrorKind::InvalidValue),
            (12, ErrorKind::InvalidExpression)
        ]
    );
}
