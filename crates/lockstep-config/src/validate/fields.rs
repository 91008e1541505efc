//! `[syncs.NAME.fields]`: destination field = a source field, or a table that computes it.
//!
//! The table forms are sugar for expressions of [`lockstep_expr`]:
//! `{ from = "level", map = { "1" = "gold" }, default = "bronze" }` is
//! `map(level, {'1': 'gold'}, 'bronze')`. Syntax problems (an expression that does not parse,
//! an unknown function, a cast to an unknown type, a bad date format) are reported here, with
//! the place in the file; problems that need the source's catalog (an unknown field, lower()
//! of a number) are found by `lockstep-mapping` when the catalog is known.

use lockstep_core::FieldMapping;
use lockstep_expr::{self as expr, Expr, ExprError, Literal};
use toml::de::DeValue;

use super::reader::{entries, path_key, with_article, Reader, Span, Tbl, Val};
use crate::diagnostic::ErrorKind;
use crate::model::FieldLocation;
use lockstep_expr::did_you_mean;

/// The keys of a field table.
const FIELD_KEYS: &[&str] = &[
    "from", "expr", "concat", "constant", "cast", "parse", "format", "map", "hash", "split",
    "default",
];
/// Where the value comes from: exactly one.
const INPUT_KEYS: &[&str] = &["from", "expr", "concat", "constant"];
/// What is done to it: at most one.
const TRANSFORM_KEYS: &[&str] = &["cast", "parse", "format", "map", "hash", "split"];

const FIELD_FORMS: &str = "write name = \"source_field\", or a table: { from = \"field\" }, \
                           { expr = \"lower(trim(email))\" }, { concat = [\"a\", \"' '\", \"b\"] } \
                           or { constant = \"crm\" }";

