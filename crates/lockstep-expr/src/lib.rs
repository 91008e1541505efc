//! The field-mapping expression language: a computed destination field such as
//! `lower(trim(email))`, `concat(first_name, ' ', last_name)` or `cast(score_text, 'int64')`.
//!
//! This crate is the syntax: the AST, its parser and printer, and the checks that need no
//! catalog (function names, argument counts, literal arguments such as type names, date formats
//! and hash algorithms). `lockstep-config` uses it to report syntax problems with a file
//! location; `lockstep-mapping` types an expression against the source stream and evaluates it;
//! `lockstep-core` keeps parsed expressions in its sync specifications.
//!
//! Invariants:
//! - Pure: no I/O, no clock, no global state; every function is deterministic.
//! - An expression prints back (`Display`) to text that parses to the same expression.
//!
//! Syntax:
//! - a field: `email`; a path into a JSON field: `address.city`, `tags.0`; any name in
//!   backticks: `` `first name` ``, `` `a.b` `` (a backtick inside is doubled);
//! - literals: `'text'` (a quote inside is doubled: `'it''s'`), `42`, `-1.5`, `true`, `false`,
//!   `null`;
//! - calls: `name(arg, ...)`, nested freely;
//! - a value map, only as the second argument of `map`: `{'1': 'gold', '2': 'silver'}`.

use std::fmt;
use std::str::FromStr;

use chrono::format::{Fixed, Item, Numeric, StrftimeItems};
use lockstep_protocol::DataType;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod suggest;

pub use suggest::did_you_mean;

/// A mapping expression.
///
/// It serializes as its text (`"lower(trim(email))"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    /// A source field, or a path into a JSON source field (`address.city`): the longest
    /// leading part that names a source field is the field, the rest is the path.
    Field(Vec<String>),
    Literal(Literal),
    /// A function call; see [`FUNCTIONS`].
    Call {
        function: String,
        args: Vec<Expr>,
    },
    /// A value map `{'key': value, ...}`, only as the second argument of `map`.
    Table(Vec<(String, Literal)>),
}

/// A constant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Literal {
    Null,
    Bool(bool),
    /// A number as written (`42`, `-1.5`, `1e3`): an int64 when it has no fraction or exponent,
    /// a float64 otherwise.
    Number(String),
    Text(String),
}

impl Literal {
    /// The logical type of this constant; `None` for `null`, which takes the type of its context.
    pub fn data_type(&self) -> Option<DataType> {
        match self {
            Literal::Null => None,
            Literal::Bool(_) => Some(DataType::Boolean),
            Literal::Number(n) if is_integer(n) => Some(DataType::Int64),
            Literal::Number(_) => Some(DataType::Float64),
            Literal::Text(_) => Some(DataType::Text),
        }
    }

    /// The value as text: what a value map compares with, and what `concat` appends.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Literal::Null => None,
            Literal::Bool(b) => Some(b.to_string()),
            Literal::Number(n) => Some(n.clone()),
            Literal::Text(t) => Some(t.clone()),
        }
    }
}

fn is_integer(n: &str) -> bool {
    !n.contains(['.', 'e', 'E']) && n.parse::<i64>().is_ok()
}

impl Expr {
    /// A field or path, from dotted text (see [`parse_path`]).
    pub fn field(path: &str) -> Result<Expr, ExprError> {
        parse_path(path).map(Expr::Field)
    }

    /// A call of `function` with `args`.
    pub fn call(function: &str, args: Vec<Expr>) -> Expr {
        Expr::Call {
            function: function.to_owned(),
            args,
        }
    }

    /// A text constant.
    pub fn text(value: &str) -> Expr {
        Expr::Literal(Literal::Text(value.to_owned()))
    }

    /// The source fields and paths this expression reads, in order of first use.
    pub fn fields(&self) -> Vec<&[String]> {
        let mut out: Vec<&[String]> = Vec::new();
        self.visit_fields(&mut |path| {
            if !out.contains(&path) {
                out.push(path);
            }
        });
        out
    }

    fn visit_fields<'a>(&'a self, f: &mut dyn FnMut(&'a [String])) {
        match self {
            Expr::Field(path) => f(path),
            Expr::Call { args, .. } => args.iter().for_each(|a| a.visit_fields(f)),
            Expr::Literal(_) | Expr::Table(_) => {}
        }
    }

