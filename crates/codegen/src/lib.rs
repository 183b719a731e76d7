//! Turns the AMQP spec JSON into the Rust source of `crates/codec/src/generated.rs`.
//!
//! A library as well as a binary so the codec's staleness test can regenerate the file in memory
//! and compare it with the checked-in one.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The spec file, relative to the workspace root.
pub const SPEC_PATH: &str = "crates/codegen/spec/amqp-rabbitmq-0.9.1.json";
/// The generated file, relative to the workspace root.
pub const OUTPUT_PATH: &str = "crates/codec/src/generated.rs";
/// The generated proptest strategies for the codec's tests, relative to the workspace root.
pub const STRATEGIES_PATH: &str = "crates/codec/tests/support/strategies.rs";
/// The command that refreshes the generated file.
pub const REFRESH_COMMAND: &str = "cargo run -p warren-codegen";

/// Fields that AMQP 0-9-1 marks as reserved (named `reserved-N` in the 0-9-1 XML) but that the
/// RabbitMQ JSON still names after their 0-8 meaning. They are not struct fields: decoding skips
/// them and encoding writes zero or an empty string. `*` matches every method of the class.
const RESERVED: &[(&str, &str, &str)] = &[
    ("connection", "open", "capabilities"),
    ("connection", "open", "insist"),
    ("connection", "open-ok", "known-hosts"),
    ("channel", "open", "out-of-band"),
    ("channel", "open-ok", "channel-id"),
    ("exchange", "*", "ticket"),
    ("queue", "*", "ticket"),
    ("basic", "*", "ticket"),
    ("basic", "get-empty", "cluster-id"),
];

/// An error in the spec file.
#[derive(Debug)]
pub struct SpecError(pub String);

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

fn err<T>(message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(message.into()))
}

/// The wire types the spec uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Octet,
    Short,
    Long,
    LongLong,
    Bit,
    ShortStr,
    LongStr,
    Table,
    Timestamp,
}

impl Kind {
    fn parse(name: &str) -> Result<Kind, SpecError> {
        Ok(match name {
            "octet" => Kind::Octet,
            "short" => Kind::Short,
            "long" => Kind::Long,
            "longlong" => Kind::LongLong,
            "bit" => Kind::Bit,
            "shortstr" => Kind::ShortStr,
            "longstr" => Kind::LongStr,
            "table" => Kind::Table,
            "timestamp" => Kind::Timestamp,
            other => return err(format!("unknown type {other}")),
        })
    }

    fn rust_type(self) -> &'static str {
        match self {
            Kind::Octet => "u8",
            Kind::Short => "u16",
            Kind::Long => "u32",
            Kind::LongLong | Kind::Timestamp => "u64",
            Kind::Bit => "bool",
            Kind::ShortStr => "ShortString",
            Kind::LongStr => "Bytes",
            Kind::Table => "FieldTable",
        }
    }

    /// The `Reader` method that decodes a value of this type (bits are handled separately).
    fn reader(self) -> &'static str {
        match self {
            Kind::Octet => "u8()",
            Kind::Short => "u16()",
            Kind::Long => "u32()",
            Kind::LongLong | Kind::Timestamp => "u64()",
            Kind::Bit => "u8()",
            Kind::ShortStr => "shortstr()",
            Kind::LongStr => "longstr()",
            Kind::Table => "table()",
        }
    }

    /// The `Reader` call that skips a reserved value of this type.
    fn skipper(self) -> &'static str {
        match self {
            Kind::Octet | Kind::Bit => "skip(1)",
            Kind::Short => "skip(2)",
            Kind::Long => "skip(4)",
            Kind::LongLong | Kind::Timestamp => "skip(8)",
            Kind::ShortStr => "skip_shortstr()",
            Kind::LongStr => "skip_longstr()",
            Kind::Table => "skip_table()",
        }
    }

    /// Statement that encodes `expr` (a place of this type) into `buf`.
    fn writer(self, expr: &str) -> String {
        match self {
            Kind::Octet => format!("buf.put_u8({expr});"),
            Kind::Short => format!("buf.put_u16({expr});"),
            Kind::Long => format!("buf.put_u32({expr});"),
            Kind::LongLong | Kind::Timestamp => format!("buf.put_u64({expr});"),
            Kind::Bit => format!("buf.put_u8(u8::from({expr}));"),
            Kind::ShortStr => format!("wire::put_shortstr(buf, &{expr});"),
            Kind::LongStr => format!("wire::put_longstr(buf, &{expr});"),
            Kind::Table => format!("{expr}.encode(buf);"),
        }
    }

    /// Statement that encodes the zero value of this type, for reserved fields.
    fn zero_writer(self) -> &'static str {
        match self {
            Kind::Octet | Kind::Bit => "buf.put_u8(0);",
            Kind::Short => "buf.put_u16(0);",
            Kind::Long | Kind::LongStr | Kind::Table => "buf.put_u32(0);",
            Kind::LongLong | Kind::Timestamp => "buf.put_u64(0);",
            Kind::ShortStr => "buf.put_u8(0);",
        }
    }
}