impl Reader<'_> {
    pub(super) fn fields(&mut self, t: &Tbl<'_, '_>) -> (Vec<FieldMapping>, Vec<FieldLocation>) {
        let mut fields = Vec::new();
        let mut locations = Vec::new();
        let Some(ft) = self.table(t, "fields") else {
            return (fields, locations);
        };
        for (key, value) in entries(ft.table) {
            let target: &str = key.get_ref();
            let path = ft.child(target);
            if target.trim().is_empty() {
                self.error(
                    ErrorKind::InvalidValue,
                    key.span(),
                    format!("`{}` maps an empty destination field name", ft.path),
                    "empty name",
                    "write the destination field's name: name = \"source_field\"",
                );
                continue;
            }
            if let Err(e) = expr::parse_path(target) {
                self.error(
                    ErrorKind::InvalidValue,
                    key.span(),
                    format!(
                        "invalid destination field `{target}` in `{}`: {}",
                        ft.path, e.message
                    ),
                    "invalid name",
                    "a name with dots is a path into a JSON field the mapping builds \
                     (\"props.score\"); put a name that contains dots in backticks: \"`a.b`\"",
                );
                continue;
            }
            let mapping = match value.get_ref() {
                DeValue::Table(table) => {
                    let inner = Tbl {
                        table,
                        path: path.clone(),
                        span: value.span(),
                    };
                    self.field_table(target, &inner)
                }
                _ => self.field_string(target, &path, value),
            };
            // A field whose value has errors still names its destination, so that `key` does
            // not report it as unmapped too (the config is not returned with errors).
            fields.push(mapping.unwrap_or_else(|| FieldMapping::copy(target, "")));
            locations.push(FieldLocation {
                target: self.loc(&key.span()),
                source: self.loc(&value.span()),
            });
        }
        (fields, locations)
    }

    /// `target = "source"`: a copy of a field, or of a path into a JSON field.
    fn field_string(&mut self, target: &str, path: &str, value: &Val<'_>) -> Option<FieldMapping> {
        let source = self.as_string(path, target, value)?;
        if source.value.trim().is_empty() {
            self.error(
                ErrorKind::InvalidValue,
                source.span,
                format!("`{path}` names an empty source field"),
                "empty",
                format!(
                    "write the source field that feeds `{target}`: {} = \"field\"",
                    path_key(target)
                ),
            );
            return None;
        }
        self.source_path(path, source.value, &source.span)?;
        Some(FieldMapping::copy(target, source.value))
    }

    /// A source field or path; reports a malformed one.
    fn source_path(&mut self, path: &str, text: &str, span: &Span) -> Option<Expr> {
        match Expr::field(text) {
            Ok(e) => Some(e),
            Err(e) => {
                self.expr_error(path, text, span, &e);
                None
            }
        }
    }

    /// An expression problem, pointing at its place in the string when the file holds the
    /// string verbatim.
    fn expr_error(&mut self, path: &str, text: &str, span: &Span, e: &ExprError) {
        let at = match self.verbatim_start(text, span) {
            Some(start) => {
                let s = (start + e.offset).min(start + text.len());
                s..(s + e.len.max(1)).min(start + text.len().max(1))
            }
            None => span.clone(),
        };
        let (message, hint) = match e.message.split_once("; ") {
            Some((m, h)) => (m.to_owned(), h.to_owned()),
            None => (
                e.message.clone(),
                format!(
                    "write an expression such as lower(trim(email)), with fields, 'text', numbers \
                     and the functions {}",
                    expr::FUNCTIONS
                        .iter()
                        .map(|f| f.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        };
        self.error(
            ErrorKind::InvalidExpression,
            at,
            format!("invalid expression in `{path}`: {message}"),
            "here",
            hint,
        );
    }

    fn field_table(&mut self, target: &str, t: &Tbl<'_, '_>) -> Option<FieldMapping> {
        let keys: Vec<&str> = entries(t.table)
            .iter()
            .map(|(k, _)| k.get_ref().as_ref())
            .collect();
        if !keys.is_empty() && keys.iter().all(|k| !FIELD_KEYS.contains(k)) {
            // `address.city = "x"` without quotes is a table in TOML.
            let first = keys[0];
            let span = t.key_span(first).unwrap_or(t.span.clone());
            self.error(
                ErrorKind::WrongType,
                span,
                format!(
                    "`{}` must be a source field or a field table ({{ from = \"...\" }}, \
                     {{ expr = \"...\" }}...), found a table with `{first}`",
                    t.path
                ),
                "not a field table",
                format!(
                    "a destination field name with dots must be quoted: \"{target}.{first}\" = \
                     \"source_field\""
                ),
            );
            return None;
        }
        self.check_keys(t, FIELD_KEYS);

        let inputs: Vec<&str> = INPUT_KEYS.iter().copied().filter(|k| t.has(k)).collect();
        let input_key = match inputs.as_slice() {
            [one] => *one,
            [] => {
                self.missing(t, "from", FIELD_FORMS);
                return None;
            }
            [first, second, ..] => {
                let span = t.key_span(second).unwrap_or(t.span.clone());
                self.error(
                    ErrorKind::InvalidValue,
                    span,
                    format!("`{}` has both `{first}` and `{second}`", t.path),
                    "second source",
                    "a field takes its value from one of from, expr, concat or constant; compose \
                     several with expr, e.g. expr = \"coalesce(a, b)\"",
                );
                return None;
            }
        };
        let transforms: Vec<&str> = TRANSFORM_KEYS
            .iter()
            .copied()
            .filter(|k| t.has(k))
            .collect();
        if let [first, second, ..] = transforms.as_slice() {
            let span = t.key_span(second).unwrap_or(t.span.clone());
            self.error(
                ErrorKind::InvalidValue,
                span,
                format!("`{}` has both `{first}` and `{second}`", t.path),
                "second transform",
                "a field table takes one transform; compose them with expr, e.g. \
                 expr = \"format(parse(day, '%d/%m/%Y'), '%Y-%m-%d')\"",
            );
            return None;
        }

        // Only `from`: a plain copy, as with `target = "source"`.
        if input_key == "from" && transforms.is_empty() && !t.has("default") {
            let value = t.get("from")?;
            return self.field_string(target, &t.child("from"), value);
        }

        let input = self.field_input(t, input_key)?;
        let default = match t.get("default") {
            Some(value) => Some(self.literal(&t.child("default"), "default", value)?),
            None => None,
        };
        let mut value = match transforms.first() {
            None => input,
            Some(&transform) => self.transform(t, transform, input, &default)?,
        };
        if let Some(d) = default {
            if transforms.first() != Some(&"map") {
                value = Expr::call("default", vec![value, d]);
            }
        }
        if let Err(e) = value.check() {
            self.error(
                ErrorKind::InvalidExpression,
                t.span.clone(),
                format!("invalid field `{}`: {}", t.path, e.message),
                "here",
                "check the table's values",
            );
            return None;
        }
        Some(FieldMapping::computed(target, value))
    }

    fn field_input(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<Expr> {
        let path = t.child(key);
        let value = t.get(key)?;
        match key {
            "from" => {
                let s = self.as_string(&path, key, value)?;
                self.source_path(&path, s.value, &s.span)
            }
            "expr" => {
                let s = self.as_string(&path, key, value)?;
                self.expression(&path, s.value, &s.span)
            }
            "concat" => {
                let DeValue::Array(items) = value.get_ref() else {
                    self.error(
                        ErrorKind::WrongType,
                        value.span(),
                        format!(
                            "`{path}` must be a list, found {}",
                            with_article(value.get_ref().type_str())
                        ),
                        "expected a list",
                        "list fields and quoted text: concat = [\"first_name\", \"' '\", \
                         \"last_name\"]",
                    );
                    return None;
                };
                if items.is_empty() {
                    self.error(
                        ErrorKind::InvalidValue,
                        value.span(),
                        format!("`{path}` is an empty list"),
                        "empty",
                        "list fields and quoted text: concat = [\"first_name\", \"' '\", \
                         \"last_name\"]",
                    );
                    return None;
                }
                let mut parts = Vec::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    let part = self
                        .as_string(&item_path, key, item)
                        .and_then(|s| self.expression(&item_path, s.value, &s.span));
                    match part {
                        Some(p) => parts.push(p),
                        None => ok = false,
                    }
                }
                ok.then(|| Expr::call("concat", parts))
            }
            _ => self.literal(&path, key, value),
        }
    }

    fn expression(&mut self, path: &str, text: &str, span: &Span) -> Option<Expr> {
        match expr::parse(text) {
            Ok(e) => Some(e),
            Err(e) => {
                self.expr_error(path, text, span, &e);
                None
            }
        }
    }

    /// A TOML scalar as a constant: strings, numbers, booleans, and dates and times (as the
    /// matching type).
    fn literal(&mut self, path: &str, key: &str, value: &Val<'_>) -> Option<Expr> {
        let literal = match value.get_ref() {
            DeValue::String(s) => Literal::Text(s.to_string()),
            DeValue::Boolean(b) => Literal::Bool(*b),
            DeValue::Integer(int) => match i64::from_str_radix(int.as_str(), int.radix()) {
                Ok(n) => Literal::Number(n.to_string()),
                Err(_) => {
                    self.error(
                        ErrorKind::OutOfRange,
                        value.span(),
                        format!("`{path}` does not fit in a 64-bit integer"),
                        "out of range",
                        "write a smaller number, or text",
                    );
                    return None;
                }
            },
            DeValue::Float(x) => match x.as_str().parse::<f64>() {
                Ok(f) if f.is_finite() => {
                    let mut n = f.to_string();
                    if !n.contains(['.', 'e', 'E']) {
                        n.push_str(".0");
                    }
                    Literal::Number(n)
                }
                _ => {
                    self.error(
                        ErrorKind::InvalidValue,
                        value.span(),
                        format!("`{path}` is not a finite number"),
                        "not finite",
                        "write a finite number",
                    );
                    return None;
                }
            },
            DeValue::Datetime(d) => {
                let ty = match (d.date.is_some(), d.time.is_some(), d.offset.is_some()) {
                    (_, _, true) => "timestamptz",
                    (true, true, false) => "timestamp",
                    (true, false, false) => "date",
                    _ => "time",
                };
                return Some(Expr::call(
                    "cast",
                    vec![Expr::text(&d.to_string()), Expr::text(ty)],
                ));
            }
            other => {
                self.error(
                    ErrorKind::WrongType,
                    value.span(),
                    format!(
                        "`{path}` must be a string, a number, true or false, or a date, found {}",
                        with_article(other.type_str())
                    ),
                    "expected a constant",
                    format!("write e.g. {key} = \"text\" or {key} = 0"),
                );
                return None;
            }
        };
        Some(Expr::Literal(literal))
    }

    /// A string value of `key` that `check` accepts; reports it otherwise.
    fn checked_string(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        check: impl Fn(&str) -> Result<(), String>,
        hint: &str,
    ) -> Option<String> {
        let s = self.string(t, key)?;
        if let Err(message) = check(s.value) {
            let (message, extra) = match message.split_once("; ") {
                Some((m, h)) => (m.to_owned(), h.to_owned()),
                None => (message, hint.to_owned()),
            };
            self.error(
                ErrorKind::InvalidValue,
                s.span,
                format!("`{}`: {message}", t.child(key)),
                "invalid",
                extra,
            );
            return None;
        }
        Some(s.value.to_owned())
    }

    fn transform(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        input: Expr,
        default: &Option<Expr>,
    ) -> Option<Expr> {
        let call = |f: &str, arg: String| Expr::call(f, vec![input.clone(), Expr::text(&arg)]);
        match key {
            "cast" => {
                let ty = self.checked_string(
                    t,
                    key,
                    |s| expr::parse_type(s).map(|_| ()),
                    "write a type: boolean, int32, int64, float32, float64, decimal(p,s), text, \
                     binary, date, time, timestamp, timestamptz, uuid or json",
                )?;
                Some(call("cast", ty))
            }
            "parse" => {
                let format = self.checked_string(
                    t,
                    key,
                    |s| expr::parse_format_type(s).map(|_| ()),
                    "write a strftime format, e.g. parse = \"%d/%m/%Y\"",
                )?;
                Some(call("parse", format))
            }
            "format" => {
                let format = self.checked_string(
                    t,
                    key,
                    expr::check_format,
                    "write a strftime format, e.g. format = \"%Y-%m-%d\"",
                )?;
                Some(call("format", format))
            }
            "split" => {
                let separator = self.checked_string(
                    t,
                    key,
                    |s| {
                        if s.is_empty() {
                            Err("the separator is empty".to_owned())
                        } else {
                            Ok(())
                        }
                    },
                    "write the separator, e.g. split = \",\"",
                )?;
                Some(call("split", separator))
            }
            "hash" => {
                let s = self.string(t, key)?;
                if expr::HASHES.contains(&s.value) {
                    return Some(Expr::call(s.value, vec![input]));
                }
                let hint = match did_you_mean(s.value, expr::HASHES.iter().copied()) {
                    Some(suggestion) => format!("did you mean `{suggestion}`?"),
                    None => format!("write one of: {}", expr::HASHES.join(", ")),
                };
                self.error(
                    ErrorKind::InvalidValue,
                    s.span,
                    format!(
                        "`{}` must be one of {}, found `{}`",
                        t.child(key),
                        expr::HASHES
                            .iter()
                            .map(|h| format!("`{h}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        s.value
                    ),
                    "unknown hash",
                    hint,
                );
                None
            }
            _ => {
                // map
                let value = t.get(key)?;
                let path = t.child(key);
                let DeValue::Table(table) = value.get_ref() else {
                    self.wrong_type(&path, key, value, super::reader::Expected::Table);
                    return None;
                };
                let mut pairs = Vec::new();
                let mut ok = true;
                for (k, v) in entries(table) {
                    let name: &str = k.get_ref();
                    let item_path = super::reader::join_path(&path, name);
                    match self.literal(&item_path, name, v) {
                        Some(Expr::Literal(l)) => pairs.push((name.to_owned(), l)),
                        Some(_) => {
                            self.error(
                                ErrorKind::WrongType,
                                v.span(),
                                format!("`{item_path}` must be a string, a number, true or false"),
                                "expected a constant",
                                format!("write e.g. \"{name}\" = \"text\""),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                if let Err(message) = expr::check_table(&pairs) {
                    self.error(
                        ErrorKind::InvalidValue,
                        value.span(),
                        format!("`{path}`: {message}"),
                        "mixed types",
                        "give every value of the map the same type (text, a number, or true/false)",
                    );
                    return None;
                }
                let mut args = vec![input, Expr::Table(pairs)];
                args.extend(default.clone());
                Some(Expr::call("map", args))
            }
        }
    }
}