    /// Checks function names, argument counts and literal arguments, as [`parse`] does, for an
    /// expression built in code.
    pub fn check(&self) -> Result<(), ExprError> {
        match self {
            Expr::Field(path) if path.is_empty() || path.iter().any(String::is_empty) => Err(
                ExprError::new(0, 0, "a field path has an empty part".to_owned()),
            ),
            Expr::Field(_) | Expr::Literal(_) => Ok(()),
            Expr::Table(_) => Err(ExprError::new(
                0,
                0,
                "a `{...}` value map is only allowed as the second argument of map()".to_owned(),
            )),
            Expr::Call { function, args } => {
                for (i, arg) in args.iter().enumerate() {
                    let table_allowed = function == "map" && i == 1;
                    if !(table_allowed && matches!(arg, Expr::Table(_))) {
                        arg.check()?;
                    }
                }
                check_call(function, args).map_err(|(_, message)| ExprError::new(0, 0, message))
            }
        }
    }
}

// ---- Printing --------------------------------------------------------------------------------

/// Whether a path segment prints without backticks: an identifier, or after the first
/// segment an array index (digits).
fn is_plain_ident(s: &str, first: bool) -> bool {
    if !first && !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return true;
    }
    let mut chars = s.chars();
    let Some(c) = chars.next() else {
        return false;
    };
    (c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !(first && matches!(s, "true" | "false" | "null"))
}

/// A path as expression text: `address.city`, `` `first name` ``.
pub fn path_text(path: &[String]) -> String {
    let mut out = String::new();
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if is_plain_ident(segment, i == 0) {
            out.push_str(segment);
        } else {
            out.push('`');
            out.push_str(&segment.replace('`', "``"));
            out.push('`');
        }
    }
    out
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("null"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Number(n) => f.write_str(n),
            Literal::Text(t) => f.write_str(&quote(t)),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Field(path) => f.write_str(&path_text(path)),
            Expr::Literal(literal) => write!(f, "{literal}"),
            Expr::Call { function, args } => {
                write!(f, "{function}(")?;
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{arg}")?;
                }
                f.write_str(")")
            }
            Expr::Table(entries) => {
                f.write_str("{")?;
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}: {value}", quote(key))?;
                }
                f.write_str("}")
            }
        }
    }
}

impl Serialize for Expr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Expr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

impl FromStr for Expr {
    type Err = ExprError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

// ---- Errors ----------------------------------------------------------------------------------

/// A problem in an expression's text, at byte `offset` (for `len` bytes) of it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {})", .offset + 1)]
pub struct ExprError {
    pub offset: usize,
    pub len: usize,
    pub message: String,
}

impl ExprError {
    fn new(offset: usize, len: usize, message: String) -> Self {
        ExprError {
            offset,
            len,
            message,
        }
    }
}

// ---- Functions -------------------------------------------------------------------------------

/// What a literal argument of a function must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiteralArg {
    /// A type name (`'int64'`, `'decimal(10,2)'`), see [`parse_type`].
    Type,
    /// A chrono strftime format that parses to a date, time or timestamp.
    ParseFormat,
    /// A chrono strftime format.
    Format,
    /// A non-empty text constant.
    NonEmptyText,
    /// A text constant, possibly empty.
    Text,
    /// A value map `{'key': value, ...}`.
    Table,
    /// A dotted path, see [`parse_path`].
    Path,
}

/// One function of the expression language.
#[derive(Clone, Copy, Debug)]
pub struct Function {
    pub name: &'static str,
    pub min_args: usize,
    /// `None`: any number from `min_args`.
    pub max_args: Option<usize>,
    /// `(argument index, what it must be)` for arguments that must be constants.
    pub literals: &'static [(usize, LiteralArg)],
    /// How it is called, for messages.
    pub usage: &'static str,
    pub description: &'static str,
}