struct Field {
    spec_name: String,
    rust_name: String,
    kind: Kind,
    default: Option<Value>,
    reserved: bool,
}

struct MethodSpec {
    class_name: String,
    class_id: u16,
    name: String,
    id: u16,
    rust_name: String,
    content: bool,
    synchronous: bool,
    fields: Vec<Field>,
}

struct Constant {
    name: String,
    value: u64,
    class: Option<String>,
}

struct Spec {
    major: u64,
    minor: u64,
    revision: u64,
    port: u64,
    constants: Vec<Constant>,
    classes: Vec<(String, u16)>,
    methods: Vec<MethodSpec>,
    properties: Vec<Field>,
}

/// `queue.declare-ok` -> `QueueDeclareOk`.
fn upper_camel(parts: &[&str]) -> String {
    let mut out = String::new();
    for part in parts {
        for word in part.split('-') {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.extend(chars.flat_map(|c| c.to_lowercase()));
            }
        }
    }
    out
}

/// `no-ack` -> `no_ack`; `type` -> `kind` (a Rust keyword).
fn snake(name: &str) -> String {
    match name {
        "type" => "kind".to_owned(),
        other => other.replace('-', "_"),
    }
}

/// `NOT-FOUND` -> `NOT_FOUND`.
fn screaming(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

fn str_of<'a>(value: &'a Value, key: &str) -> Result<&'a str, SpecError> {
    value
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| SpecError(format!("missing string {key:?} in {value}")))
}

fn u64_of(value: &Value, key: &str) -> Result<u64, SpecError> {
    value
        .get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| SpecError(format!("missing number {key:?} in {value}")))
}

fn u16_of(value: &Value, key: &str) -> Result<u16, SpecError> {
    u16::try_from(u64_of(value, key)?).map_err(|_| SpecError(format!("{key:?} out of range")))
}

fn array_of<'a>(value: &'a Value, key: &str) -> Result<&'a Vec<Value>, SpecError> {
    value
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| SpecError(format!("missing array {key:?}")))
}

