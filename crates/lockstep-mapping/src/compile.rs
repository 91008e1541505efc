//! Typing a mapping expression against the source stream: every problem that the schemas
//! alone reveal (an unknown field, a path into a column that is not JSON, lower() of a number,
//! a cast that cannot work) is found here, before any record is read.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use chrono::format::{Item, StrftimeItems};
use lockstep_core::protocol::{DataType, StreamInfo};
use lockstep_expr::{self as expr, path_text, type_name, Expr, Literal};

use crate::cast::{a_type, can_cast, cast};
use crate::MappingError;

/// A typed expression.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub op: Op,
    /// The logical type of the value.
    pub ty: DataType,
    /// Whether the value can be null.
    pub nullable: bool,
    /// An untyped `null` constant, which takes the type of its context.
    pub null_literal: bool,
    /// The expression's text, for messages.
    pub text: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// A source column.
    Column(String),
    /// A path into a JSON source column.
    Path {
        column: String,
        path: Vec<String>,
    },
    /// A path into a computed JSON value.
    Get {
        input: Box<Node>,
        path: Vec<String>,
    },
    /// A constant: an array of one value.
    Const(ArrayRef),
    Text(TextOp, Box<Node>),
    /// Text inputs, nulls skipped.
    Concat(Vec<Node>),
    Split(String, Box<Node>),
    Coalesce(Vec<Node>),
    /// To the node's type.
    Cast(Box<Node>),
    /// Text to the node's type, with a strftime format.
    Parse(String, Box<Node>),
    Format(String, Box<Node>),
    Hash(HashAlgo, Box<Node>),
    Map {
        /// Text.
        input: Box<Node>,
        lookup: HashMap<String, u32>,
        /// The values, of the node's type, indexed by `lookup`.
        values: ArrayRef,
        fallback: Option<Box<Node>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TextOp {
    Lower,
    Upper,
    Trim,
    LTrim,
    RTrim,
    Replace(String, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HashAlgo {
    Sha256,
    Xxh3,
}

impl Node {
    fn new(op: Op, ty: DataType, nullable: bool, text: String) -> Node {
        Node {
            op,
            ty,
            nullable,
            null_literal: false,
            text,
        }
    }

    /// The source columns this node reads, in order of first use.
    pub fn columns<'a>(&'a self, out: &mut Vec<&'a str>) {
        let mut push = |c: &'a str| {
            if !out.contains(&c) {
                out.push(c);
            }
        };
        match &self.op {
            Op::Column(c) | Op::Path { column: c, .. } => push(c),
            Op::Const(_) => {}
            Op::Get { input: n, .. }
            | Op::Text(_, n)
            | Op::Split(_, n)
            | Op::Cast(n)
            | Op::Parse(_, n)
            | Op::Format(_, n)
            | Op::Hash(_, n) => n.columns(out),
            Op::Concat(args) | Op::Coalesce(args) => args.iter().for_each(|a| a.columns(out)),
            Op::Map {
                input, fallback, ..
            } => {
                input.columns(out);
                if let Some(f) = fallback {
                    f.columns(out);
                }
            }
        }
    }
}

/// A one-value array of a constant, or `None` for `null`.
fn literal_array(literal: &Literal) -> Option<(ArrayRef, DataType)> {
    Some(match literal {
        Literal::Null => return None,
        Literal::Bool(b) => (
            Arc::new(BooleanArray::from(vec![*b])) as ArrayRef,
            DataType::Boolean,
        ),
        Literal::Number(n) => match n.parse::<i64>() {
            Ok(i) if literal.data_type() == Some(DataType::Int64) => (
                Arc::new(Int64Array::from(vec![i])) as ArrayRef,
                DataType::Int64,
            ),
            _ => (
                Arc::new(Float64Array::from(vec![n
                    .parse::<f64>()
                    .unwrap_or(f64::NAN)])) as ArrayRef,
                DataType::Float64,
            ),
        },
        Literal::Text(t) => (
            Arc::new(StringArray::from(vec![t.as_str()])) as ArrayRef,
            DataType::Text,
        ),
    })
}

fn null_node(ty: DataType, text: String) -> Node {
    Node {
        op: Op::Const(new_null_array(&ty.arrow_type(), 1)),
        ty,
        nullable: true,
        null_literal: true,
        text,
    }
}

/// Types expressions for one destination field.
pub(crate) struct Compiler<'a> {
    pub sync: &'a str,
    pub target: &'a str,
    pub stream: &'a StreamInfo,
}

