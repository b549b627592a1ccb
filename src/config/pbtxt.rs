//! A protobuf text-format reader with the leniency of protobuf's C++ `TextFormat::Parser`, which
//! is what Triton uses for `config.pbtxt` (spec section (j)): message lists without a colon
//! (`input [ {..}, {..} ]`), repeated list blocks, `,`/`;` separators, `#` comments, `<..>`
//! delimiters, enum names or numbers, and proto3's "a default value is not a set value" rule for
//! duplicate singular fields. It fills a `prost_reflect::DynamicMessage`, so it works for any
//! message of the schema; errors carry line and column.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};

/// A text-format syntax or schema error at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong, in protobuf's wording.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(String),
    Float(String),
    Str(Vec<u8>),
    Punct(char),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) | Tok::Int(s) | Tok::Float(s) => s.clone(),
            Tok::Str(b) => format!("\"{}\"", String::from_utf8_lossy(b)),
            Tok::Punct(c) => c.to_string(),
            Tok::Eof => String::new(),
        }
    }
}

struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    line: usize,
    col: usize,
    /// The current token and where it starts.
    tok: Tok,
    tok_line: usize,
    tok_col: usize,
}

/// Hard limit on message nesting, so that hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 100;

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Result<Self, ParseError> {
        let mut lx = Lexer {
            src: src.as_bytes(),
            pos: 0,
            line: 1,
            col: 1,
            tok: Tok::Eof,
            tok_line: 1,
            tok_col: 1,
        };
        lx.advance()?;
        Ok(lx)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            line: self.tok_line,
            column: self.tok_col,
            message: message.into(),
        })
    }

    fn peek_byte(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek_byte()?;
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(b)
    }

    fn skip_space(&mut self) {
        while let Some(b) = self.peek_byte() {
            if b == b'#' {
                while let Some(b) = self.peek_byte() {
                    if b == b'\n' {
                        break;
                    }
                    self.bump();
                }
            } else if b.is_ascii_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    /// Reads the next token into `self.tok`.
    fn advance(&mut self) -> Result<(), ParseError> {
        self.skip_space();
        self.tok_line = self.line;
        self.tok_col = self.col;
        let Some(b) = self.peek_byte() else {
            self.tok = Tok::Eof;
            return Ok(());
        };
        self.tok = if b.is_ascii_alphabetic() || b == b'_' {
            let start = self.pos;
            while matches!(self.peek_byte(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
                self.bump();
            }
            Tok::Ident(String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
        } else if b.is_ascii_digit()
            || (b == b'.' && self.src.get(self.pos + 1).is_some_and(u8::is_ascii_digit))
        {
            self.number()
        } else if b == b'"' || b == b'\'' {
            let mut bytes = self.string_literal()?;
            // Adjacent string literals concatenate.
            loop {
                self.skip_space();
                match self.peek_byte() {
                    Some(b'"' | b'\'') => bytes.extend(self.string_literal()?),
                    _ => break,
                }
            }
            Tok::Str(bytes)
        } else {
            self.bump();
            let c = b as char;
            if "{}[]<>:,;-".contains(c) {
                Tok::Punct(c)
            } else {
                let ch = std::str::from_utf8(&self.src[self.pos - 1..])
                    .ok()
                    .and_then(|s| s.chars().next())
                    .unwrap_or(c);
                return self.err(format!("Invalid character '{ch}' in configuration text."));
            }
        };
        Ok(())
    }

    fn number(&mut self) -> Tok {
        let start = self.pos;
        let mut is_float = false;
        if self.peek_byte() == Some(b'0') && matches!(self.src.get(self.pos + 1), Some(b'x' | b'X'))
        {
            self.bump();
            self.bump();
            while matches!(self.peek_byte(), Some(c) if c.is_ascii_hexdigit()) {
                self.bump();
            }
        } else {
            while let Some(c) = self.peek_byte() {
                if c.is_ascii_digit() {
                    self.bump();
                } else if c == b'.' {
                    is_float = true;
                    self.bump();
                } else if c == b'e' || c == b'E' {
                    is_float = true;
                    self.bump();
                    if matches!(self.peek_byte(), Some(b'+' | b'-')) {
                        self.bump();
                    }
                } else {
                    break;
                }
            }
            if matches!(self.peek_byte(), Some(b'f' | b'F')) {
                is_float = true;
                self.bump();
            }
        }
        // An identifier glued to a number ("1abc") is one bad token, as in protobuf.
        while matches!(self.peek_byte(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
            self.bump();
        }
        let text = String::from_utf8_lossy(&self.src[start..self.pos]).into_owned();
        if is_float {
            Tok::Float(text)
        } else {
            Tok::Int(text)
        }
    }

    fn string_literal(&mut self) -> Result<Vec<u8>, ParseError> {
        let quote = self.bump().unwrap_or(b'"');
        let mut out = Vec::new();
        loop {
            let Some(b) = self.bump() else {
                return self.err("Unexpected end of string.");
            };
            match b {
                b'\n' => return self.err("String literals cannot cross line boundaries."),
                b if b == quote => return Ok(out),
                b'\\' => {
                    let Some(e) = self.bump() else {
                        return self.err("Unexpected end of string.");
                    };
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'a' => out.push(7),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'v' => out.push(11),
                        b'\\' | b'\'' | b'"' | b'?' => out.push(e),
                        b'0'..=b'7' => {
                            let mut v = u32::from(e - b'0');
                            for _ in 0..2 {
                                match self.peek_byte() {
                                    Some(c @ b'0'..=b'7') => {
                                        self.bump();
                                        v = v * 8 + u32::from(c - b'0');
                                    }
                                    _ => break,
                                }
                            }
                            out.push((v & 0xff) as u8);
                        }
                        b'x' | b'X' => {
                            let mut v = 0u32;
                            let mut n = 0;
                            while n < 2 {
                                match self.peek_byte() {
                                    Some(c) if c.is_ascii_hexdigit() => {
                                        self.bump();
                                        v = v * 16 + (c as char).to_digit(16).unwrap_or(0);
                                        n += 1;
                                    }
                                    _ => break,
                                }
                            }
                            if n == 0 {
                                return self.err("Expected hex digits for escape sequence.");
                            }
                            out.push(v as u8);
                        }
                        _ => return self.err("Invalid escape sequence in string literal."),
                    }
                }
                b => out.push(b),
            }
        }
    }

    fn is_punct(&self, c: char) -> bool {
        self.tok == Tok::Punct(c)
    }

    fn try_consume(&mut self, c: char) -> Result<bool, ParseError> {
        if self.is_punct(c) {
            self.advance()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn expect(&mut self, c: char) -> Result<(), ParseError> {
        if self.try_consume(c)? {
            Ok(())
        } else {
            self.err(format!(
                "Expected \"{c}\", found \"{}\".",
                self.tok.describe()
            ))
        }
    }
}

/// Parses `text` as a message of type `desc`.
pub fn parse(text: &str, desc: &MessageDescriptor) -> Result<DynamicMessage, ParseError> {
    let mut lx = Lexer::new(text)?;
    let mut msg = DynamicMessage::new(desc.clone());
    parse_fields(&mut lx, &mut msg, None, 0)?;
    Ok(msg)
}

/// Parses fields until `close` (or end of input when `close` is None).
fn parse_fields(
    lx: &mut Lexer,
    msg: &mut DynamicMessage,
    close: Option<char>,
    depth: usize,
) -> Result<(), ParseError> {
    if depth > MAX_DEPTH {
        return lx.err(format!("Message is too deep, the parser exceeded the configured recursion limit of {MAX_DEPTH}."));
    }
    loop {
        match (&lx.tok, close) {
            (Tok::Eof, None) => return Ok(()),
            (Tok::Eof, Some(c)) => return lx.err(format!("Expected \"{c}\".")),
            (Tok::Punct(p), Some(c)) if *p == c => {
                lx.advance()?;
                return Ok(());
            }
            _ => {}
        }
        parse_field(lx, msg, depth)?;
        // Optional separator after a field.
        if !lx.try_consume(',')? {
            lx.try_consume(';')?;
        }
    }
}

fn parse_field(lx: &mut Lexer, msg: &mut DynamicMessage, depth: usize) -> Result<(), ParseError> {
    let desc = msg.descriptor();
    let name = match &lx.tok {
        Tok::Ident(s) => s.clone(),
        other => {
            return lx.err(format!("Expected identifier, got: {}", other.describe()));
        }
    };
    let Some(field) = desc.get_field_by_name(&name) else {
        return lx.err(format!(
            "Message type \"{}\" has no field named \"{name}\".",
            desc.full_name()
        ));
    };
    lx.advance()?;
    let repeated = field.is_list() || field.is_map();
    match field.kind() {
        Kind::Message(sub) => {
            lx.try_consume(':')?;
            if lx.is_punct('[') {
                if !repeated {
                    return lx.err(format!(
                        "Non-repeated field \"{name}\" cannot be specified as a list."
                    ));
                }
                lx.advance()?;
                if !lx.try_consume(']')? {
                    loop {
                        let v = parse_message_value(lx, &sub, depth)?;
                        store(lx, msg, &field, Value::Message(v))?;
                        if lx.try_consume(',')? {
                            if lx.try_consume(']')? {
                                break;
                            }
                            continue;
                        }
                        lx.expect(']')?;
                        break;
                    }
                }
            } else {
                let v = parse_message_value(lx, &sub, depth)?;
                store(lx, msg, &field, Value::Message(v))?;
            }
        }
        kind => {
            if !lx.is_punct(':') {
                return lx.err(format!("Expected \":\", found \"{}\".", lx.tok.describe()));
            }
            lx.advance()?;
            if lx.is_punct('[') {
                if !repeated {
                    return lx.err(format!(
                        "Non-repeated field \"{name}\" cannot be specified as a list."
                    ));
                }
                lx.advance()?;
                if !lx.try_consume(']')? {
                    loop {
                        let v = parse_scalar(lx, &kind, &field)?;
                        store(lx, msg, &field, v)?;
                        if lx.try_consume(',')? {
                            if lx.try_consume(']')? {
                                break;
                            }
                            continue;
                        }
                        lx.expect(']')?;
                        break;
                    }
                }
            } else {
                let v = parse_scalar(lx, &kind, &field)?;
                store(lx, msg, &field, v)?;
            }
        }
    }
    Ok(())
}

fn parse_message_value(
    lx: &mut Lexer,
    desc: &MessageDescriptor,
    depth: usize,
) -> Result<DynamicMessage, ParseError> {
    let close = if lx.try_consume('{')? {
        '}'
    } else if lx.try_consume('<')? {
        '>'
    } else {
        return lx.err(format!("Expected \"{{\", found \"{}\".", lx.tok.describe()));
    };
    let mut m = DynamicMessage::new(desc.clone());
    parse_fields(lx, &mut m, Some(close), depth + 1)?;
    Ok(m)
}

/// Stores one parsed value: appended for repeated fields, inserted for maps (last key wins),
/// set for singular fields with protobuf's duplicate and oneof checks.
fn store(
    lx: &Lexer,
    msg: &mut DynamicMessage,
    field: &FieldDescriptor,
    value: Value,
) -> Result<(), ParseError> {
    if field.is_map() {
        let Value::Message(entry) = value else {
            return lx.err("map entry must be a message");
        };
        let Kind::Message(entry_desc) = field.kind() else {
            return lx.err("map entry must be a message");
        };
        let key_field = entry_desc.map_entry_key_field();
        let value_field = entry_desc.map_entry_value_field();
        let key = match entry.get_field(&key_field).into_owned() {
            Value::Bool(b) => MapKey::Bool(b),
            Value::I32(v) => MapKey::I32(v),
            Value::I64(v) => MapKey::I64(v),
            Value::U32(v) => MapKey::U32(v),
            Value::U64(v) => MapKey::U64(v),
            Value::String(s) => MapKey::String(s),
            _ => return lx.err("unsupported map key type"),
        };
        let v = entry.get_field(&value_field).into_owned();
        if let Value::Map(map) = msg.get_field_mut(field) {
            map.insert(key, v);
        }
        return Ok(());
    }
    if field.is_list() {
        if let Value::List(list) = msg.get_field_mut(field) {
            list.push(value);
        }
        return Ok(());
    }
    if msg.has_field(field) {
        return lx.err(format!(
            "Non-repeated field \"{}\" is specified multiple times.",
            field.name()
        ));
    }
    if let Some(oneof) = field.containing_oneof() {
        for other in oneof.fields() {
            if other.number() != field.number() && msg.has_field(&other) {
                return lx.err(format!(
                    "Field \"{}\" is specified along with field \"{}\", another member of oneof \"{}\".",
                    field.name(),
                    other.name(),
                    oneof.name()
                ));
            }
        }
    }
    msg.set_field(field, value);
    Ok(())
}

fn parse_int_text(text: &str) -> Option<u128> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u128::from_str_radix(hex, 16).ok()
    } else if text.len() > 1 && text.starts_with('0') {
        u128::from_str_radix(&text[1..], 8).ok()
    } else {
        text.parse::<u128>().ok()
    }
}

// Long: one match over protobuf's scalar kinds, each with text format's own spellings
// (hex/octal ints, `inf`/`nan`, enum names or numbers); split, the cases would only be harder
// to compare with protobuf's tokenizer.
fn parse_scalar(lx: &mut Lexer, kind: &Kind, field: &FieldDescriptor) -> Result<Value, ParseError> {
    let negative = lx.try_consume('-')?;
    let tok = lx.tok.clone();
    let name = field.name();
    let value = match kind {
        Kind::String | Kind::Bytes => {
            let Tok::Str(bytes) = tok else {
                return lx.err(format!("Expected string, got: {}", tok.describe()));
            };
            if negative {
                return lx.err("Expected string, got: -");
            }
            if matches!(kind, Kind::Bytes) {
                Value::Bytes(bytes.into())
            } else {
                match String::from_utf8(bytes) {
                    Ok(s) => Value::String(s),
                    Err(_) => {
                        return lx.err(format!(
                            "String field \"{name}\" contains invalid UTF-8 data."
                        ))
                    }
                }
            }
        }
        Kind::Bool => {
            let b = match &tok {
                Tok::Ident(s) if matches!(s.as_str(), "true" | "True" | "t") => true,
                Tok::Ident(s) if matches!(s.as_str(), "false" | "False" | "f") => false,
                Tok::Int(s) if s == "1" => true,
                Tok::Int(s) if s == "0" => false,
                _ => {
                    return lx.err(format!(
                        "Invalid value for boolean field \"{name}\". Value: \"{}\".",
                        tok.describe()
                    ))
                }
            };
            if negative {
                return lx.err(format!(
                    "Invalid value for boolean field \"{name}\". Value: \"-\"."
                ));
            }
            Value::Bool(b)
        }
        Kind::Enum(e) => match &tok {
            Tok::Ident(s) if !negative => match e.get_value_by_name(s) {
                Some(v) => Value::EnumNumber(v.number()),
                None => {
                    return lx.err(format!(
                        "Unknown enumeration value of \"{s}\" for field \"{name}\"."
                    ))
                }
            },
            Tok::Int(s) => {
                let Some(v) = parse_int_text(s).and_then(|v| i64::try_from(v).ok()) else {
                    return lx.err(format!("Expected integer, got: {s}"));
                };
                let v = if negative { -v } else { v };
                match i32::try_from(v) {
                    Ok(v) => Value::EnumNumber(v),
                    Err(_) => {
                        return lx.err(format!(
                            "Unknown enumeration value of \"{v}\" for field \"{name}\"."
                        ))
                    }
                }
            }
            _ => {
                return lx.err(format!(
                    "Expected integer or identifier, got: {}",
                    tok.describe()
                ))
            }
        },
        Kind::Float | Kind::Double => {
            let v: f64 = match &tok {
                Tok::Int(s) => match parse_int_text(s) {
                    Some(v) => v as f64,
                    None => return lx.err(format!("Expected double, got: {s}")),
                },
                Tok::Float(s) => match s.trim_end_matches(['f', 'F']).parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => return lx.err(format!("Expected double, got: {s}")),
                },
                Tok::Ident(s) if matches!(s.to_ascii_lowercase().as_str(), "inf" | "infinity") => {
                    f64::INFINITY
                }
                Tok::Ident(s) if s.eq_ignore_ascii_case("nan") => f64::NAN,
                _ => return lx.err(format!("Expected double, got: {}", tok.describe())),
            };
            let v = if negative { -v } else { v };
            if matches!(kind, Kind::Float) {
                Value::F32(v as f32)
            } else {
                Value::F64(v)
            }
        }
        _ => {
            let Tok::Int(s) = &tok else {
                return lx.err(format!("Expected integer, got: {}", tok.describe()));
            };
            let Some(mag) = parse_int_text(s) else {
                return lx.err(format!("Expected integer, got: {s}"));
            };
            let out_of_range = || {
                format!(
                    "Integer out of range ({}{s})",
                    if negative { "-" } else { "" }
                )
            };
            let signed: Option<i128> = i128::try_from(mag)
                .ok()
                .map(|m| if negative { -m } else { m });
            match kind {
                Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                    match signed.and_then(|v| i32::try_from(v).ok()) {
                        Some(v) => Value::I32(v),
                        None => return lx.err(out_of_range()),
                    }
                }
                Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                    match signed.and_then(|v| i64::try_from(v).ok()) {
                        Some(v) => Value::I64(v),
                        None => return lx.err(out_of_range()),
                    }
                }
                Kind::Uint32 | Kind::Fixed32 => match (negative, u32::try_from(mag)) {
                    (false, Ok(v)) => Value::U32(v),
                    _ => return lx.err(out_of_range()),
                },
                _ => match (negative, u64::try_from(mag)) {
                    (false, Ok(v)) => Value::U64(v),
                    _ => return lx.err(out_of_range()),
                },
            }
        }
    };
    lx.advance()?;
    Ok(value)
}