fn parse_spec(json: &str) -> Result<Spec, SpecError> {
    let root: Value =
        serde_json::from_str(json).map_err(|e| SpecError(format!("spec is not JSON: {e}")))?;
    let mut domains = std::collections::HashMap::new();
    for domain in array_of(&root, "domains")? {
        let pair = domain
            .as_array()
            .filter(|pair| pair.len() == 2)
            .ok_or_else(|| SpecError(format!("bad domain {domain}")))?;
        let (Some(name), Some(kind)) = (pair[0].as_str(), pair[1].as_str()) else {
            return err(format!("bad domain {domain}"));
        };
        domains.insert(name.to_owned(), Kind::parse(kind)?);
    }
    let resolve = |field: &Value| -> Result<Kind, SpecError> {
        if let Some(kind) = field.get("type").and_then(Value::as_str) {
            return Kind::parse(kind);
        }
        let domain = str_of(field, "domain")?;
        domains
            .get(domain)
            .copied()
            .ok_or_else(|| SpecError(format!("unknown domain {domain}")))
    };

    let mut constants = Vec::new();
    for constant in array_of(&root, "constants")? {
        constants.push(Constant {
            name: str_of(constant, "name")?.to_owned(),
            value: u64_of(constant, "value")?,
            class: constant
                .get("class")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }

    let mut classes = Vec::new();
    let mut methods = Vec::new();
    let mut properties = Vec::new();
    for class in array_of(&root, "classes")? {
        let class_name = str_of(class, "name")?;
        let class_id = u16_of(class, "id")?;
        classes.push((class_name.to_owned(), class_id));
        for method in array_of(class, "methods")? {
            let name = str_of(method, "name")?;
            let mut fields = Vec::new();
            for argument in array_of(method, "arguments")? {
                let spec_name = str_of(argument, "name")?;
                let reserved = RESERVED.iter().any(|(c, m, f)| {
                    *c == class_name && (*m == "*" || *m == name) && *f == spec_name
                });
                fields.push(Field {
                    spec_name: spec_name.to_owned(),
                    rust_name: snake(spec_name),
                    kind: resolve(argument)?,
                    default: argument.get("default-value").cloned(),
                    reserved,
                });
            }
            methods.push(MethodSpec {
                class_name: class_name.to_owned(),
                class_id,
                name: name.to_owned(),
                id: u16_of(method, "id")?,
                rust_name: upper_camel(&[class_name, name]),
                content: method.get("content").and_then(Value::as_bool) == Some(true),
                synchronous: method.get("synchronous").and_then(Value::as_bool) == Some(true),
                fields,
            });
        }
        if class_name == "basic" {
            for property in array_of(class, "properties")? {
                let spec_name = str_of(property, "name")?;
                properties.push(Field {
                    spec_name: spec_name.to_owned(),
                    rust_name: snake(spec_name),
                    kind: resolve(property)?,
                    default: None,
                    reserved: false,
                });
            }
        }
    }
    if properties.len() > 15 {
        return err("more than 15 basic properties need flag continuation words");
    }
    Ok(Spec {
        major: u64_of(&root, "major-version")?,
        minor: u64_of(&root, "minor-version")?,
        revision: u64_of(&root, "revision")?,
        port: u64_of(&root, "port")?,
        constants,
        classes,
        methods,
        properties,
    })
}

/// A Rust expression for a field's spec default value.
fn default_expr(field: &Field) -> Result<String, SpecError> {
    let Some(value) = &field.default else {
        return Ok("Default::default()".to_owned());
    };
    Ok(match (field.kind, value) {
        (Kind::Bit, Value::Bool(b)) => b.to_string(),
        (Kind::Octet | Kind::Short | Kind::Long | Kind::LongLong | Kind::Timestamp, v) => {
            let n = v
                .as_u64()
                .ok_or_else(|| SpecError(format!("bad default {v} for {}", field.spec_name)))?;
            n.to_string()
        }
        (Kind::ShortStr, Value::String(s)) if s.is_empty() => "ShortString::new()".to_owned(),
        (Kind::ShortStr, Value::String(s)) => format!("ShortString::from_static({s:?})"),
        (Kind::LongStr, Value::String(s)) if s.is_empty() => "Bytes::new()".to_owned(),
        (Kind::LongStr, Value::String(s)) => format!("Bytes::from_static(b{s:?})"),
        (Kind::Table, Value::Object(map)) if map.is_empty() => "FieldTable::new()".to_owned(),
        (_, v) => return err(format!("unsupported default {v} for {}", field.spec_name)),
    })
}

/// Generates the unformatted Rust source of `generated.rs` from the spec JSON text.
pub fn generate(spec_json: &str) -> Result<String, SpecError> {
    let spec = parse_spec(spec_json)?;
    let mut out = String::new();
    emit(&spec, &mut out)
        .map_err(|e| SpecError(format!("formatting into a String failed: {e}")))?;
    Ok(out)
}

/// Formats Rust source with `rustfmt` (edition 2024), as `cargo fmt` would.
pub fn format(source: &str) -> std::io::Result<String> {
    let mut child = Command::new(std::env::var("RUSTFMT").unwrap_or_else(|_| "rustfmt".into()))
        .args(["--edition", "2024", "--emit", "stdout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("rustfmt has no stdin"))?;
    let input = source.to_owned();
    // Write on another thread so a large output cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| std::io::Error::other("rustfmt writer thread panicked"))??;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "rustfmt failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    String::from_utf8(output.stdout).map_err(std::io::Error::other)
}

/// Generates and formats: exactly the content `generated.rs` must have.
pub fn generate_formatted(spec_json: &str) -> Result<String, Box<dyn std::error::Error>> {
    Ok(format(&generate(spec_json)?)?)
}

/// Generates the unformatted proptest strategies (one per method, plus basic properties) that
/// the codec's round-trip tests use, so a method added to the spec is tested without edits.
pub fn generate_strategies(spec_json: &str) -> Result<String, SpecError> {
    let spec = parse_spec(spec_json)?;
    let mut out = String::new();
    emit_strategies(&spec, &mut out)
        .map_err(|e| SpecError(format!("formatting into a String failed: {e}")))?;
    Ok(out)
}

/// Generates and formats: exactly the content `tests/support/strategies.rs` must have.
pub fn generate_strategies_formatted(
    spec_json: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    Ok(format(&generate_strategies(spec_json)?)?)
}

fn strategy_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Octet => "any::<u8>()",
        Kind::Short => "any::<u16>()",
        Kind::Long => "any::<u32>()",
        Kind::LongLong | Kind::Timestamp => "any::<u64>()",
        Kind::Bit => "any::<bool>()",
        Kind::ShortStr => "short_string()",
        Kind::LongStr => "long_string()",
        Kind::Table => "field_table()",
    }
}

fn emit_strategies(spec: &Spec, out: &mut String) -> std::fmt::Result {
    writeln!(out, "// generated by crates/codegen, do not edit")?;
    writeln!(
        out,
        "//! proptest strategies for every method and for basic properties, generated from\n\
         //! `{SPEC_PATH}`. Refresh with `{REFRESH_COMMAND}`."
    )?;
    writeln!(out)?;
    writeln!(out, "use proptest::prelude::*;")?;
    writeln!(out, "use proptest::strategy::Union;")?;
    writeln!(out, "use warren_codec::*;")?;
    writeln!(out)?;
    writeln!(
        out,
        "use super::{{field_table, long_string, short_string}};"
    )?;
    writeln!(out)?;
    for method in &spec.methods {
        let public: Vec<&Field> = method.fields.iter().filter(|f| !f.reserved).collect();
        let fn_name = snake(&format!("{}-{}", method.class_name, method.name));
        writeln!(out, "/// Any `{}.{}`.", method.class_name, method.name)?;
        writeln!(
            out,
            "pub fn {fn_name}() -> impl Strategy<Value = {}> {{",
            method.rust_name
        )?;
        if public.is_empty() {
            writeln!(out, "    Just({})", method.rust_name)?;
        } else {
            let strategies: Vec<&str> = public.iter().map(|f| strategy_of(f.kind)).collect();
            let names: Vec<&str> = public.iter().map(|f| f.rust_name.as_str()).collect();
            writeln!(out, "    ({},).prop_map(", strategies.join(", "))?;
            writeln!(
                out,
                "        |({},)| {} {{ {} }},",
                names.join(", "),
                method.rust_name,
                names.join(", ")
            )?;
            writeln!(out, "    )")?;
        }
        writeln!(out, "}}")?;
        writeln!(out)?;
    }
    writeln!(out, "/// Any method of any class, each equally likely.")?;
    writeln!(
        out,
        "pub fn any_method() -> impl Strategy<Value = Method> {{"
    )?;
    writeln!(out, "    Union::new(vec![")?;
    for method in &spec.methods {
        let fn_name = snake(&format!("{}-{}", method.class_name, method.name));
        writeln!(out, "        {fn_name}().prop_map(Method::from).boxed(),")?;
    }
    writeln!(out, "    ])")?;
    writeln!(out, "}}")?;
    writeln!(out)?;
    writeln!(out, "/// The number of methods `any_method` chooses from.")?;
    writeln!(out, "pub const N_METHODS: usize = {};", spec.methods.len())?;
    writeln!(out)?;
    writeln!(
        out,
        "/// Any basic properties, each property present or absent independently."
    )?;
    writeln!(
        out,
        "pub fn basic_properties() -> impl Strategy<Value = BasicProperties> {{"
    )?;
    // Tuples of strategies stop at 12 elements, so build the 14 in two halves.
    let (first, second) = spec.properties.split_at(spec.properties.len().div_ceil(2));
    let half = |fields: &[Field]| -> String {
        fields
            .iter()
            .map(|f| format!("proptest::option::of({})", strategy_of(f.kind)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let names = |fields: &[Field]| -> String {
        fields
            .iter()
            .map(|f| f.rust_name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(
        out,
        "    (({},), ({},)).prop_map(",
        half(first),
        half(second)
    )?;
    writeln!(
        out,
        "        |(({},), ({},))| BasicProperties {{ {}, {} }},",
        names(first),
        names(second),
        names(first),
        names(second)
    )?;
    writeln!(out, "    )")?;
    writeln!(out, "}}")
}

fn emit(spec: &Spec, out: &mut String) -> std::fmt::Result {
    writeln!(out, "// generated by crates/codegen, do not edit")?;
    writeln!(
        out,
        "//! Methods, basic properties, reply codes and constants of AMQP {}-{}-{},\n\
         //! generated from `{SPEC_PATH}`.\n//! Refresh with `{REFRESH_COMMAND}`.",
        spec.major, spec.minor, spec.revision
    )?;
    writeln!(out)?;
    writeln!(out, "use bytes::{{BufMut, Bytes, BytesMut}};")?;
    writeln!(out)?;
    writeln!(out, "use crate::error::{{DecodeError, FieldError}};")?;
    writeln!(out, "use crate::table::{{FieldTable, ShortString}};")?;
    writeln!(out, "use crate::wire::{{self, Reader}};")?;
    writeln!(out)?;
    emit_constants(spec, out)?;
    emit_reply_codes(spec, out)?;
    for method in &spec.methods {
        emit_method_struct(method, out)?;
    }
    emit_method_enum(spec, out)?;
    emit_properties(spec, out)?;
    Ok(())
}

fn emit_constants(spec: &Spec, out: &mut String) -> std::fmt::Result {
    writeln!(out, "/// Protocol major version.")?;
    writeln!(out, "pub const PROTOCOL_MAJOR: u8 = {};", spec.major)?;
    writeln!(out, "/// Protocol minor version.")?;
    writeln!(out, "pub const PROTOCOL_MINOR: u8 = {};", spec.minor)?;
    writeln!(out, "/// Protocol revision.")?;
    writeln!(out, "pub const PROTOCOL_REVISION: u8 = {};", spec.revision)?;
    writeln!(out, "/// The IANA-assigned AMQP port.")?;
    writeln!(out, "pub const PORT: u16 = {};", spec.port)?;
    for constant in spec.constants.iter().filter(|c| c.class.is_none()) {
        let (ty, doc) = match constant.name.as_str() {
            name if name.starts_with("FRAME-") && name != "FRAME-MIN-SIZE" => {
                ("u8", "Frame type octet or frame-end marker")
            }
            "FRAME-MIN-SIZE" => ("u32", "Smallest frame_max a peer may negotiate"),
            _ => ("u16", "Reply code"),
        };
        writeln!(out, "/// {doc} (`{}`).", constant.name)?;
        let value = if constant.name == "FRAME-END" {
            format!("{:#x}", constant.value)
        } else {
            constant.value.to_string()
        };
        writeln!(
            out,
            "pub const {}: {ty} = {value};",
            screaming(&constant.name)
        )?;
    }
    writeln!(out)?;
    writeln!(out, "/// Class ids.")?;
    writeln!(out, "pub mod class_id {{")?;
    for (name, id) in &spec.classes {
        writeln!(out, "    /// The `{name}` class.")?;
        writeln!(out, "    pub const {}: u16 = {id};", screaming(name))?;
    }
    writeln!(out, "}}")?;
    writeln!(out)
}

fn emit_reply_codes(spec: &Spec, out: &mut String) -> std::fmt::Result {
    let codes: Vec<&Constant> = spec
        .constants
        .iter()
        .filter(|c| c.class.is_some() || c.name == "REPLY-SUCCESS")
        .collect();
    writeln!(
        out,
        "/// The reply codes of `connection.close` and `channel.close`.\n\
         /// Soft errors close a channel, hard errors the connection."
    )?;
    writeln!(out, "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]")?;
    writeln!(out, "#[repr(u16)]")?;
    writeln!(out, "pub enum ReplyCode {{")?;
    for code in &codes {
        let class = code.class.as_deref().unwrap_or("success");
        writeln!(out, "    /// `{}` ({}, {class}).", code.name, code.value)?;
        writeln!(
            out,
            "    {} = {},",
            upper_camel(&[&code.name.to_lowercase()]),
            code.value
        )?;
    }
    writeln!(out, "}}")?;
    writeln!(out)?;
    writeln!(out, "impl ReplyCode {{")?;
    writeln!(out, "    /// Every reply code, in spec order.")?;
    writeln!(out, "    pub const ALL: [ReplyCode; {}] = [", codes.len())?;
    for code in &codes {
        writeln!(
            out,
            "        ReplyCode::{},",
            upper_camel(&[&code.name.to_lowercase()])
        )?;
    }
    writeln!(out, "    ];")?;
    writeln!(out)?;
    writeln!(out, "    /// The numeric code sent on the wire.")?;
    writeln!(out, "    pub const fn as_u16(self) -> u16 {{")?;
    writeln!(out, "        self as u16")?;
    writeln!(out, "    }}")?;
    writeln!(out)?;
    writeln!(
        out,
        "    /// The reply code with this number, if the spec defines one."
    )?;
    writeln!(
        out,
        "    pub const fn from_u16(code: u16) -> Option<ReplyCode> {{"
    )?;
    writeln!(out, "        match code {{")?;
    for code in &codes {
        writeln!(
            out,
            "            {} => Some(ReplyCode::{}),",
            code.value,
            upper_camel(&[&code.name.to_lowercase()])
        )?;
    }
    writeln!(out, "            _ => None,")?;
    writeln!(out, "        }}")?;
    writeln!(out, "    }}")?;
    writeln!(out)?;
    writeln!(
        out,
        "    /// Whether the spec classes this code as a hard error (closes the connection)."
    )?;
    writeln!(out, "    pub const fn is_hard(self) -> bool {{")?;
    let hard: Vec<String> = codes
        .iter()
        .filter(|c| c.class.as_deref() == Some("hard-error"))
        .map(|c| format!("ReplyCode::{}", upper_camel(&[&c.name.to_lowercase()])))
        .collect();
    writeln!(out, "        matches!(self, {})", hard.join(" | "))?;
    writeln!(out, "    }}")?;
    writeln!(out)?;
    writeln!(
        out,
        "    /// The name RabbitMQ puts at the start of a reply text, e.g. `NOT_FOUND`."
    )?;
    writeln!(out, "    pub const fn name(self) -> &'static str {{")?;
    writeln!(out, "        match self {{")?;
    for code in &codes {
        writeln!(
            out,
            "            ReplyCode::{} => {:?},",
            upper_camel(&[&code.name.to_lowercase()]),
            screaming(&code.name)
        )?;
    }
    writeln!(out, "        }}")?;
    writeln!(out, "    }}")?;
    writeln!(out, "}}")?;
    writeln!(out)?;
    writeln!(out, "impl From<ReplyCode> for u16 {{")?;
    writeln!(out, "    fn from(code: ReplyCode) -> u16 {{")?;
    writeln!(out, "        code as u16")?;
    writeln!(out, "    }}")?;
    writeln!(out, "}}")?;
    writeln!(out)
}

/// Groups of bit fields packed into one octet: (index of first field, number of fields).
fn bit_groups(fields: &[Field]) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < fields.len() {
        if fields[i].kind == Kind::Bit {
            let start = i;
            while i < fields.len() && fields[i].kind == Kind::Bit && i - start < 8 {
                i += 1;
            }
            groups.push((start, i - start));
        } else {
            i += 1;
        }
    }
    groups
}

fn emit_method_struct(method: &MethodSpec, out: &mut String) -> std::fmt::Result {
    let public: Vec<&Field> = method.fields.iter().filter(|f| !f.reserved).collect();
    let reserved: Vec<&str> = method
        .fields
        .iter()
        .filter(|f| f.reserved)
        .map(|f| f.spec_name.as_str())
        .collect();
    let name = &method.rust_name;
    let mut facts = Vec::new();
    if method.content {
        facts.push("carries content");
    }
    if method.synchronous {
        facts.push("expects a reply");
    }
    writeln!(
        out,
        "/// `{}.{}` (class {}, method {}){}.",
        method.class_name,
        method.name,
        method.class_id,
        method.id,
        if facts.is_empty() {
            String::new()
        } else {
            format!("; {}", facts.join(", "))
        }
    )?;
    if !reserved.is_empty() {
        writeln!(
            out,
            "///\n/// Reserved fields, skipped on decode and sent as zero or empty: {}.",
            reserved
                .iter()
                .map(|r| format!("`{r}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    // Derive Default when every spec default is the type's zero value; otherwise write it out.
    let mut defaults = Vec::new();
    for field in &public {
        defaults.push(default_expr(field).map_err(|_| std::fmt::Error)?);
    }
    let derivable = defaults.iter().all(|expr| {
        matches!(
            expr.as_str(),
            "Default::default()"
                | "0"
                | "false"
                | "ShortString::new()"
                | "Bytes::new()"
                | "FieldTable::new()"
        )
    });
    if derivable {
        writeln!(out, "#[derive(Debug, Clone, Default, PartialEq)]")?;
    } else {
        writeln!(out, "#[derive(Debug, Clone, PartialEq)]")?;
    }
    if public.is_empty() {
        writeln!(out, "pub struct {name};")?;
    } else {
        writeln!(out, "pub struct {name} {{")?;
        for field in &public {
            writeln!(out, "    /// `{}`.", field.spec_name)?;
            writeln!(
                out,
                "    pub {}: {},",
                field.rust_name,
                field.kind.rust_type()
            )?;
        }
        writeln!(out, "}}")?;
    }
    writeln!(out)?;

    if !derivable {
        writeln!(out, "/// The spec's default values.")?;
        writeln!(out, "impl Default for {name} {{")?;
        writeln!(out, "    fn default() -> Self {{")?;
        writeln!(out, "        {name} {{")?;
        for (field, expr) in public.iter().zip(&defaults) {
            writeln!(out, "            {}: {expr},", field.rust_name)?;
        }
        writeln!(out, "        }}")?;
        writeln!(out, "    }}")?;
        writeln!(out, "}}")?;
        writeln!(out)?;
    }

    writeln!(out, "impl {name} {{")?;
    writeln!(out, "    /// The class id on the wire.")?;
    writeln!(out, "    pub const CLASS_ID: u16 = {};", method.class_id)?;
    writeln!(out, "    /// The method id on the wire.")?;
    writeln!(out, "    pub const METHOD_ID: u16 = {};", method.id)?;
    writeln!(out)?;

    // Decoding.
    let groups = bit_groups(&method.fields);
    let reader = if method.fields.is_empty() { "_r" } else { "r" };
    writeln!(
        out,
        "    fn decode_fields({reader}: &mut Reader<'_>) -> Result<Self, FieldError> {{"
    )?;
    let mut i = 0;
    let mut group_index = 0;
    while i < method.fields.len() {
        let field = &method.fields[i];
        if field.kind == Kind::Bit {
            let (start, len) = groups[group_index];
            debug_assert_eq!(start, i);
            let any_public = method.fields[start..start + len]
                .iter()
                .any(|f| !f.reserved);
            if any_public {
                writeln!(out, "        let bits{group_index} = r.u8()?;")?;
                for (bit, f) in method.fields[start..start + len].iter().enumerate() {
                    if !f.reserved {
                        writeln!(
                            out,
                            "        let {} = bits{group_index} & {:#04x} != 0;",
                            f.rust_name,
                            1u8 << bit
                        )?;
                    }
                }
            } else {
                writeln!(out, "        r.skip(1)?;")?;
            }
            group_index += 1;
            i = start + len;
            continue;
        }
        if field.reserved {
            writeln!(out, "        r.{}?;", field.kind.skipper())?;
        } else {
            writeln!(
                out,
                "        let {} = r.{}?;",
                field.rust_name,
                field.kind.reader()
            )?;
        }
        i += 1;
    }
    if public.is_empty() {
        writeln!(out, "        Ok({name})")?;
    } else {
        let names: Vec<&str> = public.iter().map(|f| f.rust_name.as_str()).collect();
        writeln!(out, "        Ok({name} {{ {} }})", names.join(", "))?;
    }
    writeln!(out, "    }}")?;
    writeln!(out)?;

    // Encoding.
    let buf = if method.fields.is_empty() {
        "_buf"
    } else {
        "buf"
    };
    writeln!(out, "    fn encode_fields(&self, {buf}: &mut BytesMut) {{")?;
    let mut i = 0;
    let mut group_index = 0;
    while i < method.fields.len() {
        let field = &method.fields[i];
        if field.kind == Kind::Bit {
            let (start, len) = groups[group_index];
            let parts: Vec<String> = method.fields[start..start + len]
                .iter()
                .enumerate()
                .filter(|(_, f)| !f.reserved)
                .map(|(bit, f)| {
                    if bit == 0 {
                        format!("u8::from(self.{})", f.rust_name)
                    } else {
                        format!("(u8::from(self.{}) << {bit})", f.rust_name)
                    }
                })
                .collect();
            if parts.is_empty() {
                writeln!(out, "        buf.put_u8(0);")?;
            } else {
                writeln!(out, "        buf.put_u8({});", parts.join(" | "))?;
            }
            group_index += 1;
            i = start + len;
            continue;
        }
        if field.reserved {
            writeln!(out, "        {}", field.kind.zero_writer())?;
        } else {
            writeln!(
                out,
                "        {}",
                field.kind.writer(&format!("self.{}", field.rust_name))
            )?;
        }
        i += 1;
    }
    writeln!(out, "    }}")?;
    writeln!(out, "}}")?;
    writeln!(out)?;
    writeln!(out, "impl From<{name}> for Method {{")?;
    writeln!(out, "    fn from(method: {name}) -> Method {{")?;
    writeln!(out, "        Method::{name}(method)")?;
    writeln!(out, "    }}")?;
    writeln!(out, "}}")?;
    writeln!(out)
}

fn emit_method_enum(spec: &Spec, out: &mut String) -> std::fmt::Result {
    writeln!(
        out,
        "/// Every method of every class, as sent in a method frame."
    )?;
    writeln!(out, "#[derive(Debug, Clone, PartialEq)]")?;
    writeln!(out, "pub enum Method {{")?;
    for method in &spec.methods {
        writeln!(out, "    /// `{}.{}`.", method.class_name, method.name)?;
        writeln!(out, "    {0}({0}),", method.rust_name)?;
    }
    writeln!(out, "}}")?;
    writeln!(out)?;
    writeln!(out, "impl Method {{")?;

    let simple = |out: &mut String,
                  doc: &str,
                  signature: &str,
                  value: &dyn Fn(&MethodSpec) -> String|
     -> std::fmt::Result {
        writeln!(out, "    /// {doc}")?;
        writeln!(out, "    pub const fn {signature} {{")?;
        writeln!(out, "        match self {{")?;
        for method in &spec.methods {
            writeln!(
                out,
                "            Method::{}(_) => {},",
                method.rust_name,
                value(method)
            )?;
        }
        writeln!(out, "        }}")?;
        writeln!(out, "    }}")?;
        writeln!(out)
    };
    simple(
        out,
        "The class id on the wire.",
        "class_id(&self) -> u16",
        &|m| m.class_id.to_string(),
    )?;
    simple(
        out,
        "The method id on the wire.",
        "method_id(&self) -> u16",
        &|m| m.id.to_string(),
    )?;
    simple(
        out,
        "Whether a content header and body frames follow this method.",
        "has_content(&self) -> bool",
        &|m| m.content.to_string(),
    )?;
    simple(
        out,
        "Whether the spec marks the method as expecting a reply method.",
        "is_synchronous(&self) -> bool",
        &|m| m.synchronous.to_string(),
    )?;
    simple(
        out,
        "The spec's name, e.g. `basic.publish`.",
        "name(&self) -> &'static str",
        &|m| format!("{:?}", format!("{}.{}", m.class_name, m.name)),
    )?;

    writeln!(
        out,
        "    /// Whether every short string field holds UTF-8. RabbitMQ 3.10 closes the connection"
    )?;
    writeln!(
        out,
        "    /// with 501 `Malformed UTF-8 in shortstr` otherwise (except for `basic.publish`)."
    )?;
    writeln!(out, "    pub fn short_strings_are_utf8(&self) -> bool {{")?;
    writeln!(out, "        match self {{")?;
    for method in &spec.methods {
        let checks: Vec<String> = method
            .fields
            .iter()
            .filter(|f| !f.reserved && f.kind == Kind::ShortStr)
            .map(|f| format!("std::str::from_utf8(m.{}.as_bytes()).is_ok()", f.rust_name))
            .collect();
        if checks.is_empty() {
            writeln!(out, "            Method::{}(_) => true,", method.rust_name)?;
        } else {
            writeln!(
                out,
                "            Method::{}(m) => {},",
                method.rust_name,
                checks.join(" && ")
            )?;
        }
    }
    writeln!(out, "        }}")?;
    writeln!(out, "    }}")?;
    writeln!(out)?;
    writeln!(
        out,
        "    /// Decodes a method frame's payload: class id, method id, then the fields. Every byte"
    )?;
    writeln!(
        out,
        "    /// must be consumed. String fields are zero-copy slices of `payload`."
    )?;
    writeln!(
        out,
        "    pub fn decode(payload: &Bytes) -> Result<Method, DecodeError> {{"
    )?;
    writeln!(out, "        let mut r = Reader::new(payload);")?;
    writeln!(
        out,
        "        let (Ok(class_id), Ok(method_id)) = (r.u16(), r.u16()) else {{"
    )?;
    writeln!(
        out,
        "            return Err(DecodeError::FrameTooShort {{ frame_type: FRAME_METHOD, size: payload.len() }});"
    )?;
    writeln!(out, "        }};")?;
    writeln!(out, "        let decoded = match (class_id, method_id) {{")?;
    for method in &spec.methods {
        writeln!(
            out,
            "            ({}, {}) => {}::decode_fields(&mut r).map(Method::{}),",
            method.class_id, method.id, method.rust_name, method.rust_name
        )?;
    }
    writeln!(
        out,
        "            _ => return Err(DecodeError::UnknownMethod {{ class_id, method_id }}),"
    )?;
    writeln!(out, "        }};")?;
    writeln!(
        out,
        "        let result = decoded.and_then(|method| r.finish().map(|()| method));"
    )?;
    writeln!(
        out,
        "        result.map_err(|source| DecodeError::MalformedMethod {{ class_id, method_id, source }})"
    )?;
    writeln!(out, "    }}")?;
    writeln!(out)?;
    writeln!(
        out,
        "    /// Encodes the method frame's payload: class id, method id, then the fields."
    )?;
    writeln!(out, "    pub fn encode(&self, buf: &mut BytesMut) {{")?;
    writeln!(out, "        buf.put_u16(self.class_id());")?;
    writeln!(out, "        buf.put_u16(self.method_id());")?;
    writeln!(out, "        match self {{")?;
    for method in &spec.methods {
        writeln!(
            out,
            "            Method::{}(method) => method.encode_fields(buf),",
            method.rust_name
        )?;
    }
    writeln!(out, "        }}")?;
    writeln!(out, "    }}")?;
    writeln!(out, "}}")?;
    writeln!(out)
}

fn emit_properties(spec: &Spec, out: &mut String) -> std::fmt::Result {
    writeln!(
        out,
        "/// The 14 properties of a `basic` content header, in spec order. `None` = flag not set."
    )?;
    writeln!(out, "#[derive(Debug, Clone, Default, PartialEq)]")?;
    writeln!(out, "pub struct BasicProperties {{")?;
    for field in &spec.properties {
        writeln!(out, "    /// `{}`.", field.spec_name)?;
        writeln!(
            out,
            "    pub {}: Option<{}>,",
            field.rust_name,
            field.kind.rust_type()
        )?;
    }
    writeln!(out, "}}")?;
    writeln!(out)?;
    writeln!(out, "impl BasicProperties {{")?;
    for (i, field) in spec.properties.iter().enumerate() {
        writeln!(out, "    /// Property flag of `{}`.", field.spec_name)?;
        writeln!(
            out,
            "    pub const FLAG_{}: u16 = {:#06x};",
            screaming(&field.spec_name),
            1u16 << (15 - i)
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "    /// The property-flags word for the properties that are set."
    )?;
    writeln!(out, "    pub fn flags(&self) -> u16 {{")?;
    writeln!(out, "        let mut flags = 0;")?;
    for field in &spec.properties {
        writeln!(
            out,
            "        if self.{}.is_some() {{ flags |= Self::FLAG_{}; }}",
            field.rust_name,
            screaming(&field.spec_name)
        )?;
    }
    writeln!(out, "        flags")?;
    writeln!(out, "    }}")?;
    writeln!(out)?;
    writeln!(
        out,
        "    /// Decodes property flags and property list, as they follow `body-size` in a content"
    )?;
    writeln!(
        out,
        "    /// header frame. Every byte must be consumed; strings are zero-copy slices of `raw`."
    )?;
    writeln!(
        out,
        "    pub fn decode(raw: &Bytes) -> Result<BasicProperties, FieldError> {{"
    )?;
    writeln!(out, "        let mut r = Reader::new(raw);")?;
    writeln!(out, "        let flags = r.u16()?;")?;
    writeln!(out, "        if flags & 0x0001 != 0 {{")?;
    writeln!(
        out,
        "            // Basic has 14 properties: a continuation word can only carry unknown ones."
    )?;
    writeln!(
        out,
        "            return Err(FieldError::PropertyFlagsContinued);"
    )?;
    writeln!(out, "        }}")?;
    // Locals, then one struct literal: lets the compiler build the result in place instead of
    // writing a default value and then overwriting each field.
    for field in &spec.properties {
        writeln!(
            out,
            "        let {} = if flags & Self::FLAG_{} != 0 {{ Some(r.{}?) }} else {{ None }};",
            field.rust_name,
            screaming(&field.spec_name),
            field.kind.reader()
        )?;
    }
    writeln!(out, "        r.finish()?;")?;
    let names: Vec<&str> = spec
        .properties
        .iter()
        .map(|f| f.rust_name.as_str())
        .collect();
    writeln!(
        out,
        "        Ok(BasicProperties {{ {} }})",
        names.join(", ")
    )?;
    writeln!(out, "    }}")?;
    writeln!(out)?;
    writeln!(
        out,
        "    /// Encodes property flags and property list (what `ContentHeader::raw_properties` holds)."
    )?;
    writeln!(out, "    pub fn encode(&self, buf: &mut BytesMut) {{")?;
    writeln!(out, "        buf.put_u16(self.flags());")?;
    for field in &spec.properties {
        let writer = match field.kind {
            Kind::ShortStr => "wire::put_shortstr(buf, value);".to_owned(),
            Kind::Table => "value.encode(buf);".to_owned(),
            kind => kind.writer("*value"),
        };
        writeln!(
            out,
            "        if let Some(value) = &self.{} {{ {writer} }}",
            field.rust_name
        )?;
    }
    writeln!(out, "    }}")?;
    writeln!(out, "}}")
}