impl Compiler<'_> {
    fn invalid(&self, message: impl Into<String>) -> MappingError {
        MappingError::InvalidExpression {
            sync: self.sync.to_owned(),
            target: self.target.to_owned(),
            message: message.into(),
        }
    }

    fn incompatible(&self, message: impl Into<String>) -> MappingError {
        MappingError::IncompatibleType {
            sync: self.sync.to_owned(),
            target: self.target.to_owned(),
            message: message.into(),
        }
    }

    pub fn compile(&self, e: &Expr) -> Result<Node, MappingError> {
        let text = e.to_string();
        match e {
            Expr::Field(path) => self.field(path, text),
            Expr::Literal(literal) => Ok(match literal_array(literal) {
                Some((array, ty)) => Node::new(Op::Const(array), ty, false, text),
                None => null_node(DataType::Text, text),
            }),
            Expr::Table(_) => {
                Err(self
                    .invalid("a `{...}` value map is only allowed as the second argument of map()"))
            }
            Expr::Call { function, args } => {
                expr::check_call(function, args).map_err(|(_, m)| self.invalid(m))?;
                self.call(function, args, text)
            }
        }
    }

    fn field(&self, path: &[String], text: String) -> Result<Node, MappingError> {
        if path.is_empty() || path.iter().any(String::is_empty) {
            return Err(self.invalid(format!("the path `{text}` has an empty part")));
        }
        // The longest leading part that names a field is the field; the rest is a path in it.
        for split in (1..=path.len()).rev() {
            let name = path[..split].join(".");
            let Some(field) = self.stream.field(&name) else {
                continue;
            };
            if split == path.len() {
                return Ok(Node::new(
                    Op::Column(name),
                    field.data_type,
                    field.nullable,
                    text,
                ));
            }
            if field.data_type != DataType::Json {
                let rest = path_text(&path[split..]);
                return Err(self.incompatible(format!(
                    "`{text}` is a path into source field `{name}`, which is {}, not json; paths \
                     read into json fields only{}",
                    type_name(field.data_type),
                    if field.data_type == DataType::Text {
                        format!(
                            " (for JSON held in text, write get(cast({}, 'json'), '{rest}'))",
                            path_text(&path[..split])
                        )
                    } else {
                        String::new()
                    }
                )));
            }
            return Ok(Node::new(
                Op::Path {
                    column: name,
                    path: path[split..].to_vec(),
                },
                DataType::Json,
                true,
                text,
            ));
        }
        Err(MappingError::UnknownSourceField {
            sync: self.sync.to_owned(),
            target: self.target.to_owned(),
            source_field: path.join("."),
            stream: self.stream.name.clone(),
            available: self
                .stream
                .fields
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// `node` as text: JSON and UUIDs convert; other types are an error naming `function`.
    fn text_arg(&self, node: Node, function: &str) -> Result<Node, MappingError> {
        match node.ty {
            DataType::Text => Ok(node),
            DataType::Json | DataType::Uuid => Ok(to_text(node)),
            _ if node.null_literal => Ok(null_node(DataType::Text, node.text)),
            other => Err(self.incompatible(format!(
                "{function}() needs text, but `{}` is {}; convert it first: \
                 {function}(cast({}, 'text'))",
                node.text,
                type_name(other),
                node.text
            ))),
        }
    }

    /// `node` with type `ty`: a constant is converted now; another value must have that type.
    fn coerce(&self, node: Node, ty: DataType, what: &str) -> Result<Node, MappingError> {
        if node.ty == ty {
            return Ok(node);
        }
        if node.null_literal {
            return Ok(null_node(ty, node.text));
        }
        if let Op::Const(array) = &node.op {
            if ty == DataType::Json {
                // A constant where JSON is expected is that JSON value: 'none' is the string
                // "none" (cast('...', 'json') parses text instead).
                let value =
                    lockstep_core::protocol::arrow_types::json_value(array, 0, Some(node.ty));
                let json: ArrayRef = Arc::new(StringArray::from(vec![value.to_string()]));
                return Ok(Node::new(Op::Const(json), ty, false, node.text));
            }
            if can_cast(node.ty, ty) {
                let mut errors = vec![None];
                let converted = cast(array, node.ty, ty, &mut errors)?;
                if let Some(reason) = errors.pop().flatten() {
                    return Err(self.incompatible(format!("{what}: {reason}")));
                }
                return Ok(Node::new(Op::Const(converted), ty, false, node.text));
            }
        }
        Err(self.incompatible(format!(
            "{what}: `{}` is {}, but {} is expected; convert it: cast({}, '{}')",
            node.text,
            type_name(node.ty),
            type_name(ty),
            node.text,
            type_name(ty)
        )))
    }

    fn call(&self, function: &str, args: &[Expr], text: String) -> Result<Node, MappingError> {
        let literal_text = |i: usize| match args.get(i) {
            Some(Expr::Literal(Literal::Text(t))) => t.clone(),
            _ => String::new(),
        };
        let arg = |i: usize| self.compile(&args[i]);
        let node = match function {
            "lower" | "upper" | "trim" | "ltrim" | "rtrim" | "replace" => {
                let input = self.text_arg(arg(0)?, function)?;
                let op = match function {
                    "lower" => TextOp::Lower,
                    "upper" => TextOp::Upper,
                    "trim" => TextOp::Trim,
                    "ltrim" => TextOp::LTrim,
                    "rtrim" => TextOp::RTrim,
                    _ => TextOp::Replace(literal_text(1), literal_text(2)),
                };
                let nullable = input.nullable;
                Node::new(
                    Op::Text(op, Box::new(input)),
                    DataType::Text,
                    nullable,
                    text,
                )
            }
            "concat" => {
                let mut parts = Vec::new();
                for a in args {
                    let node = self.compile(a)?;
                    if node.null_literal {
                        continue;
                    }
                    parts.push(if node.ty == DataType::Text {
                        node
                    } else {
                        to_text(node)
                    });
                }
                Node::new(Op::Concat(parts), DataType::Text, false, text)
            }
            "split" => {
                let input = self.text_arg(arg(0)?, function)?;
                let nullable = input.nullable;
                Node::new(
                    Op::Split(literal_text(1), Box::new(input)),
                    DataType::Json,
                    nullable,
                    text,
                )
            }
            "get" => {
                let input = arg(0)?;
                if input.ty != DataType::Json && !input.null_literal {
                    return Err(self.incompatible(format!(
                        "get() reads a path in json, but `{}` is {}; convert it first: \
                         get(cast({}, 'json'), '...')",
                        input.text,
                        type_name(input.ty),
                        input.text
                    )));
                }
                let path = expr::parse_path(&literal_text(1))
                    .map_err(|e| self.invalid(format!("get(): {}", e.message)))?;
                Node::new(
                    Op::Get {
                        input: Box::new(input),
                        path,
                    },
                    DataType::Json,
                    true,
                    text,
                )
            }
            "coalesce" | "default" => {
                let nodes = args
                    .iter()
                    .map(|a| self.compile(a))
                    .collect::<Result<Vec<_>, _>>()?;
                let ty = nodes
                    .iter()
                    .find(|n| !n.null_literal && !matches!(n.op, Op::Const(_)))
                    .or_else(|| nodes.iter().find(|n| !n.null_literal))
                    .map_or(DataType::Text, |n| n.ty);
                let what = format!("{function}() gives {}", a_type(ty));
                let nodes = nodes
                    .into_iter()
                    .map(|n| self.coerce(n, ty, &what))
                    .collect::<Result<Vec<_>, _>>()?;
                let nullable = nodes.iter().all(|n| n.nullable);
                Node::new(Op::Coalesce(nodes), ty, nullable, text)
            }
            "cast" => {
                let to = expr::parse_type(&literal_text(1)).map_err(|m| self.invalid(m))?;
                let input = arg(0)?;
                if input.null_literal {
                    return Ok(null_node(to, text));
                }
                if !can_cast(input.ty, to) {
                    return Err(self.incompatible(format!(
                        "cannot cast `{}`, {}, to {}{}",
                        input.text,
                        a_type(input.ty),
                        type_name(to),
                        cast_hint(input.ty, to)
                    )));
                }
                if input.ty == to {
                    return Ok(Node { text, ..input });
                }
                // A JSON `null` document becomes a null.
                let nullable = input.nullable || input.ty == DataType::Json;
                Node::new(Op::Cast(Box::new(input)), to, nullable, text)
            }
            "parse" => {
                let format = literal_text(1);
                let ty = expr::parse_format_type(&format).map_err(|m| self.invalid(m))?;
                let input = self.text_arg(arg(0)?, function)?;
                let nullable = input.nullable;
                Node::new(Op::Parse(format, Box::new(input)), ty, nullable, text)
            }
            "format" => {
                let format = literal_text(1);
                expr::check_format(&format).map_err(|m| self.invalid(m))?;
                let input = arg(0)?;
                let input = if input.null_literal {
                    null_node(DataType::Timestamp, input.text)
                } else {
                    input
                };
                let fits = match input.ty {
                    DataType::Date
                    | DataType::Time
                    | DataType::Timestamp
                    | DataType::TimestampTz => format_fits(&format, input.ty),
                    DataType::Text | DataType::Json => {
                        return Err(self.incompatible(format!(
                            "format() needs a date, time or timestamp, but `{}` is {}; parse it \
                             first: format(parse({}, '<its format>'), '{format}')",
                            input.text,
                            type_name(input.ty),
                            input.text
                        )))
                    }
                    other => {
                        return Err(self.incompatible(format!(
                            "format() needs a date, time or timestamp, but `{}` is {}",
                            input.text,
                            type_name(other)
                        )))
                    }
                };
                if !fits {
                    return Err(self.incompatible(format!(
                        "the format `{format}` asks for fields that `{}`, {}, does not have \
                         (a time of day of a date, a date of a time, or an offset of a \
                         timestamp without time zone)",
                        input.text,
                        a_type(input.ty)
                    )));
                }
                let nullable = input.nullable;
                Node::new(
                    Op::Format(format, Box::new(input)),
                    DataType::Text,
                    nullable,
                    text,
                )
            }
            "sha256" | "xxh3" => {
                let input = arg(0)?;
                let input = if input.null_literal {
                    null_node(DataType::Text, input.text)
                } else {
                    input
                };
                let algo = if function == "sha256" {
                    HashAlgo::Sha256
                } else {
                    HashAlgo::Xxh3
                };
                let nullable = input.nullable;
                Node::new(
                    Op::Hash(algo, Box::new(input)),
                    DataType::Text,
                    nullable,
                    text,
                )
            }
            "map" => self.map(args, text)?,
            other => return Err(self.invalid(format!("unknown function `{other}`"))),
        };
        Ok(node)
    }

    fn map(&self, args: &[Expr], text: String) -> Result<Node, MappingError> {
        let input = self.compile(&args[0])?;
        if input.ty == DataType::Binary {
            return Err(self.incompatible(format!(
                "map() looks values up by their text, but `{}` is binary",
                input.text
            )));
        }
        let input = match input.ty {
            DataType::Text => input,
            _ if input.null_literal => null_node(DataType::Text, input.text),
            _ => to_text(input),
        };
        let Some(Expr::Table(entries)) = args.get(1) else {
            return Err(self.invalid("the second argument of map() must be a value map"));
        };
        expr::check_table(entries).map_err(|m| self.invalid(m))?;
        let fallback = args.get(2).map(|f| self.compile(f)).transpose()?;
        // The values' type: that of the table's values, else of the fallback, else text.
        let table_type = entries
            .iter()
            .filter_map(|(_, v)| v.data_type())
            .reduce(|a, b| if a == b { a } else { DataType::Float64 });
        let ty = table_type
            .or_else(|| fallback.as_ref().filter(|f| !f.null_literal).map(|f| f.ty))
            .unwrap_or(DataType::Text);
        let mut lookup = HashMap::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        let mut any_null = false;
        for (i, (key, value)) in entries.iter().enumerate() {
            lookup.insert(key.clone(), i as u32);
            let node = match literal_array(value) {
                Some((array, t)) => Node::new(Op::Const(array), t, false, value.to_string()),
                None => {
                    any_null = true;
                    null_node(ty, "null".to_owned())
                }
            };
            let node = self.coerce(node, ty, &format!("map() value for '{key}'"))?;
            let Op::Const(array) = node.op else {
                unreachable!("constants stay constants");
            };
            arrays.push(array);
        }
        let values = if arrays.is_empty() {
            new_null_array(&ty.arrow_type(), 0)
        } else {
            let refs: Vec<&dyn arrow::array::Array> = arrays.iter().map(|a| a.as_ref()).collect();
            arrow::compute::concat(&refs).map_err(|e| self.invalid(e.to_string()))?
        };
        let fallback = fallback
            .map(|f| self.coerce(f, ty, "the fallback of map()"))
            .transpose()?;
        let nullable = any_null
            || match &fallback {
                Some(f) => f.nullable,
                None => input.nullable,
            };
        Ok(Node::new(
            Op::Map {
                input: Box::new(input),
                lookup,
                values,
                fallback: fallback.map(Box::new),
            },
            ty,
            nullable,
            text,
        ))
    }
}

fn to_text(node: Node) -> Node {
    // A JSON `null` document becomes a null.
    let nullable = node.nullable || node.ty == DataType::Json;
    let text = node.text.clone();
    Node::new(Op::Cast(Box::new(node)), DataType::Text, nullable, text)
}

fn cast_hint(from: DataType, to: DataType) -> String {
    match (from, to) {
        (
            DataType::Int32 | DataType::Int64,
            DataType::Date | DataType::Timestamp | DataType::TimestampTz,
        ) => " (for Unix seconds, write parse(cast(x, 'text'), '%s'))".to_owned(),
        (DataType::Date, DataType::Time) => " (a date has no time of day)".to_owned(),
        _ => String::new(),
    }
}

/// Whether formatting a value of type `ty` with `format` works (chrono fails on a field the
/// value does not have, such as %H of a date).
pub(crate) fn format_fits(format: &str, ty: DataType) -> bool {
    use std::fmt::Write;
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    let date = chrono::NaiveDate::from_ymd_opt(2024, 1, 2).expect("a valid date");
    let time = chrono::NaiveTime::from_hms_opt(3, 4, 5).expect("a valid time");
    let mut out = String::new();
    match ty {
        DataType::Date => write!(out, "{}", date.format_with_items(items.iter())),
        DataType::Time => write!(out, "{}", time.format_with_items(items.iter())),
        DataType::Timestamp => write!(
            out,
            "{}",
            date.and_time(time).format_with_items(items.iter())
        ),
        _ => write!(
            out,
            "{}",
            date.and_time(time)
                .and_utc()
                .format_with_items(items.iter())
        ),
    }
    .is_ok()
}