/// Every function, in the order the documentation lists them.
pub const FUNCTIONS: &[Function] = &[
    Function {
        name: "lower",
        min_args: 1,
        max_args: Some(1),
        literals: &[],
        usage: "lower(text)",
        description: "lower-case (Unicode)",
    },
    Function {
        name: "upper",
        min_args: 1,
        max_args: Some(1),
        literals: &[],
        usage: "upper(text)",
        description: "upper-case (Unicode)",
    },
    Function {
        name: "trim",
        min_args: 1,
        max_args: Some(1),
        literals: &[],
        usage: "trim(text)",
        description: "without leading and trailing white space",
    },
    Function {
        name: "ltrim",
        min_args: 1,
        max_args: Some(1),
        literals: &[],
        usage: "ltrim(text)",
        description: "without leading white space",
    },
    Function {
        name: "rtrim",
        min_args: 1,
        max_args: Some(1),
        literals: &[],
        usage: "rtrim(text)",
        description: "without trailing white space",
    },
    Function {
        name: "replace",
        min_args: 3,
        max_args: Some(3),
        literals: &[(1, LiteralArg::NonEmptyText), (2, LiteralArg::Text)],
        usage: "replace(text, 'from', 'to')",
        description: "every occurrence of 'from' replaced by 'to'",
    },
    Function {
        name: "concat",
        min_args: 1,
        max_args: None,
        literals: &[],
        usage: "concat(value, ...)",
        description: "the values as text, end to end; nulls are skipped",
    },
    Function {
        name: "split",
        min_args: 2,
        max_args: Some(2),
        literals: &[(1, LiteralArg::NonEmptyText)],
        usage: "split(text, 'separator')",
        description: "a JSON array of the parts",
    },
    Function {
        name: "get",
        min_args: 2,
        max_args: Some(2),
        literals: &[(1, LiteralArg::Path)],
        usage: "get(json, 'path')",
        description: "the value at a dotted path in a JSON value (a missing path is an error \
                      unless defaulted)",
    },
    Function {
        name: "coalesce",
        min_args: 2,
        max_args: None,
        literals: &[],
        usage: "coalesce(value, value, ...)",
        description: "the first value that is not null (nor a missing JSON path)",
    },
    Function {
        name: "default",
        min_args: 2,
        max_args: Some(2),
        literals: &[],
        usage: "default(value, fallback)",
        description: "the value, or the fallback when it is null or a missing JSON path",
    },
    Function {
        name: "cast",
        min_args: 2,
        max_args: Some(2),
        literals: &[(1, LiteralArg::Type)],
        usage: "cast(value, 'type')",
        description: "the value converted; a record whose value does not convert is rejected",
    },
    Function {
        name: "parse",
        min_args: 2,
        max_args: Some(2),
        literals: &[(1, LiteralArg::ParseFormat)],
        usage: "parse(text, 'format')",
        description: "a date, time, timestamp or timestamptz read with a strftime format",
    },
    Function {
        name: "format",
        min_args: 2,
        max_args: Some(2),
        literals: &[(1, LiteralArg::Format)],
        usage: "format(date_or_time, 'format')",
        description: "a date, time or timestamp as text, with a strftime format",
    },
    Function {
        name: "sha256",
        min_args: 1,
        max_args: Some(1),
        literals: &[],
        usage: "sha256(value)",
        description: "the SHA-256 of the value's text (or bytes), as 64 hex digits",
    },
    Function {
        name: "xxh3",
        min_args: 1,
        max_args: Some(1),
        literals: &[],
        usage: "xxh3(value)",
        description: "the 64-bit XXH3 of the value's text (or bytes), as 16 hex digits",
    },
    Function {
        name: "map",
        min_args: 2,
        max_args: Some(3),
        literals: &[(1, LiteralArg::Table)],
        usage: "map(value, {'key': value, ...}, fallback)",
        description: "the value looked up by its text; the fallback (optional) for other values \
                      and for null",
    },
];

/// The function named `name`.
pub fn function(name: &str) -> Option<&'static Function> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

/// The hash algorithms `hash = "..."` accepts in a field table, each a function.
pub const HASHES: &[&str] = &["sha256", "xxh3"];

/// The type names `cast` accepts.
pub const TYPE_NAMES: &[&str] = &[
    "boolean",
    "int32",
    "int64",
    "float32",
    "float64",
    "decimal(p,s)",
    "text",
    "binary",
    "date",
    "time",
    "timestamp",
    "timestamptz",
    "uuid",
    "json",
];

/// A logical type from its name: `int64`, `text`, `decimal(10,2)`, `timestamptz`... (also
/// `bool`, `integer`, `bigint`, `double`, `string`, `timestamp-tz`).
pub fn parse_type(name: &str) -> Result<DataType, String> {
    let lower = name.trim().to_ascii_lowercase();
    let t = match lower.as_str() {
        "boolean" | "bool" => DataType::Boolean,
        "int32" | "int" | "integer" => DataType::Int32,
        "int64" | "bigint" => DataType::Int64,
        "float32" | "real" => DataType::Float32,
        "float64" | "double" | "float" => DataType::Float64,
        "text" | "string" => DataType::Text,
        "binary" | "bytes" => DataType::Binary,
        "date" => DataType::Date,
        "time" => DataType::Time,
        "timestamp" => DataType::Timestamp,
        "timestamptz" | "timestamp-tz" => DataType::TimestampTz,
        "uuid" => DataType::Uuid,
        "json" => DataType::Json,
        other => {
            let Some(args) = other
                .strip_prefix("decimal(")
                .and_then(|r| r.strip_suffix(')'))
            else {
                let hint = match did_you_mean(&lower, TYPE_NAMES.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? "),
                    None => String::new(),
                };
                return Err(format!(
                    "unknown type `{name}`; {hint}the types are: {}",
                    TYPE_NAMES.join(", ")
                ));
            };
            let bad = || {
                format!(
                    "invalid decimal type `{name}`: write decimal(precision,scale) with precision \
                     1..=38 and scale 0..=precision, e.g. decimal(10,2)"
                )
            };
            let (p, s) = args.split_once(',').ok_or_else(bad)?;
            let precision: u8 = p.trim().parse().map_err(|_| bad())?;
            let scale: i8 = s.trim().parse().map_err(|_| bad())?;
            if !(1..=38).contains(&precision) || scale < 0 || scale as u8 > precision {
                return Err(bad());
            }
            DataType::Decimal { precision, scale }
        }
    };
    Ok(t)
}

/// The name [`parse_type`] reads for `t`.
pub fn type_name(t: DataType) -> String {
    match t {
        DataType::TimestampTz => "timestamptz".to_owned(),
        other => other.describe(),
    }
}

/// Checks a strftime format, for `format`.
pub fn check_format(format: &str) -> Result<(), String> {
    if format.is_empty() {
        return Err("the format is empty".to_owned());
    }
    match StrftimeItems::new(format).position(|item| matches!(item, Item::Error)) {
        Some(_) => Err(format!(
            "invalid date/time format `{format}`: it has an unknown `%` specifier; write chrono \
             strftime specifiers, e.g. %Y-%m-%d or %d/%m/%Y %H:%M"
        )),
        None => Ok(()),
    }
}

/// The type `parse(text, format)` gives: a timestamptz when the format has an offset (`%z`,
/// `%:z`, `%+`) or is a Unix time (`%s`); a timestamp when it has a date and a time of day; a
/// date when it has only a date; a time when it has only a time of day.
pub fn parse_format_type(format: &str) -> Result<DataType, String> {
    check_format(format)?;
    let (mut date, mut time, mut zoned) = (false, false, false);
    for item in StrftimeItems::new(format) {
        match item {
            Item::Numeric(n, _) => match n {
                Numeric::Hour
                | Numeric::Hour12
                | Numeric::Minute
                | Numeric::Second
                | Numeric::Nanosecond => time = true,
                Numeric::Timestamp => zoned = true,
                _ => date = true,
            },
            Item::Fixed(f) => match f {
                Fixed::ShortMonthName
                | Fixed::LongMonthName
                | Fixed::ShortWeekdayName
                | Fixed::LongWeekdayName => date = true,
                Fixed::TimezoneOffsetColon
                | Fixed::TimezoneOffsetDoubleColon
                | Fixed::TimezoneOffsetTripleColon
                | Fixed::TimezoneOffsetColonZ
                | Fixed::TimezoneOffset
                | Fixed::TimezoneOffsetZ
                | Fixed::RFC2822
                | Fixed::RFC3339 => zoned = true,
                Fixed::TimezoneName => {}
                _ => time = true,
            },
            _ => {}
        }
    }
    Ok(match (date, time, zoned) {
        (_, _, true) => DataType::TimestampTz,
        (true, true, false) => DataType::Timestamp,
        (true, false, false) => DataType::Date,
        (false, true, false) => DataType::Time,
        (false, false, false) => {
            return Err(format!(
                "the format `{format}` has no date or time fields to parse; write e.g. %Y-%m-%d"
            ))
        }
    })
}

/// Checks a call's function name, argument count and literal arguments. The error names the
/// argument at fault (its index), or the call itself (`None`).
pub fn check_call(name: &str, args: &[Expr]) -> Result<(), (Option<usize>, String)> {
    let Some(f) = function(name) else {
        let hint = match did_you_mean(name, FUNCTIONS.iter().map(|f| f.name)) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!(
                "the functions are: {}",
                FUNCTIONS
                    .iter()
                    .map(|f| f.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Err((None, format!("unknown function `{name}`; {hint}")));
    };
    let count_ok = args.len() >= f.min_args && f.max_args.is_none_or(|max| args.len() <= max);
    if !count_ok {
        let expected = match f.max_args {
            Some(max) if max == f.min_args => plural(max, "argument"),
            Some(max) => format!("{} to {max} arguments", f.min_args),
            None => format!("at least {}", plural(f.min_args, "argument")),
        };
        return Err((
            None,
            format!(
                "{name}() takes {expected}, found {}: {}",
                args.len(),
                f.usage
            ),
        ));
    }
    for &(index, kind) in f.literals {
        let Some(arg) = args.get(index) else {
            continue;
        };
        let nth = ordinal(index);
        let text = match arg {
            Expr::Literal(Literal::Text(t)) => Some(t.as_str()),
            _ => None,
        };
        let result = match (kind, text) {
            (LiteralArg::Table, _) => match arg {
                Expr::Table(_) => Ok(()),
                _ => Err(format!(
                    "the {nth} argument of {name}() must be a value map like {{'1': 'gold'}}: {}",
                    f.usage
                )),
            },
            (_, None) => Err(format!(
                "the {nth} argument of {name}() must be a constant in quotes: {}",
                f.usage
            )),
            (LiteralArg::Type, Some(t)) => parse_type(t).map(|_| ()),
            (LiteralArg::ParseFormat, Some(t)) => parse_format_type(t).map(|_| ()),
            (LiteralArg::Format, Some(t)) => check_format(t),
            (LiteralArg::Path, Some(t)) => parse_path(t).map(|_| ()).map_err(|e| e.message),
            (LiteralArg::NonEmptyText, Some("")) => Err(format!(
                "the {nth} argument of {name}() must not be empty: {}",
                f.usage
            )),
            (LiteralArg::NonEmptyText | LiteralArg::Text, Some(_)) => Ok(()),
        };
        result.map_err(|message| (Some(index), message))?;
    }
    for (index, arg) in args.iter().enumerate() {
        let table_allowed = f.literals.contains(&(index, LiteralArg::Table));
        if matches!(arg, Expr::Table(_)) && !table_allowed {
            return Err((
                Some(index),
                "a `{...}` value map is only allowed as the second argument of map()".to_owned(),
            ));
        }
    }
    if name == "map" {
        if let Some(Expr::Table(entries)) = args.get(1) {
            check_table(entries).map_err(|m| (Some(1), m))?;
        }
    }
    Ok(())
}

/// A value map's values must all be of one type (nulls aside), and its keys distinct.
pub fn check_table(entries: &[(String, Literal)]) -> Result<(), String> {
    let mut seen: Vec<&str> = Vec::new();
    let mut kind: Option<DataType> = None;
    for (key, value) in entries {
        if seen.contains(&key.as_str()) {
            return Err(format!("the value map has the key '{key}' twice"));
        }
        seen.push(key);
        let Some(t) = value.data_type() else {
            continue;
        };
        let t = match (kind, t) {
            // Integers and floats mix as floats.
            (Some(DataType::Float64), DataType::Int64)
            | (Some(DataType::Int64), DataType::Float64) => DataType::Float64,
            (Some(k), t) if k != t => {
                return Err(format!(
                    "the values of a value map must be of one type, but '{key}' maps to {} and \
                     an earlier key to {}",
                    type_name(t),
                    type_name(k)
                ))
            }
            (_, t) => t,
        };
        kind = Some(t);
    }
    Ok(())
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn ordinal(index: usize) -> &'static str {
    ["first", "second", "third", "fourth"]
        .get(index)
        .copied()
        .unwrap_or("next")
}

// ---- Parsing ---------------------------------------------------------------------------------

/// A dotted path (`address.city`), for `from = "..."` and destination field names. Without a
/// backtick, the text is split at each dot; with one, segments in backticks are taken as they
/// are (`` `a.b`.c ``).
pub fn parse_path(text: &str) -> Result<Vec<String>, ExprError> {
    if !text.contains('`') {
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        if let Some(i) = segments.iter().position(|s| s.trim().is_empty()) {
            let offset = segments[..i].iter().map(|s| s.len() + 1).sum();
            return Err(ExprError::new(
                offset,
                segments[i].len(),
                format!("the path `{text}` has an empty part"),
            ));
        }
        return Ok(segments);
    }
    let mut p = Parser::new(text);
    let path = p.path_only()?;
    p.end()?;
    Ok(path)
}

/// Parses and checks an expression.
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    let mut p = Parser::new(text);
    let (expr, _) = p.expr()?;
    p.end()?;
    Ok(expr)
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Quoted(String),
    Text(String),
    Number(String),
    Punct(char),
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Quoted(s) => format!("`{}`", s.replace('`', "``")),
            Tok::Text(s) => quote(s),
            Tok::Number(n) => format!("`{n}`"),
            Tok::Punct(c) => format!("`{c}`"),
            Tok::End => "the end".to_owned(),
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    /// The current token and its byte range.
    tok: Tok,
    start: usize,
    end: usize,
    error: Option<ExprError>,
}

type Spanned<T> = (T, (usize, usize));

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        let mut p = Parser {
            text,
            pos: 0,
            tok: Tok::End,
            start: 0,
            end: 0,
            error: None,
        };
        p.advance();
        p
    }

    fn err<T>(&self, offset: usize, len: usize, message: String) -> Result<T, ExprError> {
        Err(ExprError::new(offset, len, message))
    }

    /// Moves to the next token; a lexical error is kept and reported when the token is used.
    fn advance(&mut self) {
        let bytes = self.text.as_bytes();
        while self.pos < bytes.len() && (bytes[self.pos] as char).is_ascii_whitespace() {
            self.pos += 1;
        }
        self.start = self.pos;
        let rest = &self.text[self.pos..];
        let Some(c) = rest.chars().next() else {
            self.tok = Tok::End;
            self.end = self.pos;
            return;
        };
        let after_dot = self.tok == Tok::Punct('.');
        let (tok, len) = if after_dot && c.is_ascii_digit() {
            // An array index in a path: `items.0.name`.
            let len = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            (Tok::Number(rest[..len].to_owned()), len)
        } else if c.is_ascii_alphabetic() || c == '_' {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (Tok::Ident(rest[..len].to_owned()), len)
        } else if c.is_ascii_digit()
            || (c == '-' && rest[1..].starts_with(|c: char| c.is_ascii_digit()))
        {
            let mut len = 1;
            let b = rest.as_bytes();
            let mut seen_e = false;
            while len < b.len() {
                let ch = b[len] as char;
                if ch.is_ascii_digit() || ch == '.' {
                    len += 1;
                } else if (ch == 'e' || ch == 'E') && !seen_e {
                    seen_e = true;
                    len += 1;
                    if len < b.len() && (b[len] == b'-' || b[len] == b'+') {
                        len += 1;
                    }
                } else {
                    break;
                }
            }
            let n = &rest[..len];
            if n.parse::<f64>().is_err() {
                self.error = Some(ExprError::new(
                    self.start,
                    len,
                    format!("`{n}` is not a number"),
                ));
            }
            (Tok::Number(n.to_owned()), len)
        } else if c == '\'' || c == '`' {
            // Quoted text or name; the quote doubled stands for itself.
            let mut value = String::new();
            let mut i = 1;
            let mut closed = false;
            while i < rest.len() {
                let ch = rest[i..].chars().next().unwrap_or(c);
                if ch == c {
                    if rest[i + 1..].starts_with(c) {
                        value.push(c);
                        i += 2;
                        continue;
                    }
                    closed = true;
                    i += 1;
                    break;
                }
                value.push(ch);
                i += ch.len_utf8();
            }
            if !closed {
                let what = if c == '\'' { "text" } else { "name" };
                self.error = Some(ExprError::new(
                    self.start,
                    1,
                    format!("unterminated {what}: the {c} here is never closed"),
                ));
            }
            let tok = if c == '\'' {
                Tok::Text(value)
            } else {
                Tok::Quoted(value)
            };
            (tok, i)
        } else if "(),.{}:".contains(c) {
            (Tok::Punct(c), 1)
        } else {
            let hint = if c == '"' {
                "; write text in single quotes: 'text'"
            } else {
                ""
            };
            self.error = Some(ExprError::new(
                self.start,
                c.len_utf8(),
                format!("unexpected character `{c}`{hint}"),
            ));
            (Tok::Punct(c), c.len_utf8())
        };
        self.pos += len;
        self.end = self.pos;
        self.tok = tok;
    }

    fn check_lexical(&mut self) -> Result<(), ExprError> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn unexpected<T>(&mut self, expected: &str) -> Result<T, ExprError> {
        self.check_lexical()?;
        let found = self.tok.describe();
        self.err(
            self.start,
            (self.end - self.start).max(1),
            format!("expected {expected}, found {found}"),
        )
    }

    fn eat(&mut self, c: char) -> Result<bool, ExprError> {
        self.check_lexical()?;
        if self.tok == Tok::Punct(c) {
            self.advance();
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn end(&mut self) -> Result<(), ExprError> {
        self.check_lexical()?;
        if self.tok == Tok::End {
            return Ok(());
        }
        self.unexpected("the end of the expression")
    }

    fn path_only(&mut self) -> Result<Vec<String>, ExprError> {
        self.check_lexical()?;
        let first = match &self.tok {
            Tok::Ident(s) | Tok::Quoted(s) => s.clone(),
            _ => return self.unexpected("a field name"),
        };
        self.advance();
        self.path_rest(first)
    }

    fn path_rest(&mut self, first: String) -> Result<Vec<String>, ExprError> {
        let mut path = vec![first];
        while self.eat('.')? {
            self.check_lexical()?;
            // After a dot, digits (an array index) are a segment too.
            let segment = match &self.tok {
                Tok::Ident(s) | Tok::Quoted(s) => s.clone(),
                Tok::Number(n) if n.chars().all(|c| c.is_ascii_digit()) => n.clone(),
                _ => return self.unexpected("a field name after `.`"),
            };
            self.advance();
            path.push(segment);
        }
        Ok(path)
    }

    fn expr(&mut self) -> Result<Spanned<Expr>, ExprError> {
        self.check_lexical()?;
        let start = self.start;
        let expr = match self.tok.clone() {
            Tok::Text(t) => {
                self.advance();
                Expr::Literal(Literal::Text(t))
            }
            Tok::Number(n) => {
                self.advance();
                Expr::Literal(Literal::Number(n))
            }
            Tok::Quoted(name) => {
                self.advance();
                Expr::Field(self.path_rest(name)?)
            }
            Tok::Ident(name) => {
                let name_end = self.end;
                self.advance();
                if self.eat('(')? {
                    return self.call(name, start, name_end);
                }
                match name.as_str() {
                    "true" if self.tok != Tok::Punct('.') => Expr::Literal(Literal::Bool(true)),
                    "false" if self.tok != Tok::Punct('.') => Expr::Literal(Literal::Bool(false)),
                    "null" if self.tok != Tok::Punct('.') => Expr::Literal(Literal::Null),
                    _ => Expr::Field(self.path_rest(name)?),
                }
            }
            Tok::Punct('{') => {
                self.advance();
                Expr::Table(self.table()?)
            }
            _ => return self.unexpected("a field, a constant or a function call"),
        };
        Ok((expr, (start, self.prev_end())))
    }

    /// The end of the last token consumed.
    fn prev_end(&self) -> usize {
        self.text[..self.start].trim_end().len()
    }

    fn call(
        &mut self,
        name: String,
        start: usize,
        name_end: usize,
    ) -> Result<Spanned<Expr>, ExprError> {
        if function(&name).is_none() {
            let (_, message) = check_call(&name, &[]).expect_err("unknown function");
            return self.err(start, name_end - start, message);
        }
        let mut args = Vec::new();
        let mut spans = Vec::new();
        if !self.eat(')')? {
            loop {
                let (arg, span) = self.expr()?;
                args.push(arg);
                spans.push(span);
                if self.eat(',')? {
                    continue;
                }
                if self.eat(')')? {
                    break;
                }
                return self.unexpected("`,` or `)`");
            }
        }
        let end = self.prev_end();
        if let Err((index, message)) = check_call(&name, &args) {
            let (s, e) = match index {
                Some(i) => spans[i],
                None => (start, end),
            };
            return self.err(s, e - s, message);
        }
        Ok((
            Expr::Call {
                function: name,
                args,
            },
            (start, end),
        ))
    }

    fn table(&mut self) -> Result<Vec<(String, Literal)>, ExprError> {
        let mut entries = Vec::new();
        loop {
            if self.eat('}')? {
                return Ok(entries);
            }
            self.check_lexical()?;
            let key = match &self.tok {
                Tok::Text(t) => t.clone(),
                Tok::Number(n) => n.clone(),
                Tok::Ident(b) if b == "true" || b == "false" => b.clone(),
                _ => return self.unexpected("a key in quotes, e.g. '1'"),
            };
            self.advance();
            if !self.eat(':')? {
                return self.unexpected("`:` after the key");
            }
            self.check_lexical()?;
            let value = match self.tok.clone() {
                Tok::Text(t) => Literal::Text(t),
                Tok::Number(n) => Literal::Number(n),
                Tok::Ident(b) if b == "true" => Literal::Bool(true),
                Tok::Ident(b) if b == "false" => Literal::Bool(false),
                Tok::Ident(b) if b == "null" => Literal::Null,
                _ => {
                    return self
                        .unexpected("a constant value ('text', a number, true, false or null)")
                }
            };
            self.advance();
            entries.push((key, value));
            if self.eat(',')? {
                continue;
            }
            if self.eat('}')? {
                return Ok(entries);
            }
            return self.unexpected("`,` or `}`");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(p: &str) -> Expr {
        Expr::field(p).unwrap()
    }

    #[test]
    fn parses_and_prints_back() {
        for text in [
            "lower(trim(email))",
            "concat(first_name, ' ', last_name)",
            "address.city",
            "tags.0",
            "items.0.name",
            "a.`0x`.`b c`",
            "`true`.null",
            "`first name`",
            "`a.b`.c",
            "cast(score_text, 'int64')",
            "map(level, {'1': 'gold', '2': 'silver'}, 'bronze')",
            "'it''s'",
            "-1.5",
            "true",
            "null",
            "default(x, 0)",
            "parse(d, '%d/%m/%Y')",
        ] {
            let e = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(e.to_string(), text);
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Expr>(&json).unwrap(), e);
        }
        assert_eq!(
            parse(" lower( trim(email) ) ").unwrap(),
            Expr::call("lower", vec![Expr::call("trim", vec![field("email")])])
        );
        assert_eq!(
            parse("`a.b`.c").unwrap(),
            Expr::Field(vec!["a.b".into(), "c".into()])
        );
        assert_eq!(
            parse("concat(a, b.c, a)").unwrap().fields(),
            [&["a".to_owned()][..], &["b".to_owned(), "c".to_owned()][..]]
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let cases = [
            ("lower(email", 11, "expected `,` or `)`, found the end"),
            (
                "lowr(email)",
                0,
                "unknown function `lowr`; did you mean `lower`?",
            ),
            (
                "lower(email, x)",
                0,
                "lower() takes 1 argument, found 2: lower(text)",
            ),
            (
                "cast(x, 'int65')",
                8,
                "unknown type `int65`; did you mean `int64`?",
            ),
            (
                "cast(x, int64)",
                8,
                "the second argument of cast() must be a constant in quotes",
            ),
            ("format(x, '%Q')", 10, "invalid date/time format `%Q`"),
            ("concat(a, 'b)", 10, "unterminated text"),
            (
                "concat(a, \"b\")",
                10,
                "unexpected character `\"`; write text in single quotes",
            ),
            (
                "lower(email) x",
                13,
                "expected the end of the expression, found `x`",
            ),
            (
                "map(x, {'a': 1, 'a': 2})",
                7,
                "the value map has the key 'a' twice",
            ),
            (
                "map(x, {'a': 1, 'b': 'c'})",
                7,
                "the values of a value map must be of one type",
            ),
            (
                "lower({'a': 1})",
                6,
                "only allowed as the second argument of map()",
            ),
            ("a.", 2, "expected a field name after `.`"),
            (
                "",
                0,
                "expected a field, a constant or a function call, found the end",
            ),
        ];
        for (text, offset, message) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.offset, offset, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {}", e.message);
        }
    }

    #[test]
    fn paths_split_at_dots_unless_quoted() {
        assert_eq!(parse_path("address.city").unwrap(), ["address", "city"]);
        assert_eq!(parse_path("first name").unwrap(), ["first name"]);
        assert_eq!(parse_path("`a.b`.c").unwrap(), ["a.b", "c"]);
        assert_eq!(parse_path("a..b").unwrap_err().offset, 2);
    }

    #[test]
    fn formats_give_their_types() {
        assert_eq!(parse_format_type("%d/%m/%Y").unwrap(), DataType::Date);
        assert_eq!(
            parse_format_type("%Y-%m-%d %H:%M").unwrap(),
            DataType::Timestamp
        );
        assert_eq!(parse_format_type("%H:%M:%S").unwrap(), DataType::Time);
        assert_eq!(
            parse_format_type("%Y-%m-%dT%H:%M:%S%z").unwrap(),
            DataType::TimestampTz
        );
        assert_eq!(parse_format_type("%s").unwrap(), DataType::TimestampTz);
        assert!(parse_format_type("at").is_err());
        assert_eq!(
            parse_type("decimal(10, 2)").unwrap(),
            DataType::Decimal {
                precision: 10,
                scale: 2
            }
        );
        assert!(parse_type("decimal(50,2)").is_err());
        assert_eq!(type_name(DataType::TimestampTz), "timestamptz");
        assert_eq!(
            parse_type(&type_name(DataType::Int64)).unwrap(),
            DataType::Int64
        );
    }
}
